// The gate's logits as a crew job (router_math.h has the arithmetic): at larger T·E·D the main
// thread posts the gate GEMM to the CPU crew's workers, which are idle while it routes, and all of
// them claim blocks of (tokens × experts) from a counter. Every logit is computed by exactly one
// thread with the fixed order of router_math.h, so the bits do not depend on the thread count.
//
// Descriptor (int32 words in the arena, 64-byte aligned; written by runtime/cpu-crew.ts):
//   0 magic kGateMagic    1 abort: set when a worker died (the others stop claiming)   2 next: claim counter
//   3 done: blocks finished   4 T   5 numBlocks   6 E   7 weightsId   8 D
//   9 tokens per block    10 experts per block    11 isa (cpu::Isa)
//   12 dieCount: test hook (HETMOE_TEST_HOOKS=1 in the worker), as layer jobs' word 12
//   16-17 hidden (arena, fp32 [T × D])   18-19 gate weight (weights file `weightsId`, fp32 [E × D])
//   20-21 logits (arena, f64 [T × E])
//   13 kind: 0 the gate GEMM (above), 1 the top-k combine (router_math.h: combineRows), whose blocks
//      are token ranges and whose words are 4 T, 5 numBlocks, 6 K, 8 D, 9 tokens per block, 10 S,
//      16-17 rows, 18-19 shared (0 when S = 0), 20-21 the shared experts' scale (0: 1), 22-23 out.
//      The combine's four are raw addresses, written by combineJobRun on the calling thread, which
//      holds those buffers until every block is done: its `out` need not lie in the arena.
// Block b covers token block b / ceil(E / epb) and expert block b % ceil(E / epb). Words 2 and 5 sit
// where a layer job has its claim counter and block count, so the crew's "anything left to claim"
// test reads both kinds alike.
#pragma once
#include <cstddef>
#include <cstdint>

namespace hetmoe {
namespace cpu {

constexpr int32_t kGateMagic = 0x31474d48;  // "HMG1"
constexpr int kGateWords = 32;

// Parses the descriptor (throws std::runtime_error naming what is wrong), runs nothing.
void checkGateJob(uint8_t* arena, size_t arenaBytes, size_t desc);
// Claims and computes blocks until none is left (or abort); returns the blocks this thread computed,
// or -1 when the test hook (testHooks and dieCount > 0) says the calling worker must die now.
int32_t runGateJob(uint8_t* arena, size_t arenaBytes, size_t desc, bool testHooks);
// gateJobRun's answer when a worker died inside the job: the logits are incomplete, the other
// workers have left and the board is free; compute the logits on this thread.
constexpr int64_t kGateWorkerDied = -2;
// Main side: posts the job to the crew on `board`, computes blocks, and waits for every block and for
// every worker to leave the job; then -1, or checkLogits's answer for a non-finite logit (the first
// non-finite hidden value's index, or kGateWeightNotFinite); kGateWorkerDied (above). The board must
// be free (no layer job posted).
int64_t gateJobRun(uint8_t* arena, size_t arenaBytes, size_t board, size_t desc);
// Main side of the combine: writes the descriptor at `desc`, posts it, computes blocks of
// `tokensPerBlock` tokens, waits for every block and worker as gateJobRun does; -1 when `out` holds
// the sums, kGateWorkerDied when a worker died (some rows not summed: sum them on this thread).
// `dieCount` is the test hook of word 12.
int64_t combineJobRun(uint8_t* arena, size_t arenaBytes, size_t board, size_t desc, const float* rows, const float* shared, int S,
                      float* out, int T, int K, int D, const float* scale, int tokensPerBlock, int32_t dieCount);

}  // namespace cpu
}  // namespace hetmoe
