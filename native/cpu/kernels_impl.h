// The SIMD kernels, written once over a vector-traits class V and instantiated by kernels_avx2.cc,
// kernels_avx512.cc and kernels_avx512bf16.cc (each compiled with its ISA's flags).
//
// Everything here has internal linkage (anonymous namespace): the same inline function compiled
// with -mavx512f in one file and without it in another must never be merged by the linker, or a
// scalar caller could end up in AVX-512 code. For the same reason these files use no std:: containers
// (thread-local scratch comes from cpu::threadScratch, compiled without ISA flags).
//
// Kernel shapes (what bounds them):
//  - decode (few tokens): weights stream from memory once; register tiles of RB rows x NT tokens
//    fixed at compile time (>= 8 independent accumulators), software prefetch of the next row group
//    (same column, RB rows on). Memory-bound: the loop only has to keep loads in flight.
//  - 2:4 direct: W values (one 32-bit metadata word per 16 values) cover 2W input columns; the 2-bit
//    indices become a permute index (shift by 2*lane, and 3, + 4*(lane/2)) and the two x vectors
//    covering those columns are permuted into the kept positions (vpermt2ps / 2x vpermps+blend), so
//    only 9/16 of the dense bytes are read.
//  - 75% direct: per row pair and 128-column chunk, the stored 2:4 row is added into the even or
//    the odd row's accumulators (values ANDed with an all-ones/all-zeros mask per chunk).
//  - more tokens (> kDirectMaxTokens): sparse rows are decoded into an fp32 panel of RB rows (L1)
//    once and reused by every token tile, so the decode cost is amortised over the tokens.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/kernels.h"

namespace hetmoe {
namespace cpu {
// Thread-local scratch, grown on demand, never shrunk (kernels.cc). `slot` < 10 (slot map there).
void* threadScratch(int slot, size_t bytes);

namespace {

// Software prefetch: every row stream prefetches the same column a whole number of rows further on
// (at least the next row group, at least ~kPrefetchBytes ahead): the data the row groups after this
// one read. Measured: ~16 KB ahead keeps DRAM busy; prefetching along the row itself does not,
// because a row group's streams are contiguous rows.
constexpr int64_t kPrefetchBytes = 16384;
template <int RB>
inline int64_t prefetchRows(int64_t rowBytes) {
  const int64_t rows = (kPrefetchBytes + rowBytes - 1) / rowBytes;
  return rows > RB ? rows : RB;
}
constexpr int kDirectMaxTokens = 8;  // above this, sparse rows go through a decoded panel

inline float bf16f(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float wval(const float* p, int64_t i) { return p[i]; }
inline float wval(const uint16_t* p, int64_t i) { return bf16f(p[i]); }

inline int64_t nChunks75(int64_t cols) { return (cols + kChunk75 - 1) / kChunk75; }

// Dense fp32 row r of W (any format), written to out[0..cols).
template <class T>
void decodeRowT(const MatrixView& m, int32_t r, float* out) {
  const int64_t K = m.cols;
  const T* v = static_cast<const T*>(m.values);
  if (m.format == WeightFormat::Dense) {
    for (int64_t c = 0; c < K; ++c) out[c] = wval(v, r * K + c);
    return;
  }
  for (int64_t c = 0; c < K; ++c) out[c] = 0.f;
  int64_t s = r;
  const uint8_t* sel = nullptr;
  if (m.format == WeightFormat::Sparse75) {
    s = r / 2;
    sel = m.select + s * nChunks75(K);
  }
  const uint32_t* meta = m.meta + s * (K / 16);
  v += s * (K / 2);
  for (int64_t g = 0; g < K / 4; ++g) {
    if (sel && sel[(4 * g) / kChunk75] != static_cast<uint8_t>(r & 1)) continue;
    const uint32_t nib = (meta[g >> 3] >> (4 * (g & 7))) & 0xfu;
    out[4 * g + (nib & 3u)] += wval(v, 2 * g);
    out[4 * g + (nib >> 2)] += wval(v, 2 * g + 1);
  }
}
inline void decodeRowF32(const MatrixView& m, int32_t r, float* out) {
  if (m.dtype == WeightDtype::BF16) decodeRowT<uint16_t>(m, r, out);
  else decodeRowT<float>(m, r, out);
}

// out[i*NT + j] = <row i of W, x_j> for RB dense rows (ldw elements apart) and NT tokens.
template <class V, class T, int RB, int NT>
inline void denseTile(const T* w, int64_t ldw, int64_t K, const float* const* xr, float* out) {
  using R = typename V::R;
  R acc[RB][NT];
#pragma GCC unroll 16
  for (int i = 0; i < RB; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) acc[i][j] = V::zero();
  const int64_t ahead = prefetchRows<RB>(ldw * int64_t(sizeof(T))) * ldw;
  int64_t k = 0;
  for (; k + V::W <= K; k += V::W) {
    R xv[NT];
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) xv[j] = V::load(xr[j] + k);
#pragma GCC unroll 16
    for (int i = 0; i < RB; ++i) {
      const T* p = w + i * ldw + k;
      _mm_prefetch(reinterpret_cast<const char*>(p + ahead), _MM_HINT_T0);
      const R wv = V::loadW(p);
#pragma GCC unroll 8
      for (int j = 0; j < NT; ++j) acc[i][j] = V::fma(wv, xv[j], acc[i][j]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < RB; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) out[i * NT + j] = V::hsum(acc[i][j]);
  for (; k < K; ++k)
    for (int i = 0; i < RB; ++i)
      for (int j = 0; j < NT; ++j) out[i * NT + j] += wval(w, i * ldw + k) * xr[j][k];
}

// Scalar 2:4 groups [g0, g1) of one stored row, added to acc[j] (one per token).
template <class T, int NT>
inline void groups24(const T* v, const uint32_t* meta, int64_t g0, int64_t g1, const float* const* xr, float* acc) {
  for (int64_t g = g0; g < g1; ++g) {
    const uint32_t nib = (meta[g >> 3] >> (4 * (g & 7))) & 0xfu;
    const float a = wval(v, 2 * g), b = wval(v, 2 * g + 1);
    for (int j = 0; j < NT; ++j) acc[j] += a * xr[j][4 * g + (nib & 3u)] + b * xr[j][4 * g + (nib >> 2)];
  }
}

// 2:4, RB stored rows (= output rows) x NT tokens. Values [K/2] and meta [K/16] per row.
template <class V, class T, int RB, int NT>
inline void sparse24Tile(const T* v, const uint32_t* meta, int64_t K, const float* const* xr, float* out) {
  using R = typename V::R;
  const int64_t ldv = K / 2, ldm = K / 16, nv = K / 2;
  R acc[RB][NT];
#pragma GCC unroll 16
  for (int i = 0; i < RB; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) acc[i][j] = V::zero();
  const int64_t pr = prefetchRows<RB>(ldv * int64_t(sizeof(T)) + ldm * 4), ahead = pr * ldv, aheadM = pr * ldm;
  int64_t jv = 0;
  for (; jv + V::W <= nv; jv += V::W) {
    const int64_t c = 2 * jv;
    R xlo[NT], xhi[NT];
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) {
      xlo[j] = V::load(xr[j] + c);
      xhi[j] = V::load(xr[j] + c + V::W);
    }
#pragma GCC unroll 16
    for (int i = 0; i < RB; ++i) {
      const T* p = v + i * ldv + jv;
      _mm_prefetch(reinterpret_cast<const char*>(p + ahead), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(meta + i * ldm + aheadM + (jv >> 4)), _MM_HINT_T0);
      const auto idx = V::idx24(meta + i * ldm, jv);
      const R wv = V::loadW(p);
#pragma GCC unroll 8
      for (int j = 0; j < NT; ++j) acc[i][j] = V::fma(wv, V::perm24(xlo[j], xhi[j], idx), acc[i][j]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < RB; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) out[i * NT + j] = V::hsum(acc[i][j]);
  if (jv < nv)
    for (int i = 0; i < RB; ++i) groups24<T, NT>(v + i * ldv, meta + i * ldm, jv / 2, nv / 2, xr, out + i * NT);
}

// 75%: RBP row pairs x NT tokens; out[(2p + e) * NT + j] for the even (e=0) and odd (e=1) row.
template <class V, class T, int RBP, int NT>
inline void sparse75Tile(const T* v, const uint32_t* meta, const uint8_t* sel, int64_t K, const float* const* xr,
                         float* out) {
  using R = typename V::R;
  const int64_t ldv = K / 2, ldm = K / 16, lds = nChunks75(K);
  R acc[RBP][2][NT];
#pragma GCC unroll 16
  for (int p = 0; p < RBP; ++p)
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) acc[p][0][j] = acc[p][1][j] = V::zero();
  float tail[RBP][2][NT] = {};
  const int64_t pr = prefetchRows<RBP>(ldv * int64_t(sizeof(T)) + ldm * 4), ahead = pr * ldv, aheadM = pr * ldm;
  for (int64_t c0 = 0, ch = 0; c0 < K; c0 += kChunk75, ++ch) {
    const int64_t v0 = c0 / 2, v1 = (c0 + kChunk75 < K ? c0 + kChunk75 : K) / 2;
    R keepOdd[RBP];
#pragma GCC unroll 16
    for (int p = 0; p < RBP; ++p) keepOdd[p] = V::allOnes(sel[p * lds + ch] != 0);
    int64_t jv = v0;
    for (; jv + V::W <= v1; jv += V::W) {
      const int64_t c = 2 * jv;
      R xlo[NT], xhi[NT];
#pragma GCC unroll 8
      for (int j = 0; j < NT; ++j) {
        xlo[j] = V::load(xr[j] + c);
        xhi[j] = V::load(xr[j] + c + V::W);
      }
#pragma GCC unroll 16
      for (int p = 0; p < RBP; ++p) {
        const T* q = v + p * ldv + jv;
        _mm_prefetch(reinterpret_cast<const char*>(q + ahead), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(meta + p * ldm + aheadM + (jv >> 4)), _MM_HINT_T0);
        const auto idx = V::idx24(meta + p * ldm, jv);
        const R wv = V::loadW(q);
        const R wo = V::andMask(wv, keepOdd[p]), we = V::andNotMask(wv, keepOdd[p]);
#pragma GCC unroll 8
        for (int j = 0; j < NT; ++j) {
          const R xg = V::perm24(xlo[j], xhi[j], idx);
          acc[p][0][j] = V::fma(we, xg, acc[p][0][j]);
          acc[p][1][j] = V::fma(wo, xg, acc[p][1][j]);
        }
      }
    }
    if (jv < v1)
      for (int p = 0; p < RBP; ++p) {
        const int e = sel[p * lds + ch] != 0;
        groups24<T, NT>(v + p * ldv, meta + p * ldm, jv / 2, v1 / 2, xr, tail[p][e]);
      }
  }
#pragma GCC unroll 16
  for (int p = 0; p < RBP; ++p)
#pragma GCC unroll 8
    for (int j = 0; j < NT; ++j) {
      out[(2 * p) * NT + j] = V::hsum(acc[p][0][j]) + tail[p][0][j];
      out[(2 * p + 1) * NT + j] = V::hsum(acc[p][1][j]) + tail[p][1][j];
    }
}

// Writes a tile result: rows [r, r+rb) x tokens [t0, t0+nt) from res[i*nt + j].
inline void emit(const MatArgs& a, int32_t r, int rb, int32_t t0, int nt, const float* res) {
  for (int j = 0; j < nt; ++j) {
    const int32_t t = t0 + j;
    float* yr = a.y + (a.yidx ? a.yidx[t] : t) * a.ldy;
    const float s = a.yscale ? a.yscale[t] : 1.f;
    for (int i = 0; i < rb; ++i) {
      const int32_t row = r + i;
      if (row >= a.r0 && row < a.r1) yr[row] = s * res[i * nt + j];
    }
  }
}

// One row group x all tokens, for a dense-row source (the weights themselves or a decoded panel).
template <class V, class T, int RB>
inline void denseRowsAllTokens(const MatArgs& a, const T* w, int64_t ldw, int32_t r, const float* const* xr) {
  const int64_t K = a.w->cols;
  float res[RB * V::NTMAX];
  int32_t t = 0;
  for (; t + V::NTMAX <= a.n; t += V::NTMAX) {
    denseTile<V, T, RB, V::NTMAX>(w, ldw, K, xr + t, res);
    emit(a, r, RB, t, V::NTMAX, res);
  }
  const int left = a.n - t;
  switch (left) {
    case 0: break;
#define HM_CASE(NTV) \
  case NTV: if constexpr (NTV < V::NTMAX) { denseTile<V, T, RB, NTV>(w, ldw, K, xr + t, res); emit(a, r, RB, t, NTV, res); } break;
    HM_CASE(1) HM_CASE(2) HM_CASE(3) HM_CASE(4) HM_CASE(5)
#undef HM_CASE
    default: break;
  }
}

template <class V, class T>
void matmulDense(const MatArgs& a, const float* const* xr) {
  const int64_t K = a.w->cols;
  const T* w = static_cast<const T*>(a.w->values);
  int32_t r = a.r0;
  if (a.n == 1) {
    float res[8];
    for (; r + 8 <= a.r1; r += 8) {
      denseTile<V, T, 8, 1>(w + r * K, K, K, xr, res);
      emit(a, r, 8, 0, 1, res);
    }
  } else {
    for (; r + 4 <= a.r1; r += 4) denseRowsAllTokens<V, T, 4>(a, w + r * K, K, r, xr);
  }
  for (; r < a.r1; ++r) denseRowsAllTokens<V, T, 1>(a, w + r * K, K, r, xr);
}

// Sparse weights with many tokens: decode 4 rows to an fp32 panel, reuse it for every token tile.
template <class V>
void matmulPanel(const MatArgs& a, const float* const* xr) {
  const int64_t K = a.w->cols;
  float* panel = static_cast<float*>(threadScratch(1, sizeof(float) * 4 * K));
  int32_t r = a.r0;
  for (; r + 4 <= a.r1; r += 4) {
    for (int i = 0; i < 4; ++i) decodeRowF32(*a.w, r + i, panel + i * K);
    denseRowsAllTokens<V, float, 4>(a, panel, K, r, xr);
  }
  for (; r < a.r1; ++r) {
    decodeRowF32(*a.w, r, panel);
    denseRowsAllTokens<V, float, 1>(a, panel, K, r, xr);
  }
}

template <class V, class T, int RB, int NT>
inline void sparse24Rows(const MatArgs& a, int32_t r, const float* const* xr, int32_t t, float* res) {
  const int64_t K = a.w->cols;
  sparse24Tile<V, T, RB, NT>(static_cast<const T*>(a.w->values) + r * (K / 2), a.w->meta + r * (K / 16), K, xr + t, res);
  emit(a, r, RB, t, NT, res);
}

template <class V, class T>
void matmulSparse24(const MatArgs& a, const float* const* xr) {
  float res[8 * V::NTMAX];
  int32_t r = a.r0;
  if (a.n == 1) {
    for (; r + 8 <= a.r1; r += 8) sparse24Rows<V, T, 8, 1>(a, r, xr, 0, res);
    for (; r < a.r1; ++r) sparse24Rows<V, T, 1, 1>(a, r, xr, 0, res);
    return;
  }
  auto rowsAllTokens = [&](auto rbTag) {
    constexpr int RB = decltype(rbTag)::value;
    int32_t t = 0;
    for (; t + V::NTMAX24 <= a.n; t += V::NTMAX24) sparse24Rows<V, T, RB, V::NTMAX24>(a, r, xr, t, res);
    // The remaining tokens in one tile, so the index expansion is shared by all of them.
    switch (a.n - t) {
      case 1: sparse24Rows<V, T, RB, 1>(a, r, xr, t, res); break;
      case 2: if constexpr (2 < V::NTMAX24) sparse24Rows<V, T, RB, 2>(a, r, xr, t, res); break;
      case 3: if constexpr (3 < V::NTMAX24) sparse24Rows<V, T, RB, 3>(a, r, xr, t, res); break;
      default: break;
    }
  };
  for (; r + 4 <= a.r1; r += 4) rowsAllTokens(std::integral_constant<int, 4>{});
  for (; r < a.r1; ++r) rowsAllTokens(std::integral_constant<int, 1>{});
}

template <class V, class T, int RBP, int NT>
inline void sparse75Pairs(const MatArgs& a, int32_t p, const float* const* xr, int32_t t, float* res) {
  const int64_t K = a.w->cols;
  sparse75Tile<V, T, RBP, NT>(static_cast<const T*>(a.w->values) + p * (K / 2), a.w->meta + p * (K / 16),
                              a.w->select + p * nChunks75(K), K, xr + t, res);
  emit(a, 2 * p, 2 * RBP, t, NT, res);  // emit() keeps only rows inside [r0, r1)
}

template <class V, class T>
void matmulSparse75(const MatArgs& a, const float* const* xr) {
  float res[8 * V::NTMAX];
  int32_t p = a.r0 / 2;
  const int32_t p1 = (a.r1 + 1) / 2;
  constexpr int RBP = V::RBP75;
  if (a.n == 1) {
    for (; p + RBP <= p1; p += RBP) sparse75Pairs<V, T, RBP, 1>(a, p, xr, 0, res);
    for (; p < p1; ++p) sparse75Pairs<V, T, 1, 1>(a, p, xr, 0, res);
    return;
  }
  for (; p + 2 <= p1; p += 2) {
    int32_t t = 0;
    for (; t + 2 <= a.n; t += 2) sparse75Pairs<V, T, 2, 2>(a, p, xr, t, res);
    for (; t < a.n; ++t) sparse75Pairs<V, T, 2, 1>(a, p, xr, t, res);
  }
  for (; p < p1; ++p)
    for (int32_t t = 0; t < a.n; ++t) sparse75Pairs<V, T, 1, 1>(a, p, xr, t, res);
}

template <class V>
void matmul(const MatArgs& a) {
  if (a.n <= 0 || a.r1 <= a.r0) return;
  const float** xr = static_cast<const float**>(threadScratch(0, sizeof(float*) * a.n));
  for (int32_t t = 0; t < a.n; ++t) xr[t] = a.x + (a.xidx ? a.xidx[t] : t) * a.ldx;
  const MatrixView& w = *a.w;
  const bool bf = w.dtype == WeightDtype::BF16;
  if (w.format == WeightFormat::Dense) {
    if constexpr (V::kDpBf16) {
      if (bf) return V::matmulDenseBf16(a, xr);
    }
    return bf ? matmulDense<V, uint16_t>(a, xr) : matmulDense<V, float>(a, xr);
  }
  if (a.n > kDirectMaxTokens) return matmulPanel<V>(a, xr);
  if (w.format == WeightFormat::Sparse24) return bf ? matmulSparse24<V, uint16_t>(a, xr) : matmulSparse24<V, float>(a, xr);
  return bf ? matmulSparse75<V, uint16_t>(a, xr) : matmulSparse75<V, float>(a, xr);
}

// exp(x) for |x| < 88: 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2], degree-6 Taylor (rel. err ~2e-7).
template <class V>
inline typename V::R vexp(typename V::R x) {
  using R = typename V::R;
  x = V::min(V::max(x, V::set1(-87.f)), V::set1(88.f));
  const R n = V::round(V::mul(x, V::set1(1.44269504088896341f)));
  R r = V::fma(n, V::set1(-0.693145751953125f), x);
  r = V::fma(n, V::set1(-1.428606765330187e-06f), r);
  R p = V::set1(1.f / 720);
  p = V::fma(p, r, V::set1(1.f / 120));
  p = V::fma(p, r, V::set1(1.f / 24));
  p = V::fma(p, r, V::set1(1.f / 6));
  p = V::fma(p, r, V::set1(0.5f));
  p = V::fma(p, r, V::set1(1.f));
  p = V::fma(p, r, V::set1(1.f));
  return V::scale2(p, n);
}
// silu(g) * u = g * u / (1 + exp(-g))
template <class V>
inline typename V::R vswiglu(typename V::R g, typename V::R u) {
  const auto e = vexp<V>(V::sub(V::zero(), g));
  return V::div(V::mul(g, u), V::add(V::set1(1.f), e));
}
// gelu_tanh(x) = 0.5 x (1 + tanh(s)) = x - x / (1 + exp(2 s)),  s = sqrt(2/pi) (x + 0.044715 x^3)
template <class V>
inline typename V::R vgelu(typename V::R x) {
  const auto x3 = V::mul(V::mul(x, x), x);
  const auto s2 = V::mul(V::set1(2.f * 0.7978845608028654f), V::fma(x3, V::set1(0.044715f), x));
  return V::sub(x, V::div(x, V::add(V::set1(1.f), vexp<V>(s2))));
}

inline float sexp(float x) { return __builtin_expf(x); }

template <class V>
void swigluInPlace(float* g, const float* u, size_t n) {
  size_t i = 0;
  for (; i + V::W <= n; i += V::W) V::store(g + i, vswiglu<V>(V::load(g + i), V::load(u + i)));
  for (; i < n; ++i) g[i] = g[i] * u[i] / (1.f + sexp(-g[i]));
}
template <class V>
void geluInPlace(float* x, size_t n) {
  size_t i = 0;
  for (; i + V::W <= n; i += V::W) V::store(x + i, vgelu<V>(V::load(x + i)));
  for (; i < n; ++i) {
    const float v = x[i], s = 0.7978845608028654f * (v + 0.044715f * v * v * v);
    x[i] = v - v / (1.f + sexp(2.f * s));
  }
}

}  // namespace
}  // namespace cpu
}  // namespace hetmoe
