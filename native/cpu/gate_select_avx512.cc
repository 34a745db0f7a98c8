// gate_select_lanes.h's exp on eight lanes (AVX-512). (The zero-masked round: GCC 12 warns of an
// uninitialised operand in the plain _mm512_roundscale_pd; with a full mask both are one vrndscalepd.)
#include <immintrin.h>

#include "cpu/gate_select_lanes.h"

namespace hetmoe {
namespace cpu {

void expShiftedAvx512(const double* x, double sub, double* out, int n) {
  expShiftedLanes<8, V8d, V8l>(x, sub, out, n, [](auto v) { return decltype(v)(_mm512_maskz_roundscale_pd(__mmask8(0xff), __m512d(v), _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC)); });
}

}  // namespace cpu
}  // namespace hetmoe
