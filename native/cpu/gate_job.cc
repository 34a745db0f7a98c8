// The gate GEMM as a crew job (layout and protocol: gate_job.h).
#include "cpu/gate_job.h"

#include <sched.h>

#include <stdexcept>
#include <string>

#include "addon/weights_map.h"
#include "cpu/crew.h"
#include "cpu/futex.h"
#include "cpu/parallel_scan.h"
#include "cpu/router_math.h"

namespace hetmoe {
namespace cpu {
namespace {

constexpr int64_t kDeathCheckMicros = 1000;
// Combines reading at least this many floats (16 MiB: ~0.5 ms on one thread) wake sleeping workers.
constexpr int64_t kCombineWakeFloats = int64_t(1) << 22;

enum Word { gMagic = 0, gAbort = 1, gNext = 2, gDone = 3, gT = 4, gBlocks = 5, gE = 6, gWeights = 7, gD = 8, gTpb = 9, gEpb = 10, gIsa = 11, gDie = 12,
            gKind = 13, gHidden = 16, gWeight = 18, gLogits = 20,
            // the combine (gKind == kCombineKind): K in gE's place, S in gEpb's; raw addresses from word 16
            cK = 6, cS = 10, cRows = 16, cShared = 18, cScale = 20, cOut = 22 };
constexpr int32_t kGateKind = 0;
constexpr int32_t kCombineKind = 1;

[[noreturn]] void bad(const std::string& what) { throw std::runtime_error("gate job: " + what); }

uint64_t u64(const int32_t* w) { return uint64_t(uint32_t(w[0])) | (uint64_t(uint32_t(w[1])) << 32); }

struct CombineArgs {
  const float* rows;
  const float* shared;  // nullptr when S == 0
  const float* scale;   // nullptr: 1
  float* out;
  int K, S, D;
};

struct GateJob {
  int32_t* hdr;
  int32_t kind;
  GateArgs args;       // kGateKind
  CombineArgs combine; // kCombineKind
  int T, E, tpb, epb, eBlocks, numBlocks;
  GateBlockFn fn;
};

template <class T>
T* address(const int32_t* w) { return reinterpret_cast<T*>(static_cast<uintptr_t>(u64(w))); }

// The combine's blocks are token ranges; its buffers are raw addresses written by combineJobRun on the
// calling thread, which holds them for the whole job (no JavaScript writes them).
GateJob parseCombine(int32_t* h) {
  GateJob j{};
  j.hdr = h;
  j.kind = kCombineKind;
  j.T = h[gT];
  j.tpb = h[gTpb];
  j.eBlocks = 1;
  j.combine.K = h[cK];
  j.combine.S = h[cS];
  j.combine.D = h[gD];
  if (j.T <= 0 || j.tpb <= 0 || j.combine.K <= 0 || j.combine.S < 0 || j.combine.D <= 0) bad("combine header fields out of range");
  j.numBlocks = (j.T + j.tpb - 1) / j.tpb;
  if (h[gBlocks] != j.numBlocks) bad("the block count does not match T and the block size");
  j.combine.rows = address<const float>(h + cRows);
  j.combine.shared = address<const float>(h + cShared);
  j.combine.scale = address<const float>(h + cScale);
  j.combine.out = address<float>(h + cOut);
  if (!j.combine.rows || !j.combine.out || (j.combine.S > 0 && !j.combine.shared)) bad("the combine's buffers are not set");
  return j;
}

GateJob parse(uint8_t* arena, size_t arenaBytes, size_t desc) {
  if (desc > arenaBytes || arenaBytes - desc < kGateWords * 4 || desc % 8 != 0) bad("the descriptor lies outside the arena");
  int32_t* h = reinterpret_cast<int32_t*>(arena + desc);
  if (h[gMagic] != kGateMagic) bad("no gate job at offset " + std::to_string(desc));
  if (h[gKind] == kCombineKind) return parseCombine(h);
  if (h[gKind] != kGateKind) bad("unknown job kind " + std::to_string(h[gKind]));
  GateJob j{};
  j.hdr = h;
  j.kind = kGateKind;
  j.T = h[gT];
  j.E = h[gE];
  const int D = h[gD];
  j.tpb = h[gTpb];
  j.epb = h[gEpb];
  if (j.T <= 0 || j.E <= 0 || D <= 0 || j.tpb <= 0 || j.epb <= 0 || h[gIsa] < 0 || h[gIsa] >= kIsaCount) bad("header fields out of range");
  j.eBlocks = (j.E + j.epb - 1) / j.epb;
  j.numBlocks = ((j.T + j.tpb - 1) / j.tpb) * j.eBlocks;
  if (h[gBlocks] != j.numBlocks) bad("the block count does not match T, E and the block sizes");
  const Isa isa = static_cast<Isa>(h[gIsa]);
  std::string why;
  if (!isaAvailable(isa, &why)) bad(std::string("this CPU lacks ") + why);
  j.fn = gateBlockFor(isa);
  const MappedWeights mw = weightsById(h[gWeights]);
  if (!mw.data) bad("weights id " + std::to_string(h[gWeights]) + " is not mapped");
  const uint64_t wOff = u64(h + gWeight), wBytes = uint64_t(j.E) * D * 4;
  if (wOff > mw.bytes || wBytes > mw.bytes - wOff || wOff % 4) bad("the gate weight lies outside the weights file");
  const uint64_t xOff = u64(h + gHidden), xBytes = uint64_t(j.T) * D * 4;
  if (xOff > arenaBytes || xBytes > arenaBytes - xOff || xOff % 4) bad("hidden lies outside the arena");
  const uint64_t lOff = u64(h + gLogits), lBytes = uint64_t(j.T) * j.E * 8;
  if (lOff > arenaBytes || lBytes > arenaBytes - lOff || lOff % 8) bad("logits lie outside the arena");
  j.args = GateArgs{reinterpret_cast<const float*>(arena + xOff), reinterpret_cast<const float*>(mw.data + wOff), D, j.E,
                    reinterpret_cast<double*>(arena + lOff)};
  return j;
}

// Claims and computes blocks until none is left or abort; -1: the test hook says die now, holding a
// claimed block.
int32_t run(GateJob& j, bool testHooks) {
  int32_t mine = 0;
  for (;;) {
    if (atomicAt(j.hdr + gAbort).load(std::memory_order_acquire)) break;
    const int32_t b = atomicAt(j.hdr + gNext).fetch_add(1, std::memory_order_acq_rel);
    if (b >= j.numBlocks) break;
    if (testHooks) {
      int32_t d = atomicAt(j.hdr + gDie).load(std::memory_order_acquire);
      while (d > 0 && !atomicAt(j.hdr + gDie).compare_exchange_weak(d, d - 1, std::memory_order_acq_rel)) {
      }
      if (d > 0) return -1;
    }
    const int t0 = (b / j.eBlocks) * j.tpb, t1 = t0 + j.tpb < j.T ? t0 + j.tpb : j.T;
    if (j.kind == kCombineKind) {
      const CombineArgs& c = j.combine;
      combineRows(c.rows, c.shared, c.S, c.out, j.T, c.K, c.D, c.scale, t0, t1);
    } else {
      const int e0 = (b % j.eBlocks) * j.epb;
      j.fn(j.args, t0, t1, e0, e0 + j.epb < j.E ? e0 + j.epb : j.E);
    }
    atomicAt(j.hdr + gDone).fetch_add(1, std::memory_order_acq_rel);
    ++mine;
  }
  return mine;
}

}  // namespace

void checkGateJob(uint8_t* arena, size_t arenaBytes, size_t desc) { parse(arena, arenaBytes, desc); }

int32_t runGateJob(uint8_t* arena, size_t arenaBytes, size_t desc, bool testHooks) {
  GateJob j = parse(arena, arenaBytes, desc);
  return run(j, testHooks);
}

namespace {

// Posts the parsed job, computes blocks on this thread, waits for all of them and for every worker
// to leave: -1, or kGateWorkerDied (the other workers have left, the board is free).
int64_t runPosted(GateJob& j, uint8_t* arena, size_t arenaBytes, size_t board, size_t desc, bool wake) {
  atomicAt(j.hdr + gAbort).store(0, std::memory_order_seq_cst);
  atomicAt(j.hdr + gNext).store(0, std::memory_order_seq_cst);
  atomicAt(j.hdr + gDone).store(0, std::memory_order_seq_cst);
  crewPost(arena, arenaBytes, board, desc, wake);
  run(j, false);
  // The other blocks were claimed by workers that are computing them now (a few µs each); yield
  // after a while in case one of them shares this core. A worker that died holding a block would
  // leave this wait hanging (the runtime learns of deaths on this thread's event loop): every
  // kDeathCheckMicros look for one; if one died, stop the others and let the caller compute the
  // whole job itself.
  int64_t nextCheck = 0;
  for (int i = 0; atomicAt(j.hdr + gDone).load(std::memory_order_acquire) < j.numBlocks; ++i) {
    if (i < 20000) {
      __builtin_ia32_pause();
      continue;
    }
    sched_yield();
    if ((i & 63) != 0) continue;
    const int64_t t = nowMicros();
    if (nextCheck == 0) nextCheck = t + kDeathCheckMicros;
    if (t < nextCheck) continue;
    nextCheck = t + kDeathCheckMicros;
    if (crewWorkerDied(arena, arenaBytes, board)) {
      atomicAt(j.hdr + gAbort).store(1, std::memory_order_seq_cst);
      while (!crewRetireLive(arena, arenaBytes, board, 1000)) sched_yield();
      return kGateWorkerDied;
    }
  }
  while (!crewRetire(arena, arenaBytes, board, 1000)) sched_yield();
  return -1;
}

void put64(int32_t* w, uint64_t v) {
  w[0] = int32_t(uint32_t(v));
  w[1] = int32_t(uint32_t(v >> 32));
}

}  // namespace

int64_t gateJobRun(uint8_t* arena, size_t arenaBytes, size_t board, size_t desc) {
  GateJob j = parse(arena, arenaBytes, desc);
  if (j.kind != kGateKind) bad("not a gate GEMM at offset " + std::to_string(desc));
  const int64_t r = runPosted(j, arena, arenaBytes, board, desc, true);
  return r == kGateWorkerDied ? r : checkLogits(j.args.logits, int64_t(j.T) * j.E, j.args.x, int64_t(j.T) * j.args.D);
}

int64_t combineJobRun(uint8_t* arena, size_t arenaBytes, size_t board, size_t desc, const float* rows, const float* shared, int S,
                      float* out, int T, int K, int D, const float* scale, int tokensPerBlock, int32_t dieCount) {
  if (desc > arenaBytes || arenaBytes - desc < kGateWords * 4 || desc % 8 != 0) bad("the descriptor lies outside the arena");
  if (T <= 0 || K <= 0 || D <= 0 || S < 0 || tokensPerBlock <= 0) bad("combine sizes out of range");
  int32_t* h = reinterpret_cast<int32_t*>(arena + desc);
  for (int i = 0; i < kGateWords; ++i) h[i] = 0;
  h[gT] = T;
  h[gBlocks] = (T + tokensPerBlock - 1) / tokensPerBlock;
  h[gD] = D;
  h[gTpb] = tokensPerBlock;
  h[cK] = K;
  h[cS] = S;
  h[gDie] = dieCount;
  h[gKind] = kCombineKind;
  put64(h + cRows, reinterpret_cast<uintptr_t>(rows));
  put64(h + cShared, reinterpret_cast<uintptr_t>(S > 0 ? shared : nullptr));
  put64(h + cScale, reinterpret_cast<uintptr_t>(scale));
  put64(h + cOut, reinterpret_cast<uintptr_t>(out));
  h[gMagic] = kGateMagic;
  GateJob j = parse(arena, arenaBytes, desc);
  // Sleeping workers are woken only for sums worth their wake-ups (each a futex call on this thread):
  // a decode step's combine is a few µs, and spinning workers come without one.
  return runPosted(j, arena, arenaBytes, board, desc, int64_t(T) * (K + S) * D >= kCombineWakeFloats);
}

}  // namespace cpu
}  // namespace hetmoe
