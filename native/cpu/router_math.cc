// Router arithmetic (router_math.h): the scalar gate and the ISA choice, the finiteness check and
// the combine (plain loops the compiler vectorises; both are memory-bound).
#include "cpu/parallel_scan.h"
#include "cpu/router_math.h"

#include <cmath>
#include <cstring>

#include "cpu/kernels.h"

namespace hetmoe {
namespace cpu {

void gateBlockScalar(const GateArgs& g, int t0, int t1, int e0, int e1) {
  const int D = g.D, D8 = D & ~7;
  for (int t = t0; t < t1; ++t)
    for (int e = e0; e < e1; ++e) {
      const float* w = g.W + int64_t(e) * D;
      const float* h = g.x + int64_t(t) * D;
      double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int j = 0; j < D8; j += 8)
        for (int i = 0; i < 8; ++i) a[i] += double(w[j + i]) * double(h[j + i]);
      g.logits[int64_t(t) * g.E + e] = gateFinish(a, w, h, D8, D);
    }
}

GateBlockFn gateBlockFor(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return gateBlockScalar;
    case Isa::Avx2: return gateBlockAvx2;
    case Isa::Avx512:
    case Isa::Avx512Bf16:
    case Isa::Amx: return gateBlockAvx512;
  }
  return gateBlockScalar;
}

GateBlockFn gateBlockForEnv() { return gateBlockFor(resolveIsa("")); }

// firstNonFinite is in parallel_scan.cc, with the vector clones of its loop.

int64_t checkLogits(const double* logits, int64_t n, const float* x, int64_t xn) {
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) finite &= std::isfinite(logits[i]);
  if (finite) return -1;
  const int64_t bad = firstNonFiniteParallel(x, xn);
  return bad >= 0 ? bad : kGateWeightNotFinite;
}

int64_t gateLogits(const float* x, const float* W, int T, int D, int E, double* logits) {
  // Same bits at every level (see the header); HETMOE_ISA or the best level picks the kernel.
  gateBlockForEnv()(GateArgs{x, W, D, E, logits}, 0, T, 0, E);
  return checkLogits(logits, int64_t(T) * E, x, int64_t(T) * D);
}

void combineRows(const float* rows, const float* shared, int S, float* out, int T, int K, int D, const float* g, int t0, int t1) {
  for (int t = t0; t < t1; ++t) {
    float* o = out + int64_t(t) * D;
    const float* r = rows + int64_t(t) * K * D;
    for (int d = 0; d < D; ++d) o[d] = r[d];
    for (int k = 1; k < K; ++k)
      for (int d = 0; d < D; ++d) o[d] += r[int64_t(k) * D + d];
    if (S == 0) continue;
    const float gt = g ? g[t] : 1.0f;
    for (int d = 0; d < D; ++d) {
      float sum = 0;
      for (int s = 0; s < S; ++s) sum += shared[(int64_t(s) * T + t) * D + d];
      o[d] += gt * sum;
    }
  }
}

}  // namespace cpu
}  // namespace hetmoe
