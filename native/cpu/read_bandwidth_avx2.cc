// The streaming-read kernel of the bandwidth probe: loads only (XOR-folded into 8 accumulators and
// returned, so nothing is optimised away). Like the expert kernels it keeps several streams in
// flight per thread (kStreams parts of the slice read side by side) and prefetches ~16 KB ahead on
// each, so the probe is not beaten by code that reads more cleverly than it does. AVX2 loads already
// exceed a core's share of DRAM bandwidth on every target machine.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace hetmoe {
namespace cpu {

uint64_t readStreamAvx2(const uint8_t* p, size_t bytes) {
  constexpr int kStreams = 4;
  const size_t part = bytes / kStreams / 256 * 256;
  __m256i a[8];
  for (auto& v : a) v = _mm256_setzero_si256();
  for (size_t i = 0; i < part; i += 128) {
    for (int s = 0; s < kStreams; ++s) {
      const uint8_t* q = p + s * part + i;
      _mm_prefetch(reinterpret_cast<const char*>(q + 16384), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(q + 16384 + 64), _MM_HINT_T0);
      a[2 * s] = _mm256_xor_si256(a[2 * s], _mm256_load_si256(reinterpret_cast<const __m256i*>(q)));
      a[2 * s + 1] = _mm256_xor_si256(a[2 * s + 1], _mm256_load_si256(reinterpret_cast<const __m256i*>(q + 32)));
      a[2 * s] = _mm256_xor_si256(a[2 * s], _mm256_load_si256(reinterpret_cast<const __m256i*>(q + 64)));
      a[2 * s + 1] = _mm256_xor_si256(a[2 * s + 1], _mm256_load_si256(reinterpret_cast<const __m256i*>(q + 96)));
    }
  }
  for (int u = 1; u < 8; ++u) a[0] = _mm256_xor_si256(a[0], a[u]);
  alignas(32) uint64_t out[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(out), a[0]);
  return out[0] ^ out[1] ^ out[2] ^ out[3];
}

}  // namespace cpu
}  // namespace hetmoe
