// The gate's logits with AVX2 (router_math.h): two ymm of doubles hold the lane sums a_0..a_3 and
// a_4..a_7 of one (token, expert) logit; register tiles of up to 2 tokens × 4 experts share each
// load, so the loop runs on FMAs rather than on one accumulator chain's latency.
#include <immintrin.h>

#include "cpu/router_math.h"

namespace hetmoe {
namespace cpu {
namespace {

template <int TT, int TE>
void tile(const GateArgs& g, int t0, int e0) {
  const int D = g.D, D8 = D & ~7;
  const float* h[TT];
  const float* w[TE];
  for (int u = 0; u < TT; ++u) h[u] = g.x + int64_t(t0 + u) * D;
  for (int v = 0; v < TE; ++v) w[v] = g.W + int64_t(e0 + v) * D;
  __m256d acc[TT][TE][2];
  for (int u = 0; u < TT; ++u)
    for (int v = 0; v < TE; ++v) acc[u][v][0] = acc[u][v][1] = _mm256_setzero_pd();
  for (int j = 0; j < D8; j += 8)
    for (int half = 0; half < 2; ++half) {
      __m256d xv[TT];
      for (int u = 0; u < TT; ++u) xv[u] = _mm256_cvtps_pd(_mm_loadu_ps(h[u] + j + 4 * half));
      for (int v = 0; v < TE; ++v) {
        const __m256d wv = _mm256_cvtps_pd(_mm_loadu_ps(w[v] + j + 4 * half));
        for (int u = 0; u < TT; ++u) acc[u][v][half] = _mm256_fmadd_pd(wv, xv[u], acc[u][v][half]);
      }
    }
  for (int u = 0; u < TT; ++u)
    for (int v = 0; v < TE; ++v) {
      alignas(32) double a[8];
      _mm256_store_pd(a, acc[u][v][0]);
      _mm256_store_pd(a + 4, acc[u][v][1]);
      g.logits[int64_t(t0 + u) * g.E + e0 + v] = gateFinish(a, w[v], h[u], D8, D);
    }
}

}  // namespace

void gateBlockAvx2(const GateArgs& g, int t0, int t1, int e0, int e1) {
  // 2 tokens × 3 experts: 12 accumulators of the 16 ymm registers; one token × 6 experts likewise.
  for (int t = t0; t < t1;) {
    const int tt = t1 - t >= 2 ? 2 : 1;
    for (int e = e0; e < e1;) {
      const int left = e1 - e;
      int te;
      if (tt == 2) {
        te = left >= 3 ? 3 : left;
        if (te == 3) tile<2, 3>(g, t, e);
        else if (te == 2) tile<2, 2>(g, t, e);
        else tile<2, 1>(g, t, e);
      } else {
        te = left >= 6 ? 6 : left;
        switch (te) {
          case 6: tile<1, 6>(g, t, e); break;
          case 5: tile<1, 5>(g, t, e); break;
          case 4: tile<1, 4>(g, t, e); break;
          case 3: tile<1, 3>(g, t, e); break;
          case 2: tile<1, 2>(g, t, e); break;
          default: tile<1, 1>(g, t, e); break;
        }
      }
      e += te;
    }
    t += tt;
  }
}

}  // namespace cpu
}  // namespace hetmoe
