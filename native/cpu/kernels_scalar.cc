// The portable level: each row is decoded to fp32 (the reference layout decoder, made fast enough),
// then dotted with every token using 8 independent partial sums. No ISA flags.
#include <cmath>

#include "cpu/kernels_impl.h"

namespace hetmoe {
namespace cpu {
namespace {

void matmulScalar(const MatArgs& a) {
  if (a.n <= 0 || a.r1 <= a.r0) return;
  const int64_t K = a.w->cols;
  float* row = static_cast<float*>(threadScratch(1, sizeof(float) * K));
  for (int32_t r = a.r0; r < a.r1; ++r) {
    decodeRowF32(*a.w, r, row);
    for (int32_t t = 0; t < a.n; ++t) {
      const float* x = a.x + (a.xidx ? a.xidx[t] : t) * a.ldx;
      float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t k = 0;
      for (; k + 8 <= K; k += 8)
        for (int u = 0; u < 8; ++u) s[u] += row[k + u] * x[k + u];
      for (; k < K; ++k) s[0] += row[k] * x[k];
      const float v = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
      a.y[(a.yidx ? a.yidx[t] : t) * a.ldy + r] = (a.yscale ? a.yscale[t] : 1.f) * v;
    }
  }
}

void swigluScalar(float* g, const float* u, size_t n) {
  for (size_t i = 0; i < n; ++i) g[i] = g[i] * u[i] / (1.f + std::exp(-g[i]));
}
void geluScalar(float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float v = x[i], s = 0.7978845608028654f * (v + 0.044715f * v * v * v);
    x[i] = 0.5f * v * (1.f + std::tanh(s));
  }
}

}  // namespace

const KernelTable& scalarKernels() {
  static const KernelTable t{Isa::Scalar, matmulScalar, swigluScalar, geluScalar, nullptr, nullptr, nullptr};
  return t;
}

}  // namespace cpu
}  // namespace hetmoe
