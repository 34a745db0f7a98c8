// The gate's top-k and routing weights from its float64 logits, natively: what
// scheduler/route-gate.ts's #select does in JavaScript, to the bit. At a fine-grained gate's width
// (64 experts, 16 tokens) the JavaScript took 18-27 µs on the dev VM, most of it in 1024 calls of
// Math.exp for the softmax denominator; natively, with those exps in vector lanes, 6-9.
//
// Bits: the weights are float64 sums and quotients in the JavaScript's order, and exp is fdlibm's
// __ieee754_exp (the algorithm V8's Math.exp runs), ported in gate_select.cc and compiled without
// floating-point contraction, so that every machine and both paths give the same weights.
#pragma once
#include <cstdint>

#include "cpu/kernels.h"

namespace hetmoe {
namespace cpu {

// fdlibm's exp: the same double as V8's Math.exp for every input (test/router-math.test.ts checks
// millions), computed here so that no libm's exp decides a routing weight.
double fdlibmExp(double x);

// out[i] = fdlibmExp(x[i] - sub) for i < n, the same bits at every level: the vector levels compute
// arguments ≤ 0 in lanes (gate_select_lanes.h) and hand anything else to fdlibmExp.
using ExpShiftedFn = void (*)(const double* x, double sub, double* out, int n);
void expShiftedScalar(const double* x, double sub, double* out, int n);
void expShiftedAvx2(const double* x, double sub, double* out, int n);
void expShiftedAvx512(const double* x, double sub, double* out, int n);
// For a level this CPU runs (resolveIsa): AVX-512 for every level from avx512 up.
ExpShiftedFn expShiftedFor(Isa isa);

// Selection arrays (scheduler/selection.ts) for T tokens routed to their top K of E experts by
// `logits` (float64 [T × E], finite): counts[E], offsets[E + 1], and tokenRows / outRows / scales
// [T·K], expert by expert, tokens ascending. Ties go to the lower expert index; the chosen weights
// are softmax probabilities, renormalised over the K when `normalize`. Returns T·K. The softmax
// denominator's exps run at HETMOE_ISA's level (or the best), summed in expert order.
int64_t gateSelect(const double* logits, int T, int E, int K, bool normalize, int32_t* counts, int32_t* offsets, int32_t* tokenRows,
                   int32_t* outRows, float* scales);

}  // namespace cpu
}  // namespace hetmoe
