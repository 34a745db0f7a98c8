// Vector traits for the AVX-512 (F/BW/VL/DQ) level (16 fp32 lanes, 32 registers). Included only by
// files compiled with AVX-512 flags; see kernels_impl.h for what each operation is used for.
#pragma once
// GCC 12 warns about its own _mm512_undefined_* inside the intrinsics headers.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

namespace hetmoe {
namespace cpu {
namespace {

struct VAvx512 {
  static constexpr int W = 16;
  static constexpr int NTMAX = 4;    // dense: 4 rows x 4 tokens = 16 accumulators
  static constexpr int NTMAX24 = 4;  // 2:4: 16 accumulators + 8 x vectors
  static constexpr int RBP75 = 4;
  static constexpr bool kDpBf16 = false;
  using R = __m512;
  using Idx = __m512i;
  static R zero() { return _mm512_setzero_ps(); }
  static R set1(float v) { return _mm512_set1_ps(v); }
  static R load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, R v) { _mm512_storeu_ps(p, v); }
  static R loadW(const float* p) { return _mm512_loadu_ps(p); }
  static R loadW(const uint16_t* p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
  }
  static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R div(R a, R b) { return _mm512_div_ps(a, b); }
  static R min(R a, R b) { return _mm512_min_ps(a, b); }
  static R max(R a, R b) { return _mm512_max_ps(a, b); }
  static R round(R a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static R scale2(R p, R n) { return _mm512_scalef_ps(p, n); }
  static float hsum(R v) { return _mm512_reduce_add_ps(v); }
  static R allOnes(bool on) { return _mm512_castsi512_ps(_mm512_set1_epi32(on ? -1 : 0)); }
  static R andMask(R w, R m) { return _mm512_and_ps(w, m); }
  static R andNotMask(R w, R m) { return _mm512_andnot_ps(m, w); }
  // 16 values = 8 groups = one metadata word; lane j takes column 4*(j/2) + ((word >> 2j) & 3) of 32.
  static Idx idx24(const uint32_t* meta, int64_t jv) {
    const __m512i sh = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i base = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
    const __m512i w = _mm512_set1_epi32(static_cast<int>(meta[jv >> 4]));
    // (shifted & 3) | base in one vpternlogd (0xEA = (A & B) | C): base only uses bits 2-4.
    return _mm512_ternarylogic_epi32(_mm512_srlv_epi32(w, sh), _mm512_set1_epi32(3), base, 0xEA);
  }
  static R perm24(R xlo, R xhi, Idx idx) { return _mm512_permutex2var_ps(xlo, idx, xhi); }
};

}  // namespace
}  // namespace cpu
}  // namespace hetmoe
