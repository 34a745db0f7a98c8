// Gate top-k and weights (gate_select.h). Built with -ffp-contract=off (CMakeLists.txt): an FMA
// here would round differently from the JavaScript it must match.
#include "cpu/gate_select.h"

#include <cmath>
#include <cstring>
#include <vector>

namespace hetmoe {
namespace cpu {
namespace {

double fromWords(uint32_t hi, uint32_t lo) {
  const uint64_t bits = (uint64_t(hi) << 32) | lo;
  double d;
  std::memcpy(&d, &bits, sizeof d);
  return d;
}

uint32_t highWord(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return uint32_t(bits >> 32);
}

// fdlibm e_exp.c's constants (Sun Microsystems, 1993), as V8's base/ieee754.cc has them.
constexpr double kOThreshold = 7.09782712893383973096e+02;
constexpr double kUThreshold = -7.45133219101941108420e+02;
constexpr double kLn2Hi[2] = {6.93147180369123816490e-01, -6.93147180369123816490e-01};
constexpr double kLn2Lo[2] = {1.90821492927058770002e-10, -1.90821492927058770002e-10};
constexpr double kInvLn2 = 1.44269504088896338700e+00;
constexpr double kHalf[2] = {0.5, -0.5};
constexpr double kP1 = 1.66666666666666019037e-01;
constexpr double kP2 = -2.77777777770155933842e-03;
constexpr double kP3 = 6.61375632143793436117e-05;
constexpr double kP4 = -1.65339022054652515390e-06;
constexpr double kP5 = 4.13813679705723846039e-08;
constexpr double kE = 2.718281828459045;  // V8 returns Math.E for exp(1)

}  // namespace

double fdlibmExp(double x) {
  uint32_t hx = highWord(x);
  const int xsb = int(hx >> 31);
  hx &= 0x7fffffff;
  if (hx >= 0x40862E42) {  // |x| >= 709.78...: overflow, underflow, Inf or NaN
    if (hx >= 0x7ff00000) {
      if (x != x) return x + x;
      return xsb == 0 ? x : 0.0;
    }
    if (x > kOThreshold) return HUGE_VAL;
    if (x < kUThreshold) return 0.0;
  }
  double hi = 0, lo = 0;
  int k = 0;
  if (hx > 0x3fd62e42) {  // |x| > 0.5 ln2: x = k ln2 + r, |r| <= 0.5 ln2
    if (hx < 0x3FF0A2B2) {  // and |x| < 1.5 ln2
      if (x == 1.0) return kE;
      hi = x - kLn2Hi[xsb];
      lo = kLn2Lo[xsb];
      k = 1 - xsb - xsb;
    } else {
      k = int(kInvLn2 * x + kHalf[xsb]);
      const double t = k;
      hi = x - t * kLn2Hi[0];  // exact: ln2HI's low 21 bits are zero
      lo = t * kLn2Lo[0];
    }
    x = hi - lo;
  } else if (hx < 0x3e300000) {  // |x| < 2^-28
    return 1.0 + x;
  }
  const double t = x * x;
  // 2^k (or 2^(k+1000) below the normal range), its exponent field built directly.
  const double twopk = fromWords(0x3ff00000u + (uint32_t(k >= -1021 ? k : k + 1000) << 20), 0);
  const double c = x - t * (kP1 + t * (kP2 + t * (kP3 + t * (kP4 + t * kP5))));
  if (k == 0) return 1.0 - ((x * c) / (c - 2.0) - x);
  const double y = 1.0 - ((lo - (x * c) / (2.0 - c)) - hi);
  if (k >= -1021) {
    if (k == 1024) return y * 2.0 * fromWords(0x7fe00000, 0);
    return y * twopk;
  }
  return y * twopk * fromWords(0x01700000, 0);  // 2^-1000
}

void expShiftedScalar(const double* x, double sub, double* out, int n) {
  for (int i = 0; i < n; ++i) out[i] = fdlibmExp(x[i] - sub);
}

ExpShiftedFn expShiftedFor(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return expShiftedScalar;
    case Isa::Avx2: return expShiftedAvx2;
    case Isa::Avx512:
    case Isa::Avx512Bf16:
    case Isa::Amx: return expShiftedAvx512;
  }
  return expShiftedScalar;
}

int64_t gateSelect(const double* logits, int T, int E, int K, bool normalize, int32_t* counts, int32_t* offsets, int32_t* tokenRows,
                   int32_t* outRows, float* scales) {
  // Per token: the chosen experts kept ordered by (logit descending, index ascending); a later
  // expert displaces the last only with a strictly greater logit (ties to the lower index).
  thread_local std::vector<int32_t> chosen;
  thread_local std::vector<double> weight;
  const size_t rows = size_t(T) * K;
  if (chosen.size() < rows) chosen.resize(rows), weight.resize(rows);
  thread_local std::vector<double> terms;
  if (!normalize && terms.size() < size_t(E)) terms.resize(E);
  const ExpShiftedFn expShifted = normalize ? nullptr : expShiftedFor(resolveIsa(""));
  std::memset(counts, 0, sizeof(int32_t) * E);
  for (int t = 0; t < T; ++t) {
    const double* l = logits + int64_t(t) * E;
    int32_t* ch = chosen.data() + int64_t(t) * K;
    double* w = weight.data() + int64_t(t) * K;
    int n = 0;
    for (int e = 0; e < E; ++e) {
      const double v = l[e];
      if (n == K && !(v > w[K - 1])) continue;
      int p = n < K ? n++ : K - 1;
      for (; p > 0 && w[p - 1] < v; --p) {
        ch[p] = ch[p - 1];
        w[p] = w[p - 1];
      }
      ch[p] = e;
      w[p] = v;
    }
    const double max = w[0];
    double kept = 0;
    for (int k = 0; k < K; ++k) {
      const double p = k == 0 ? 1.0 : fdlibmExp(w[k] - max);
      w[k] = p;
      kept += p;
      ++counts[ch[k]];
    }
    double denom = kept;
    if (!normalize) {
      // The exps in lanes, their sum in expert order (the JavaScript's).
      expShifted(l, max, terms.data(), E);
      denom = 0;
      for (int e = 0; e < E; ++e) denom += terms[e];
    }
    for (int k = 0; k < K; ++k) w[k] /= denom;
  }
  int32_t sum = 0;
  for (int e = 0; e < E; ++e) {
    offsets[e] = sum;
    sum += counts[e];
  }
  offsets[E] = sum;
  // Counting sort by expert; `counts` is done, so the cursor runs in a scratch of its own.
  thread_local std::vector<int32_t> cursor;
  cursor.assign(offsets, offsets + E);
  for (int t = 0; t < T; ++t)
    for (int k = 0; k < K; ++k) {
      const int64_t slot = int64_t(t) * K + k;
      const int32_t i = cursor[chosen[slot]]++;
      tokenRows[i] = t;
      outRows[i] = int32_t(slot);
      scales[i] = float(weight[slot]);
    }
  return int64_t(rows);
}

}  // namespace cpu
}  // namespace hetmoe
