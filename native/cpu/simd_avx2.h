// Vector traits for the AVX2+FMA(+F16C) level (8 fp32 lanes, 16 registers). Included only by files
// compiled with -mavx2 -mfma; see kernels_impl.h for what each operation is used for.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace hetmoe {
namespace cpu {
namespace {

struct VAvx2 {
  static constexpr int W = 8;
  static constexpr int NTMAX = 2;    // dense: 4 rows x 2 tokens = 8 accumulators (16 ymm registers)
  static constexpr int NTMAX24 = 2;  // 2:4: 4 x 2
  static constexpr int RBP75 = 4;    // 75%: 4 pairs x 2 rows = 8 accumulators
  static constexpr bool kDpBf16 = false;
  using R = __m256;
  using Idx = __m256i;
  static R zero() { return _mm256_setzero_ps(); }
  static R set1(float v) { return _mm256_set1_ps(v); }
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, R v) { _mm256_storeu_ps(p, v); }
  static R loadW(const float* p) { return _mm256_loadu_ps(p); }
  static R loadW(const uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
  }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R div(R a, R b) { return _mm256_div_ps(a, b); }
  static R min(R a, R b) { return _mm256_min_ps(a, b); }
  static R max(R a, R b) { return _mm256_max_ps(a, b); }
  static R round(R a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // p * 2^n for integral n in [-126, 127] (n from round()).
  static R scale2(R p, R n) {
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23)));
  }
  static float hsum(R v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static R allOnes(bool on) { return _mm256_castsi256_ps(_mm256_set1_epi32(on ? -1 : 0)); }
  static R andMask(R w, R m) { return _mm256_and_ps(w, m); }
  static R andNotMask(R w, R m) { return _mm256_andnot_ps(m, w); }
  // 8 values = 4 groups = half a metadata word; lane j takes column 4*(j/2) + ((word >> 2j) & 3).
  static Idx idx24(const uint32_t* meta, int64_t jv) {
    const uint32_t word = meta[jv >> 4] >> ((jv & 8) ? 16 : 0);
    const __m256i sh = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    const __m256i base = _mm256_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12);
    return _mm256_add_epi32(_mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), sh), _mm256_set1_epi32(3)), base);
  }
  // Lanes 0-3 read columns 0-7 (xlo), lanes 4-7 columns 8-15 (xhi; vpermps uses idx & 7).
  static R perm24(R xlo, R xhi, Idx idx) {
    return _mm256_blend_ps(_mm256_permutevar8x32_ps(xlo, idx), _mm256_permutevar8x32_ps(xhi, idx), 0xF0);
  }
};

}  // namespace
}  // namespace cpu
}  // namespace hetmoe
