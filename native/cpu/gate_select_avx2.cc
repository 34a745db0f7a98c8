// gate_select_lanes.h's exp on four lanes (AVX2).
#include <immintrin.h>

#include "cpu/gate_select_lanes.h"

namespace hetmoe {
namespace cpu {

void expShiftedAvx2(const double* x, double sub, double* out, int n) {
  expShiftedLanes<4, V4d, V4l>(x, sub, out, n, [](auto v) { return decltype(v)(_mm256_round_pd(__m256d(v), _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC)); });
}

}  // namespace cpu
}  // namespace hetmoe
