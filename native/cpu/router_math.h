// The per-layer arithmetic around the experts that the runtime used to do in JavaScript: the gate's
// logits, the finiteness check of hidden states, and the top-k combine. At a real model's width
// these loops cost 15 µs - 2.5 ms a layer in JavaScript (mixtral's gate at 16 tokens: 0.7 ms).
#pragma once
#include <cstdint>

#include "cpu/kernels.h"

namespace hetmoe {
namespace cpu {

// logits[t*E + e] = Σ_j W[e*D + j] · x[t*D + j] in float64, summed exactly as the JavaScript router
// (scheduler/route-gate.ts) sums: eight partial sums a_{j mod 8} over j < 8⌊D/8⌋, the tail into a_0
// in ascending j, then ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)). Every float×float product
// is exact in float64, so an FMA rounds like a multiply then an add and the result is the same bits
// on every ISA and machine, whatever the register tiling and whichever thread computes a logit.
// Returns the index of the first non-finite value of x, else -1, or kGateWeightNotFinite (checkLogits).
int64_t gateLogits(const float* x, const float* W, int T, int D, int E, double* logits);
// No float×float product overflows float64 and no sum of 2^31 of them does, so a logit is non-finite
// exactly when its token's hidden row or its expert's gate row holds a NaN or ±Inf: the T×E logits
// are checked instead of the T×D hidden states (one pass over the hidden states fewer), and only when
// one is not finite are the hidden states scanned for the index to report.
constexpr int64_t kGateWeightNotFinite = -3;
// -1 when all n logits are finite; else the index of the first non-finite value of x[0..xn), or
// kGateWeightNotFinite when x is finite (the gate's weights are not).
int64_t checkLogits(const double* logits, int64_t n, const float* x, int64_t xn);
// The same for tokens [t0, t1) × experts [e0, e1) only (x, W and logits are the whole arrays; no
// finiteness check), at one ISA level. The blocks of a parallel gate job (router_job.h).
struct GateArgs {
  const float* x;
  const float* W;
  int D, E;
  double* logits;
};
using GateBlockFn = void (*)(const GateArgs& a, int t0, int t1, int e0, int e1);
void gateBlockScalar(const GateArgs& a, int t0, int t1, int e0, int e1);
void gateBlockAvx2(const GateArgs& a, int t0, int t1, int e0, int e1);
void gateBlockAvx512(const GateArgs& a, int t0, int t1, int e0, int e1);
// The block kernel for HETMOE_ISA (or the best level): scalar, AVX2, or AVX-512 for every level
// from avx512 up. Throws std::runtime_error like resolveIsa for a level this CPU lacks.
GateBlockFn gateBlockFor(Isa isa);
GateBlockFn gateBlockForEnv();

// Index of the first NaN or ±Inf among x[0..n), else -1.
int64_t firstNonFinite(const float* x, int64_t n);

// out[t] = Σ_{k<K} rows[t*K + k] (+ g[t] · Σ_{s<S} shared[s*T + t]), rows of D floats, fp32, in
// that order (so results never depend on which backend finished first). g == nullptr: 1.
// Tokens [t0, t1) only (the blocks of a combine crew job, gate_job.h); T is the shared blocks' stride.
void combineRows(const float* rows, const float* shared, int S, float* out, int T, int K, int D, const float* g, int t0, int t1);
inline void combineRows(const float* rows, const float* shared, int S, float* out, int T, int K, int D, const float* g) {
  combineRows(rows, shared, S, out, T, K, D, g, 0, T);
}

namespace {  // internal linkage: included by files built with different ISA flags

// Finishes one logit from its eight lane sums: the tail j in [D8, D) joins a_0 in ascending j, then
// the fixed reduction tree (router_math.h, above).
inline double gateFinish(double a[8], const float* w, const float* h, int D8, int D) {
  for (int j = D8; j < D; ++j) a[0] += double(w[j]) * double(h[j]);
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

}  // namespace
}  // namespace cpu
}  // namespace hetmoe
