// The streaming-read kernel of the bandwidth probe: 8 independent 256-bit accumulators, loads only
// (the sum is returned so nothing is optimised away). AVX2 loads already exceed a core's share of
// DRAM bandwidth on every target machine, so no AVX-512 variant is needed.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace hetmoe {
namespace cpu {

uint64_t readStreamAvx2(const uint8_t* p, size_t bytes) {
  __m256i a[8];
  for (auto& v : a) v = _mm256_setzero_si256();
  size_t i = 0;
  for (; i + 256 <= bytes; i += 256) {
    // The same ~16 KB software prefetch distance as the kernels (kernels_impl.h), so the probe is
    // not beaten by code that reads more cleverly than it does.
    for (int l = 0; l < 4; ++l) _mm_prefetch(reinterpret_cast<const char*>(p + i + 16384 + 64 * l), _MM_HINT_T0);
    for (int u = 0; u < 8; ++u)
      a[u] = _mm256_xor_si256(a[u], _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 32 * u)));
  }
  for (int u = 1; u < 8; ++u) a[0] = _mm256_xor_si256(a[0], a[u]);
  alignas(32) uint64_t out[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(out), a[0]);
  return out[0] ^ out[1] ^ out[2] ^ out[3];
}

}  // namespace cpu
}  // namespace hetmoe
