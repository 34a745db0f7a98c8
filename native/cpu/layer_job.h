// The per-layer CPU job: every worker thread joins one job; blocks of (expert x kRowsPerBlock
// output rows) are claimed from an atomic counter in a descriptor that lives in the shared arena.
//
// Descriptor layout (produced by runtime/cpu-layer-job.ts, encodeCpuLayerJob; consumed here).
// All words are int32, little-endian; a "64-bit" field is two words (low, high), an unsigned byte
// offset. Offsets marked (arena) are into the arena's SharedArrayBuffer; (weights) into the mapped
// weights file `weightsId`.
//
//   header, kHeaderWords words at the descriptor's offset (8-byte aligned):
//     0 magic kJobMagic           1 abort: 0 = run, 1 = stop claiming and return (set by the runtime)
//     2 next: claim counter       3 doneBlocks: blocks finished (atomic)
//     4 numExperts                5 numBlocks (phase 1 blocks first, then phase 2)
//     6 numBlocks1                7 weightsId
//     8 ffn: 0 swiglu, 1 gelu     9 D (hidden size)     10 F (ffn size)
//    11 isa: -1 = HETMOE_ISA or the best level, else cpu::Isa
//    12 dieCount: test hook (only with HETMOE_TEST_HOOKS=1 in the worker): a worker that claims a
//       block while dieCount > 0 decrements it and dies holding the block
//    13 hiddenRows T              14 rowsPerBlock (a multiple of 32)
//    15 generation: bumped by every reset (diagnostics)
//    16-17 hidden (arena, fp32 [T x D])   18-19 out (arena, fp32 [* x D])
//    20-21 experts table (arena)           22-23 blocks table (arena)
//    24 outRowsTotal: rows of `out` (bounds checks)
//    25 doneWaiters: threads sleeping on doneBlocks (waitLayerJob), so finishers skip the wake otherwise
//    26 crew: 1 once posted to a crew (set by crew.cc, 0 from the encoder)
//    27 maxEntered: the most workers of the crew that may go into the job (0: any; crew.cc)   28-29 the crew's board
//       offset (arena): a thread waiting long on another's block checks that board for dead workers
//    30 entered: workers of the crew that went into the job (diagnostics, crew.cc)
//   expert record e, kExpertWords words at experts + e * 4 * kExpertWords:
//     0 n tokens    1 first phase-1 block   2 phase-1 blocks   3 first phase-2 block   4 phase-2 blocks
//       (informational: blocks are numbered round-robin over experts, the block table is what counts)
//     5 done1: phase-1 blocks finished (atomic; phase 2 of this expert waits for == phase-1 blocks)
//     6 packState: 0 none, 1 packing, 2 packed (AMX activations, packed once per expert)
//     7 waiters: threads sleeping on done1/packState (so finishers skip the wake syscall otherwise)
//     8 flags: bit 0 = scales present, bit 1 = gate present (SwiGLU)
//     10-11 tokenRows (arena, int32 [n])   12-13 outRows (arena, int32 [n])   14-15 scales (arena, f32 [n])
//     16-17 h (arena, fp32 [n x F])        18-19 xPacked (arena, bf16, amxPackedElems(n, D))
//     20-21 hPacked (arena, bf16, amxPackedElems(n, F))
//     24.. 3 matrices (gate, up, down), kMatrixWords each: format, dtype, rows, cols,
//          values 64 (weights), meta 64 (weights), select 64 (weights)
//   block b, 4 words at blocks + b * 16: state (0 free, 1 claimed, 2 done), expert, row0, phase (1|2)
//
// Protocol. A thread loops: if abort, return; b = next++; if b >= numBlocks, return; CAS state
// free -> claimed (a block done by an earlier run is skipped); run it; state = done. Phase 1 of
// expert e (rows of F): gate/up + activation into h (or hPacked); phase 2 (rows of D): down from h,
// `out[outRows[i]][r] = scales[i] * y` (overwrite). A phase-2 block waits for done1[e]: every
// phase-1 block has a smaller index, so it was claimed before any phase-2 block was, by a thread
// that is running it now. So one thread alone finishes the whole job, there is no fixed-participant
// barrier, and a wait can only hang on a dead thread, which is what abort is for (waits sleep on a
// futex with a short timeout and re-check abort). Blocks are idempotent: after a worker died, the
// runtime resets claimed blocks to free (resetLayerJob) and runs the job again; done blocks stay.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace hetmoe {
namespace cpu {

constexpr int32_t kJobMagic = 0x314a4d48;  // "HMJ1"
constexpr int kHeaderWords = 32;
// Header words counting the crew's workers that went into the job (30), and the most that may (27;
// 0: any). A reset (a rerun after a death) starts the count again.
constexpr int kEnteredWord = 30;
constexpr int kMaxEnteredWord = 27;
constexpr int kExpertWords = 64;
constexpr int kMatrixWords = 10;
constexpr int kBlockWords = 4;

enum class JobStatus : int32_t { Done = 0, Aborted = 1, Die = 2 };

struct JobRunResult {
  JobStatus status = JobStatus::Done;
  int32_t blocks = 0;  // blocks this thread ran
};

// Runs the job at arena[descOffset] on the calling thread until no block is left (or abort).
// Throws std::runtime_error for a malformed descriptor (bad offsets, unknown weights id, ...).
JobRunResult runLayerJob(uint8_t* arena, size_t arenaBytes, size_t descOffset, bool testHooks);
// Parses the descriptor as runLayerJob would, running nothing (throws what runLayerJob would throw).
void checkLayerJob(uint8_t* arena, size_t arenaBytes, size_t descOffset);
// runLayerJob that calls `opened` between parsing (which may throw) and claiming the first block: the
// crew's join posts the job there, so the descriptor is parsed once and this thread claims at once.
// After each block it runs, it calls afterBlock(blocks this thread ran, claim counter).
JobRunResult runLayerJobOpened(uint8_t* arena, size_t arenaBytes, size_t descOffset, const std::function<void()>& opened,
                               const std::function<void(int32_t, int32_t)>& afterBlock);
// Puts claimed-but-not-done blocks back to free and clears the claim counter and abort flag
// (only while no thread runs the job). With `full`, every block, counter and packing state too.
void resetLayerJob(uint8_t* arena, size_t arenaBytes, size_t descOffset, bool full);

// Bench: runs the job `iters` times with `threads` std::threads (a full reset between runs); returns
// the seconds of each run.
void benchLayerJob(uint8_t* arena, size_t arenaBytes, size_t descOffset, int threads, int iters, double* seconds);

// Streams through `bytes` of memory with `threads` threads, `iters` times; returns GB/s per pass.
void readBandwidth(size_t bytes, int threads, int iters, double* gbps);

}  // namespace cpu
}  // namespace hetmoe
