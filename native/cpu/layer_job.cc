// The per-layer CPU job (layout and protocol: layer_job.h). No ISA flags here: kernels are reached
// through the table of the level chosen at run time.
#include "cpu/layer_job.h"

#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

#include "addon/weights_map.h"
#include "cpu/crew.h"
#include "cpu/futex.h"
#include "cpu/kernels.h"

namespace hetmoe {
namespace cpu {

void* threadScratch(int slot, size_t bytes);  // kernels.cc

namespace {

constexpr int kWaitMicros = 2000;  // a sleeping waiter re-checks abort this often

enum Hdr { hMagic = 0, hAbort, hNext, hDone, hExperts, hBlocks, hBlocks1, hWeights, hFfn, hD, hF, hIsa, hDie, hT,
           hRowsPerBlock, hGeneration, hHidden = 16, hOut = 18, hExpertTable = 20, hBlockTable = 22, hOutRows = 24,
           hDoneWaiters = 25, hCrew = 26, hBoard = 28 };
enum Exp { eN = 0, eB1, eNb1, eB2, eNb2, eDone1, ePack, eWaiters, eFlags, eTokens = 10, eOutRows = 12, eScales = 14,
           eH = 16, eXPacked = 18, eHPacked = 20, eMatrices = 24 };

std::atomic<int32_t>& at(int32_t* w) { return atomicAt(w); }

uint64_t u64(const int32_t* w) { return static_cast<uint64_t>(static_cast<uint32_t>(w[0])) | (static_cast<uint64_t>(static_cast<uint32_t>(w[1])) << 32); }


struct Expert {
  int32_t* rec = nullptr;
  int32_t n = 0;
  const int32_t* tokens = nullptr;
  const int32_t* outRows = nullptr;
  const float* scales = nullptr;
  float* h = nullptr;
  uint16_t* xPacked = nullptr;
  uint16_t* hPacked = nullptr;
  bool hasGate = false;
  MatrixView gate, up, down;
  bool amx = false;
};

struct Job {
  uint8_t* arena = nullptr;
  size_t arenaBytes = 0;
  int32_t* hdr = nullptr;
  int32_t* blocks = nullptr;
  int32_t numBlocks = 0;
  int32_t D = 0, F = 0, T = 0, rowsPerBlock = 0;
  bool swiglu = true;
  const float* hidden = nullptr;
  float* out = nullptr;
  std::vector<Expert> experts;
  const KernelTable* k = nullptr;
};

[[noreturn]] void bad(const std::string& what) { throw std::runtime_error("cpu layer job: " + what); }

template <class T>
T* arenaPtr(uint8_t* arena, size_t arenaBytes, uint64_t off, uint64_t bytes, const char* what) {
  if (off > arenaBytes || bytes > arenaBytes - off) bad(std::string(what) + " lies outside the arena");
  if (off % alignof(T) != 0) bad(std::string(what) + " is misaligned");
  return reinterpret_cast<T*>(arena + off);
}

MatrixView matrix(const int32_t* w, const MappedWeights& mw, const char* what) {
  MatrixView m;
  if (w[0] < 0 || w[0] > 2 || w[1] < 0 || w[1] > 1) bad(std::string(what) + " has an unknown format or dtype");
  m.format = static_cast<WeightFormat>(w[0]);
  m.dtype = static_cast<WeightDtype>(w[1]);
  m.rows = w[2];
  m.cols = w[3];
  if (m.rows <= 0 || m.cols <= 0) bad(std::string(what) + " has no rows or columns");
  if (m.format != WeightFormat::Dense && m.cols % 16 != 0) bad(std::string(what) + ": sparse formats need cols % 16 == 0");
  if (m.format == WeightFormat::Sparse75 && m.rows % 2 != 0) bad(std::string(what) + ": 75% needs an even row count");
  const uint64_t el = m.dtype == WeightDtype::BF16 ? 2 : 4;
  const uint64_t srows = m.format == WeightFormat::Sparse75 ? m.rows / 2 : m.rows;
  const uint64_t vals = m.format == WeightFormat::Dense ? uint64_t(m.rows) * m.cols * el : srows * (m.cols / 2) * el;
  auto range = [&](int idx, uint64_t bytes, const char* part) -> const uint8_t* {
    const uint64_t off = u64(w + idx);
    if (off > mw.bytes || bytes > mw.bytes - off) bad(std::string(what) + " " + part + " lies outside the weights file");
    return mw.data + off;
  };
  m.values = range(4, vals, "values");
  if (m.format != WeightFormat::Dense) m.meta = reinterpret_cast<const uint32_t*>(range(6, srows * (m.cols / 16) * 4, "meta"));
  if (m.format == WeightFormat::Sparse75) m.select = range(8, srows * ((m.cols + kChunk75 - 1) / kChunk75), "select");
  return m;
}

Job parse(uint8_t* arena, size_t arenaBytes, size_t descOffset) {
  Job j;
  j.arena = arena;
  j.arenaBytes = arenaBytes;
  j.hdr = arenaPtr<int32_t>(arena, arenaBytes, descOffset, kHeaderWords * 4, "the descriptor");
  const int32_t* h = j.hdr;
  if (h[hMagic] != kJobMagic) bad("no job descriptor at offset " + std::to_string(descOffset));
  const int32_t ne = h[hExperts];
  j.numBlocks = h[hBlocks];
  j.D = h[hD];
  j.F = h[hF];
  j.T = h[hT];
  j.rowsPerBlock = h[hRowsPerBlock];
  j.swiglu = h[hFfn] == 0;
  if (ne < 0 || j.numBlocks < 0 || j.D <= 0 || j.F <= 0 || j.T < 0 || j.rowsPerBlock <= 0 || j.rowsPerBlock % 32)
    bad("header fields out of range");
  const MappedWeights mw = weightsById(h[hWeights]);
  if (!mw.data) bad("weights id " + std::to_string(h[hWeights]) + " is not mapped");
  const Isa isa = h[hIsa] < 0 ? resolveIsa("") : static_cast<Isa>(h[hIsa]);
  if (h[hIsa] >= kIsaCount) bad("unknown isa");
  std::string why;
  if (!isaAvailable(isa, &why)) bad(std::string("this CPU lacks ") + why + " for the " + isaName(isa) + " kernels");
  j.k = &kernels(isa);
  j.hidden = arenaPtr<float>(arena, arenaBytes, u64(h + hHidden), uint64_t(j.T) * j.D * 4, "hidden");
  j.out = arenaPtr<float>(arena, arenaBytes, u64(h + hOut), uint64_t(h[hOutRows]) * j.D * 4, "out");
  int32_t* et = arenaPtr<int32_t>(arena, arenaBytes, u64(h + hExpertTable), uint64_t(ne) * kExpertWords * 4, "the expert table");
  j.blocks = arenaPtr<int32_t>(arena, arenaBytes, u64(h + hBlockTable), uint64_t(j.numBlocks) * kBlockWords * 4, "the block table");
  j.experts.resize(ne);
  for (int32_t e = 0; e < ne; ++e) {
    Expert& x = j.experts[e];
    x.rec = et + e * kExpertWords;
    const int32_t* r = x.rec;
    x.n = r[eN];
    if (x.n < 0) bad("negative token count");
    const uint64_t n = x.n;
    x.tokens = arenaPtr<int32_t>(arena, arenaBytes, u64(r + eTokens), n * 4, "tokenRows");
    x.outRows = arenaPtr<int32_t>(arena, arenaBytes, u64(r + eOutRows), n * 4, "outRows");
    if (r[eFlags] & 1) x.scales = arenaPtr<float>(arena, arenaBytes, u64(r + eScales), n * 4, "scales");
    x.hasGate = (r[eFlags] & 2) != 0;
    if (x.hasGate != j.swiglu) bad("SwiGLU experts need a gate matrix and GeLU experts none");
    for (uint64_t i = 0; i < n; ++i) {
      if (x.tokens[i] < 0 || x.tokens[i] >= j.T) bad("tokenRows[" + std::to_string(i) + "] of expert " + std::to_string(e) + " is outside hidden");
      if (x.outRows[i] < 0 || x.outRows[i] >= h[hOutRows]) bad("outRows[" + std::to_string(i) + "] of expert " + std::to_string(e) + " is outside out");
    }
    if (x.hasGate) x.gate = matrix(r + eMatrices, mw, "gate");
    x.up = matrix(r + eMatrices + kMatrixWords, mw, "up");
    x.down = matrix(r + eMatrices + 2 * kMatrixWords, mw, "down");
    if (x.up.rows != j.F || x.up.cols != j.D || x.down.rows != j.D || x.down.cols != j.F ||
        (x.hasGate && (x.gate.rows != j.F || x.gate.cols != j.D)))
      bad("expert " + std::to_string(e) + " matrices do not match D x F");
    x.amx = useAmx(isa, x.n, x.up, x.down) && (!x.hasGate || x.gate.dtype == WeightDtype::BF16);
    x.h = arenaPtr<float>(arena, arenaBytes, u64(r + eH), n * j.F * 4, "h");
    x.xPacked = arenaPtr<uint16_t>(arena, arenaBytes, u64(r + eXPacked), x.amx ? amxPackedElems(x.n, j.D) * 2 : 0, "xPacked");
    x.hPacked = arenaPtr<uint16_t>(arena, arenaBytes, u64(r + eHPacked), x.amx ? amxPackedElems(x.n, j.F) * 2 : 0, "hPacked");
  }
  // Blocks are checked here, before any is claimed: a bad one found mid-run would leave a claimed
  // block that no thread finishes.
  for (int32_t b = 0; b < j.numBlocks; ++b) {
    const int32_t* blk = j.blocks + b * kBlockWords;
    const int32_t e = blk[1], r0 = blk[2], phase = blk[3];
    if (e < 0 || e >= ne) bad("block " + std::to_string(b) + " names an unknown expert");
    if ((phase != 1 && phase != 2) || r0 < 0 || r0 >= (phase == 1 ? j.F : j.D))
      bad("block " + std::to_string(b) + " has phase " + std::to_string(phase) + " and row " + std::to_string(r0));
  }
  return j;
}

// Sleeps until *word == want (or abort). Returns false on abort.
bool waitFor(Job& j, Expert& x, int32_t* word, int32_t want) {
  for (int spin = 0; spin < 4000; ++spin) {
    if (at(word).load(std::memory_order_acquire) == want) return true;
    __builtin_ia32_pause();
  }
  for (int round = 1;; ++round) {
    const int32_t v = at(word).load(std::memory_order_acquire);
    if (v == want) return true;
    if (at(j.hdr + hAbort).load(std::memory_order_acquire)) return false;
    // The runtime sets abort when it learns of a dead worker, on the main thread's event loop; if the
    // main thread itself waits here (it joined the job), nobody would: every ~10 ms, look for a
    // worker that died inside the job and abort it from here.
    if (round % 5 == 0 && j.hdr[hCrew] == 1 && crewWorkerDied(j.arena, j.arenaBytes, u64(j.hdr + hBoard))) {
      at(j.hdr + hAbort).store(1, std::memory_order_seq_cst);
      return false;
    }
    at(x.rec + eWaiters).fetch_add(1, std::memory_order_acq_rel);
    futexWait(word, v, kWaitMicros);
    at(x.rec + eWaiters).fetch_sub(1, std::memory_order_acq_rel);
  }
}

void wake(Expert& x, int32_t* word) {
  if (at(x.rec + eWaiters).load(std::memory_order_acquire) > 0) futexWakeAll(word);
}

// Packs the expert's hidden rows for AMX once; other threads wait for the packer.
bool ensurePacked(Job& j, Expert& x) {
  int32_t* st = x.rec + ePack;
  int32_t expect = 0;
  if (at(st).compare_exchange_strong(expect, 1, std::memory_order_acq_rel)) {
    j.k->amxPack(j.hidden, j.D, x.tokens, x.n, j.D, x.xPacked);
    at(st).store(2, std::memory_order_release);
    wake(x, st);
    return true;
  }
  return waitFor(j, x, st, 2);
}

bool runPhase1(Job& j, Expert& x, int32_t r0) {
  const int32_t r1 = r0 + j.rowsPerBlock < j.F ? r0 + j.rowsPerBlock : j.F;
  if (x.n == 0) return true;
  if (x.amx) {
    if (!ensurePacked(j, x)) return false;
    AmxGateUpArgs a;
    a.gate = x.hasGate ? &x.gate : nullptr;
    a.up = &x.up;
    a.r0 = r0;
    a.r1 = r1;
    a.n = x.n;
    a.xPacked = x.xPacked;
    a.hPacked = x.hPacked;
    j.k->amxGateUp(a, j.swiglu);
    return true;
  }
  MatArgs m;
  m.r0 = r0;
  m.r1 = r1;
  m.n = x.n;
  m.x = j.hidden;
  m.ldx = j.D;
  m.xidx = x.tokens;
  const int32_t w = r1 - r0;
  if (j.swiglu) {
    m.w = &x.gate;
    m.y = x.h;
    m.ldy = j.F;
    j.k->matmul(m);
    float* u = static_cast<float*>(threadScratch(7, sizeof(float) * x.n * w));
    m.w = &x.up;
    m.y = u - r0;
    m.ldy = w;
    j.k->matmul(m);
    for (int32_t t = 0; t < x.n; ++t) j.k->swiglu(x.h + int64_t(t) * j.F + r0, u + int64_t(t) * w, w);
  } else {
    m.w = &x.up;
    m.y = x.h;
    m.ldy = j.F;
    j.k->matmul(m);
    for (int32_t t = 0; t < x.n; ++t) j.k->gelu(x.h + int64_t(t) * j.F + r0, w);
  }
  return true;
}

bool runPhase2(Job& j, Expert& x, int32_t r0) {
  const int32_t r1 = r0 + j.rowsPerBlock < j.D ? r0 + j.rowsPerBlock : j.D;
  if (!waitFor(j, x, x.rec + eDone1, x.rec[eNb1])) return false;
  if (x.n == 0) return true;
  if (x.amx) {
    AmxDownArgs a;
    a.down = &x.down;
    a.r0 = r0;
    a.r1 = r1;
    a.n = x.n;
    a.hPacked = x.hPacked;
    a.out = j.out;
    a.ldo = j.D;
    a.outRows = x.outRows;
    a.scales = x.scales;
    j.k->amxDown(a);
    return true;
  }
  MatArgs m;
  m.w = &x.down;
  m.r0 = r0;
  m.r1 = r1;
  m.n = x.n;
  m.x = x.h;
  m.ldx = j.F;
  m.y = j.out;
  m.ldy = j.D;
  m.yidx = x.outRows;
  m.yscale = x.scales;
  j.k->matmul(m);
  return true;
}

JobRunResult runParsed(Job& j, bool testHooks, const std::function<void(int32_t, int32_t)>* afterBlock = nullptr) {
  JobRunResult res;
  int32_t* h = j.hdr;
  for (;;) {
    if (at(h + hAbort).load(std::memory_order_acquire)) {
      res.status = JobStatus::Aborted;
      return res;
    }
    const int32_t b = at(h + hNext).fetch_add(1, std::memory_order_acq_rel);
    if (b >= j.numBlocks) return res;
    int32_t* blk = j.blocks + b * kBlockWords;
    int32_t expect = 0;
    if (!at(blk).compare_exchange_strong(expect, 1, std::memory_order_acq_rel)) continue;  // done by an earlier run
    if (testHooks) {
      int32_t d = at(h + hDie).load(std::memory_order_acquire);
      while (d > 0 && !at(h + hDie).compare_exchange_weak(d, d - 1, std::memory_order_acq_rel)) {
      }
      if (d > 0) {
        res.status = JobStatus::Die;  // the worker exits holding block b (claimed, never done)
        return res;
      }
    }
    const int32_t e = blk[1], r0 = blk[2], phase = blk[3];
    Expert& x = j.experts[e];  // e and phase checked by parse
    const bool ok = phase == 1 ? runPhase1(j, x, r0) : runPhase2(j, x, r0);
    if (!ok) {
      res.status = JobStatus::Aborted;
      return res;
    }
    at(blk).store(2, std::memory_order_release);
    ++res.blocks;
    if (phase == 1) {
      at(x.rec + eDone1).fetch_add(1, std::memory_order_acq_rel);
      wake(x, x.rec + eDone1);
    }
    at(h + hDone).fetch_add(1, std::memory_order_acq_rel);
    if (at(h + hDoneWaiters).load(std::memory_order_acquire) > 0) futexWakeAll(h + hDone);
    if (afterBlock) (*afterBlock)(res.blocks, at(h + hNext).load(std::memory_order_relaxed));
  }
}

}  // namespace

JobRunResult runLayerJob(uint8_t* arena, size_t arenaBytes, size_t descOffset, bool testHooks) {
  Job j = parse(arena, arenaBytes, descOffset);
  return runParsed(j, testHooks);
}

void checkLayerJob(uint8_t* arena, size_t arenaBytes, size_t descOffset) { parse(arena, arenaBytes, descOffset); }

JobRunResult runLayerJobOpened(uint8_t* arena, size_t arenaBytes, size_t descOffset, const std::function<void()>& opened,
                               const std::function<void(int32_t, int32_t)>& afterBlock) {
  Job j = parse(arena, arenaBytes, descOffset);
  opened();
  return runParsed(j, false, &afterBlock);
}

JobWait waitLayerJob(uint8_t* arena, size_t arenaBytes, size_t desc, int64_t spinMicros) {
  int32_t* h = arenaPtr<int32_t>(arena, arenaBytes, desc, kHeaderWords * 4, "the descriptor");
  if (h[hMagic] != kJobMagic) bad("no job descriptor at offset " + std::to_string(desc));
  const int32_t total = h[hBlocks];
  int64_t until = 0;  // read the clock only once the workers' last blocks are not done at once
  for (int i = 0;; ++i) {
    const int32_t done = at(h + hDone).load(std::memory_order_acquire);
    if (done >= total) return JobWait::Done;
    if (at(h + hAbort).load(std::memory_order_acquire)) return JobWait::Aborted;
    if (spinMicros >= 0) {
      // Yielding, not pausing: the workers finishing the last blocks may share this core.
      if ((i & 7) == 7) {
        const int64_t t = nowMicros();
        if (until == 0) until = t + spinMicros;
        else if (t >= until) return JobWait::Pending;
      }
      sched_yield();
      continue;
    }
    // The finisher of a block wakes us only when it sees a waiter; the timeout re-checks abort.
    at(h + hDoneWaiters).fetch_add(1, std::memory_order_seq_cst);
    futexWait(h + hDone, done, kWaitMicros);
    at(h + hDoneWaiters).fetch_sub(1, std::memory_order_seq_cst);
  }
}

void resetLayerJob(uint8_t* arena, size_t arenaBytes, size_t descOffset, bool full) {
  Job j = parse(arena, arenaBytes, descOffset);
  int32_t* h = j.hdr;
  for (int32_t b = 0; b < j.numBlocks; ++b) {
    int32_t* s = j.blocks + b * kBlockWords;
    if (full || at(s).load() == 1) at(s).store(0);
  }
  for (Expert& x : j.experts) {
    if (full) at(x.rec + eDone1).store(0);
    // A packer that died mid-pack left 1: pack again (packing is idempotent).
    if (full || at(x.rec + ePack).load() == 1) at(x.rec + ePack).store(0);
    at(x.rec + eWaiters).store(0);
  }
  if (full) at(h + hDone).store(0);
  at(h + hNext).store(0);
  at(h + kEnteredWord).store(0);
  at(h + hGeneration).fetch_add(1);
  at(h + hAbort).store(0, std::memory_order_release);
}

void benchLayerJob(uint8_t* arena, size_t arenaBytes, size_t descOffset, int threads, int iters, double* seconds) {
  Job j = parse(arena, arenaBytes, descOffset);
  std::atomic<int> go{0}, finished{0};
  std::atomic<bool> quit{false};
  std::vector<std::thread> pool;
  // Persistent threads spin on a generation counter, so a run's time holds no thread start-up.
  for (int t = 1; t < threads; ++t)
    pool.emplace_back([&] {
      Job mine = parse(arena, arenaBytes, descOffset);
      int seen = 0;
      for (;;) {
        int g;
        while ((g = go.load(std::memory_order_acquire)) == seen && !quit.load(std::memory_order_acquire)) __builtin_ia32_pause();
        if (quit.load()) return;
        seen = g;
        runParsed(mine, false);
        finished.fetch_add(1, std::memory_order_acq_rel);
      }
    });
  for (int it = 0; it < iters; ++it) {
    resetLayerJob(arena, arenaBytes, descOffset, true);
    finished.store(0);
    const auto t0 = std::chrono::steady_clock::now();
    go.fetch_add(1, std::memory_order_acq_rel);
    runParsed(j, false);
    while (finished.load(std::memory_order_acquire) < threads - 1) __builtin_ia32_pause();
    seconds[it] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  quit.store(true);
  for (auto& t : pool) t.join();
}

}  // namespace cpu
}  // namespace hetmoe
