// The finiteness check of a batch's hidden states (every RRE route and gate GEMM starts with it). 4096
// tokens at D=2048 are 32 MiB a layer: one Xeon core reads ~7 GB/s, so one thread would take 5 ms.
#pragma once
#include <cstdint>

namespace hetmoe {
namespace cpu {

// Same result as firstNonFinite (router_math.h): the index of the first NaN or ±Inf, else -1. Small
// arrays are scanned on the calling thread with the widest vectors the CPU has; large ones in chunks
// shared with a pool of threads started on first use (they sleep between scans).
int64_t firstNonFiniteParallel(const float* x, int64_t n);

// The fewest floats a scan shares with the pool (HETMOE_SCAN_PARALLEL_MIN; 0: never shared).
int64_t scanPoolMinFloats();

}  // namespace cpu
}  // namespace hetmoe
