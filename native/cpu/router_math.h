// The per-layer arithmetic around the experts that the runtime used to do in JavaScript: the gate's
// logits, the finiteness check of hidden states, and the top-k combine. At a real model's width
// these loops cost 15 µs - 2.5 ms a layer in JavaScript (mixtral's gate at 16 tokens: 0.7 ms).
#pragma once
#include <cstdint>

namespace hetmoe {
namespace cpu {

// logits[t*E + e] = Σ_j W[e*D + j] · x[t*D + j] in float64, summed exactly as the JavaScript router
// (scheduler/route-gate.ts) sums: four partial sums a_{j mod 4} over j < 4⌊D/4⌋, the tail into a_0,
// then (a0 + a1) + (a2 + a3). Every float×float product is exact in float64, so an FMA rounds
// like a multiply then an add and the result is the same bits on every ISA and machine.
// Returns the index of the first non-finite value of x (nothing computed), else -1.
int64_t gateLogits(const float* x, const float* W, int T, int D, int E, double* logits);
void gateLogitsScalar(const float* x, const float* W, int T, int D, int E, double* logits);
void gateLogitsAvx2(const float* x, const float* W, int T, int D, int E, double* logits);

// Index of the first NaN or ±Inf among x[0..n), else -1.
int64_t firstNonFinite(const float* x, int64_t n);

// out[t] = Σ_{k<K} rows[t*K + k] (+ g[t] · Σ_{s<S} shared[s*T + t]), rows of D floats, fp32, in
// that order (so results never depend on which backend finished first). g == nullptr: 1.
void combineRows(const float* rows, const float* shared, int S, float* out, int T, int K, int D, const float* g);

}  // namespace cpu
}  // namespace hetmoe
