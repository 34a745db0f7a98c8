// The gate's logits with AVX2 (router_math.h): lane i of a ymm of doubles is the partial sum a_i of
// the scalar order; four tokens share each weight load (four independent FMA chains).
#include <immintrin.h>

#include "cpu/router_math.h"

namespace hetmoe {
namespace cpu {
void gateLogitsAvx2(const float* x, const float* W, int T, int D, int E, double* logits) {
  const int D4 = D & ~3;
  for (int e = 0; e < E; ++e) {
    const float* w = W + int64_t(e) * D;
    int t = 0;
    for (; t + 4 <= T; t += 4) {
      const float* h0 = x + int64_t(t) * D;
      const float* h1 = h0 + D;
      const float* h2 = h1 + D;
      const float* h3 = h2 + D;
      __m256d c0 = _mm256_setzero_pd(), c1 = c0, c2 = c0, c3 = c0;
      for (int j = 0; j < D4; j += 4) {
        const __m256d wj = _mm256_cvtps_pd(_mm_loadu_ps(w + j));
        c0 = _mm256_fmadd_pd(wj, _mm256_cvtps_pd(_mm_loadu_ps(h0 + j)), c0);
        c1 = _mm256_fmadd_pd(wj, _mm256_cvtps_pd(_mm_loadu_ps(h1 + j)), c1);
        c2 = _mm256_fmadd_pd(wj, _mm256_cvtps_pd(_mm_loadu_ps(h2 + j)), c2);
        c3 = _mm256_fmadd_pd(wj, _mm256_cvtps_pd(_mm_loadu_ps(h3 + j)), c3);
      }
      const float* hs[4] = {h0, h1, h2, h3};
      const __m256d cs[4] = {c0, c1, c2, c3};
      for (int u = 0; u < 4; ++u) {
        // The tail joins a_0 one product at a time, as in the scalar order: a0 += w·h, j ascending.
        alignas(32) double a[4];
        _mm256_store_pd(a, cs[u]);
        for (int j = D4; j < D; ++j) a[0] += double(w[j]) * hs[u][j];
        logits[int64_t(t + u) * E + e] = a[0] + a[1] + (a[2] + a[3]);
      }
    }
    for (; t < T; ++t) {
      const float* h = x + int64_t(t) * D;
      __m256d c = _mm256_setzero_pd();
      for (int j = 0; j < D4; j += 4) c = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(w + j)), _mm256_cvtps_pd(_mm_loadu_ps(h + j)), c);
      alignas(32) double a[4];
      _mm256_store_pd(a, c);
      for (int j = D4; j < D; ++j) a[0] += double(w[j]) * h[j];
      logits[int64_t(t) * E + e] = a[0] + a[1] + (a[2] + a[3]);
    }
  }
}

}  // namespace cpu
}  // namespace hetmoe
