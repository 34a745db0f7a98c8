// The AVX512_BF16 level's traits: the AVX-512 kernels, except that dense bf16 weights go through
// vdpbf16ps (32 bf16 products per instruction, pairs summed in fp32) with the activations rounded to
// bf16 once per call. That halves the register traffic per weight byte, not the FLOP rate (DESIGN.md:
// not faster per FLOP than fp32 FMA on these cores). fp32 and sparse weights use the AVX-512 paths.
// Included only by files compiled with -mavx512bf16 (kernels_avx512bf16.cc, kernels_amx.cc).
#pragma once
#include "cpu/simd_avx512.h"
#include "cpu/kernels_impl.h"

namespace hetmoe {
namespace cpu {
namespace {

// Rounds n floats to bf16 (nearest even), as vdpbf16ps and the AMX tiles see them.
inline void toBf16Row(const float* x, int64_t n, uint16_t* out) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i)));
  for (; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, x + i, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) out[i] = static_cast<uint16_t>((u >> 16) | 0x40);
    else out[i] = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}

template <int RB, int NT>
inline void dpTile(const uint16_t* w, int64_t ldw, int64_t K, const uint16_t* const* xb, float* out) {
  __m512 acc[RB][NT];
#pragma GCC unroll 16
  for (int i = 0; i < RB; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t ahead = prefetchRows<RB>(ldw * 2) * ldw;
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512i xv[NT];
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) xv[j] = _mm512_loadu_si512(xb[j] + k);
#pragma GCC unroll 16
    for (int i = 0; i < RB; ++i) {
      const uint16_t* p = w + i * ldw + k;
      _mm_prefetch(reinterpret_cast<const char*>(p + ahead), _MM_HINT_T0);
      const __m512i wv = _mm512_loadu_si512(p);
#pragma GCC unroll 8
      for (int j = 0; j < NT; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], (__m512bh)wv, (__m512bh)xv[j]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < RB; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) out[i * NT + j] = _mm512_reduce_add_ps(acc[i][j]);
  for (; k < K; ++k)
    for (int i = 0; i < RB; ++i)
      for (int j = 0; j < NT; ++j) out[i * NT + j] += bf16f(w[i * ldw + k]) * bf16f(xb[j][k]);
}

template <int RB>
inline void dpRowsAllTokens(const MatArgs& a, const uint16_t* w, int64_t K, int32_t r, const uint16_t* const* xb) {
  float res[RB * 4];
  int32_t t = 0;
  for (; t + 4 <= a.n; t += 4) {
    dpTile<RB, 4>(w, K, K, xb + t, res);
    emit(a, r, RB, t, 4, res);
  }
  switch (a.n - t) {
    case 1: dpTile<RB, 1>(w, K, K, xb + t, res); emit(a, r, RB, t, 1, res); break;
    case 2: dpTile<RB, 2>(w, K, K, xb + t, res); emit(a, r, RB, t, 2, res); break;
    case 3: dpTile<RB, 3>(w, K, K, xb + t, res); emit(a, r, RB, t, 3, res); break;
    default: break;
  }
}

struct VAvx512Bf16 : VAvx512 {
  static constexpr bool kDpBf16 = true;
  static void matmulDenseBf16(const MatArgs& a, const float* const* xr) {
    const int64_t K = a.w->cols;
    const int64_t ldb = (K + 31) / 32 * 32;
    uint16_t* xbuf = static_cast<uint16_t*>(threadScratch(2, sizeof(uint16_t) * ldb * a.n));
    const uint16_t** xb = static_cast<const uint16_t**>(threadScratch(3, sizeof(uint16_t*) * a.n));
    for (int32_t t = 0; t < a.n; ++t) {
      toBf16Row(xr[t], K, xbuf + t * ldb);
      xb[t] = xbuf + t * ldb;
    }
    const uint16_t* w = static_cast<const uint16_t*>(a.w->values);
    int32_t r = a.r0;
    if (a.n == 1) {
      float res[8];
      for (; r + 8 <= a.r1; r += 8) {
        dpTile<8, 1>(w + r * K, K, K, xb, res);
        emit(a, r, 8, 0, 1, res);
      }
    } else {
      for (; r + 4 <= a.r1; r += 4) dpRowsAllTokens<4>(a, w + r * K, K, r, xb);
    }
    for (; r < a.r1; ++r) dpRowsAllTokens<1>(a, w + r * K, K, r, xb);
  }
};

}  // namespace
}  // namespace cpu
}  // namespace hetmoe
