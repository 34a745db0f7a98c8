// The finiteness check of a large batch's hidden states on several threads. One Xeon core reads
// ~7 GB/s, and 4096 tokens at D=2048 are 32 MiB a layer: 5 ms on one thread, most of the route stage
// and more than the GPU's whole share of the layer.
#pragma once
#include <cstdint>

namespace hetmoe {
namespace cpu {

// Same result as firstNonFinite (router_math.h): the index of the first NaN or ±Inf, else -1.
// Below a few MiB it is firstNonFinite itself (starting threads would cost more than they save).
int64_t firstNonFiniteParallel(const float* x, int64_t n);

}  // namespace cpu
}  // namespace hetmoe
