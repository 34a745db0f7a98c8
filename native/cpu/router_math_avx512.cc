// The gate's logits with AVX-512 (router_math.h): a zmm of eight doubles holds the lane sums
// a_0..a_7 of one (token, expert) logit; register tiles of up to 4 tokens × 6 experts (or 3 × 8) share each
// load (a token's hidden row is read once per expert tile, an expert's row once per token tile), so
// the loop runs on FMAs rather than on one accumulator chain's latency or on loads.
#include <immintrin.h>

#include "cpu/router_math.h"

namespace hetmoe {
namespace cpu {
namespace {

// Eight floats as doubles. (The zero-masked form: GCC 12 warns of an uninitialised operand in the
// plain _mm512_cvtps_pd; with a full mask both compile to the same vcvtps2pd.)
inline __m512d cvt(const float* p) { return _mm512_maskz_cvtps_pd(__mmask8(0xff), _mm256_loadu_ps(p)); }

template <int TT, int TE>
void tile(const GateArgs& g, int t0, int e0) {
  const int D = g.D, D8 = D & ~7;
  const float* h[TT];
  const float* w[TE];
  for (int u = 0; u < TT; ++u) h[u] = g.x + int64_t(t0 + u) * D;
  for (int v = 0; v < TE; ++v) w[v] = g.W + int64_t(e0 + v) * D;
  __m512d acc[TT][TE];
  for (int u = 0; u < TT; ++u)
    for (int v = 0; v < TE; ++v) acc[u][v] = _mm512_setzero_pd();
  for (int j = 0; j < D8; j += 8) {
    __m512d xv[TT];
    for (int u = 0; u < TT; ++u) xv[u] = cvt(h[u] + j);
    for (int v = 0; v < TE; ++v) {
      const __m512d wv = cvt(w[v] + j);
      for (int u = 0; u < TT; ++u) acc[u][v] = _mm512_fmadd_pd(wv, xv[u], acc[u][v]);
    }
  }
  for (int u = 0; u < TT; ++u)
    for (int v = 0; v < TE; ++v) {
      alignas(64) double a[8];
      _mm512_store_pd(a, acc[u][v]);
      g.logits[int64_t(t0 + u) * g.E + e0 + v] = gateFinish(a, w[v], h[u], D8, D);
    }
}

constexpr int kTT = 4;
using TileFn = void (*)(const GateArgs&, int, int);
// Experts per tile for a tile of TT tokens: 8-24 accumulators of the 32 zmm registers.
constexpr int kMaxTE[5] = {0, 8, 8, 8, 6};
template <int TT>
constexpr TileFn pick(int te) {
  switch (te) {
    case 1: return tile<TT, 1>;
    case 2: return tile<TT, 2>;
    case 3: return tile<TT, 3>;
    case 4: return tile<TT, 4>;
    case 5: return tile<TT, (kMaxTE[TT] >= 5 ? 5 : 1)>;
    case 6: return tile<TT, (kMaxTE[TT] >= 6 ? 6 : 1)>;
    case 7: return tile<TT, (kMaxTE[TT] >= 7 ? 7 : 1)>;
    default: return tile<TT, (kMaxTE[TT] >= 8 ? 8 : 1)>;
  }
}

}  // namespace

void gateBlockAvx512(const GateArgs& g, int t0, int t1, int e0, int e1) {
  for (int t = t0; t < t1;) {
    const int tt = t1 - t >= kTT ? kTT : t1 - t;
    const int maxTe = kMaxTE[tt];
    for (int e = e0; e < e1;) {
      const int te = e1 - e >= maxTe ? maxTe : e1 - e;
      const TileFn f = tt == 1 ? pick<1>(te) : tt == 2 ? pick<2>(te) : tt == 3 ? pick<3>(te) : pick<4>(te);
      f(g, t, e);
      e += te;
    }
    t += tt;
  }
}

}  // namespace cpu
}  // namespace hetmoe
