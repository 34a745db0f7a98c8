// fdlibm's exp (gate_select.cc: fdlibmExp) over N lanes at once, for arguments ≤ 0 (a softmax's
// l − max): the same operations in the same order on every lane, branches turned into selects, so
// each lane rounds as the scalar code does and the results are its bits. Included by
// gate_select_avx2.cc and gate_select_avx512.cc, each built for its ISA without FP contraction.
#pragma once
#include <cstdint>
#include <cstring>

#include "cpu/gate_select.h"

namespace hetmoe {
namespace cpu {
namespace {  // internal linkage: included by files built with different ISA flags

// N doubles and N int64 (GCC vector types: GCC ignores a vector_size that depends on a template argument).
typedef double V4d __attribute__((vector_size(32)));
typedef int64_t V4l __attribute__((vector_size(32)));
typedef double V8d __attribute__((vector_size(64)));
typedef int64_t V8l __attribute__((vector_size(64)));

// vd, vl: N doubles and N int64; trunc(v): v rounded toward zero, lane by lane (the ISA's round
// instruction).
template <int N, typename vd, typename vl, typename Trunc>
void expShiftedLanes(const double* x, double sub, double* out, int n, Trunc trunc) {
  const double kMagic = 6755399441055744.0;  // 2^52 + 2^51: k + kMagic holds k in its low bits
  int i = 0;
  for (; i + N <= n; i += N) {
    vd v;
    std::memcpy(&v, x + i, sizeof v);
    v = v - sub;
    vl nonPositive = v <= 0.0;
    bool all = true;
    for (int j = 0; j < N; ++j) all &= nonPositive[j] != 0;
    if (!all) {  // a positive or NaN argument: the scalar code (never the case for l − max)
      for (int j = 0; j < N; ++j) out[i + j] = fdlibmExp(v[j]);
      continue;
    }
    const vl bits = (vl)v;
    const vl hx = (bits >> 32) & 0x7fffffff;
    const vl under = v < -7.45133219101941108420e+02;  // exp underflows to 0 (and -Inf)
    const vl tiny = hx < 0x3e300000;                    // |x| < 2^-28: 1 + x
    const vl reduce = hx > 0x3fd62e42;                  // |x| > 0.5 ln2: x = k ln2 + r
    const vl oneStep = hx < 0x3ff0a2b2;                 // and |x| < 1.5 ln2: k = -1
    const vd kGeneral = trunc(1.44269504088896338700e+00 * v - 0.5);
    const vd zero{};
    const vd k = reduce ? (oneStep ? zero - 1.0 : kGeneral) : zero;
    const vd hi = v - k * 6.93147180369123816490e-01;  // exact: ln2HI's low 21 bits are zero
    const vd lo = k * 1.90821492927058770002e-10;
    const vd r = hi - lo;                               // k = 0: x itself
    const vd t = r * r;
    const vd c = r - t * (1.66666666666666019037e-01 + t * (-2.77777777770155933842e-03 + t * (6.61375632143793436117e-05 + t * (-1.65339022054652515390e-06 + t * 4.13813679705723846039e-08))));
    // (r·c)/(2 − c) is exactly −q: c − 2 and 2 − c are each other's negation, and so are the quotients.
    const vd q = (r * c) / (c - 2.0);
    const vd y0 = 1.0 - (q - r);
    const vd y1 = 1.0 - ((lo + q) - hi);
    // 2^k built in the exponent field (2^(k+1000), then × 2^-1000, below the normal range).
    const vl ki = (vl)(k + kMagic) - (vl)(zero + kMagic);
    const vl low = ki < -1021;
    const vd twopk = (vd)(((low ? ki + 1000 : ki) + 1023) << 52);
    const vd scale = low ? zero + 9.33263618503218878990e-302 : zero + 1.0;
    const vd yk = (y1 * twopk) * scale;
    const vd res = under ? zero : tiny ? 1.0 + v : (k == 0.0 ? y0 : yk);
    std::memcpy(out + i, &res, sizeof res);
  }
  for (; i < n; ++i) out[i] = fdlibmExp(x[i] - sub);
}

}  // namespace
}  // namespace cpu
}  // namespace hetmoe
