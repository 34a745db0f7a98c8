// Router arithmetic (router_math.h): the scalar gate and the ISA choice, the finiteness check and
// the combine (plain loops the compiler vectorises; both are memory-bound).
#include "cpu/router_math.h"

#include <cstring>

#include "cpu/kernels.h"

namespace hetmoe {
namespace cpu {

void gateLogitsScalar(const float* x, const float* W, int T, int D, int E, double* logits) {
  const int D4 = D & ~3;
  for (int t = 0; t < T; ++t)
    for (int e = 0; e < E; ++e) {
      const float* w = W + int64_t(e) * D;
      const float* h = x + int64_t(t) * D;
      double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
      for (int j = 0; j < D4; j += 4) {
        a0 += double(w[j]) * h[j];
        a1 += double(w[j + 1]) * h[j + 1];
        a2 += double(w[j + 2]) * h[j + 2];
        a3 += double(w[j + 3]) * h[j + 3];
      }
      for (int j = D4; j < D; ++j) a0 += double(w[j]) * h[j];
      logits[int64_t(t) * E + e] = a0 + a1 + (a2 + a3);
    }
}

int64_t firstNonFinite(const float* x, int64_t n) {
  constexpr int64_t kChunk = 1024;
  for (int64_t c = 0; c < n; c += kChunk) {
    const int64_t end = c + kChunk < n ? c + kChunk : n;
    uint32_t any = 0;  // a branch-free pass the compiler vectorises, then a search only on a hit
    for (int64_t i = c; i < end; ++i) {
      uint32_t b;
      std::memcpy(&b, x + i, 4);
      any |= (b & 0x7f800000u) == 0x7f800000u;
    }
    if (any)
      for (int64_t i = c; i < end; ++i) {
        uint32_t b;
        std::memcpy(&b, x + i, 4);
        if ((b & 0x7f800000u) == 0x7f800000u) return i;
      }
  }
  return -1;
}

int64_t gateLogits(const float* x, const float* W, int T, int D, int E, double* logits) {
  const int64_t bad = firstNonFinite(x, int64_t(T) * D);
  if (bad >= 0) return bad;
  // Same bits either way (see the header); AVX2 unless HETMOE_ISA asks for scalar.
  if (resolveIsa("") != Isa::Scalar && isaAvailable(Isa::Avx2))
    gateLogitsAvx2(x, W, T, D, E, logits);
  else
    gateLogitsScalar(x, W, T, D, E, logits);
  return -1;
}

void combineRows(const float* rows, const float* shared, int S, float* out, int T, int K, int D, const float* g) {
  for (int t = 0; t < T; ++t) {
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
