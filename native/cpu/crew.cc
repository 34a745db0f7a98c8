// The CPU crew's board (layout and protocol: crew.h).
#include "cpu/crew.h"

#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "cpu/futex.h"
#include "cpu/gate_job.h"

namespace hetmoe {
namespace cpu {
namespace {

// After a job a worker spins for the next one before it sleeps: at decode the next layer's job
// follows within tens of microseconds in a tight loop, or a few hundred when the app's own work
// (attention) runs between MoE layers, and a spinning worker joins it without a wake-up, which on
// the 16-core Xeon (a KVM guest) cost the main thread ~1.2 µs per sleeper and took the worker tens
// of µs to arrive. It spins by yielding: with a worker per core, a spinning worker shares a core with
// the main thread, whose routing ran 2.5x slower on that Xeon while workers spun with pause.
// Only the first bSpinWorkers slots spin (the runtime leaves the calling thread a core of its own, so
// that no spinner needs to share it; on the 2-core dev VM one or two spinners measured the same, and
// the Xeon is to decide); the others sleep at once and are woken for jobs whose work pays for it.
// How long (board words bSpin, bSpinMax, set by crewConfigure from the runtime's options):
//  - a fixed window (bSpin >= 0 µs; 0: sleep at once, so that every job wakes them);
//  - adaptive (bSpin < 0): 1.5x the longest gap between jobs this worker saw lately (a peak that
//    halves every kPeakHalfLifeMicros), at least kAdaptiveMinSpinMicros and at most bSpinMax. Gaps
//    longer than bSpinMax (the app idle) are not counted, so an idle app's workers spin at most
//    bSpinMax after its last job, then sleep, and after idleMicros go back to their event loops.
constexpr int64_t kAdaptiveMinSpinMicros = 100;
constexpr double kPeakHalfLifeMicros = 20000;
constexpr int32_t kDefaultSpinMaxMicros = 2000;

// Waking a sleeping worker is an IPI to a halted vCPU, and on the VMs here the waker pays for it: ~1.2
// µs per sleeper on the 16-core Xeon (18-20 µs for the main thread to wake all sixteen), 15 µs or
// more on the 2-core dev VM. A post that must have every worker (crewPost, WakeAtPost) still wakes
// them all. A small joined job (WakeLazily) wakes nobody until the main thread has timed its first
// blocks, and then as many as the work left pays for (crewJoin): on the Xeon with workers asleep,
// waking all at post cost the tiny model's 1- and 4-token layers 18 µs each, and waking two then
// letting each worker wake two more (a tree of depth 3-4) made its 16-token layers 10-14 µs slower
// than waking all, since every level waits for a vCPU to come out of halt.
// A worker woken early (crewAlert) wakes this many more while any sleep.
constexpr int kWakeFanout = 2;
// The waker's cost per sleeper woken, µs: a running mean over the main thread's timed wake-ups.
std::atomic<int64_t> wakeCostMicros{5};
// How long a woken worker takes to arrive, µs: a running mean written by the workers that arrive
// (0: none measured yet, assume kAssumedArrivalMicros), from the last wake-up call's time (process-
// wide, like the waker's cost: several runtimes share both). On the 2-core VM it is 0.2-0.6 ms, far
// more than the waker's cost, and a worker woken for a small job arrived to take one of its last
// blocks while the main thread, done with its own, waited for it (the tiny model's 16-token layers:
// 28-32 -> 56-58 µs in one run with one worker woken per layer; that VM is noisy).
std::atomic<int64_t> arrivalMicros{0};
std::atomic<int64_t> lastWakeAt{0};
constexpr int64_t kAssumedArrivalMicros = 20;
// HETMOE_CREW_JOB_FANOUT (measurements; default 0): a worker that finds blocks left in a posted job
// wakes this many more while any sleep. It was 2 (a wake-up tree); now the main thread alone decides
// how many a small job wakes (crewJoin), and crewPost wakes them all.
// An integer measurement switch from the environment, clamped to [lo, hi]; `otherwise` when unset.
int envInt(const char* name, int otherwise, int lo, int hi) {
  const char* e = std::getenv(name);
  return e && *e ? std::max(lo, std::min(hi, std::atoi(e))) : otherwise;
}
int jobFanout() {
  static const int v = envInt("HETMOE_CREW_JOB_FANOUT", 0, 0, 64);
  return v;
}

// A woken worker's arrival: its latency since the last wake-up call joins the running mean.
void noteArrival(int64_t t) {
  const int64_t l = t - lastWakeAt.load(std::memory_order_relaxed);
  if (l < 0 || l > 10000) return;  // woken by something else (a quit, an alert long after)
  const int64_t a = arrivalMicros.load(std::memory_order_relaxed);
  arrivalMicros.store(a ? (3 * a + l) / 4 : std::max<int64_t>(1, l), std::memory_order_relaxed);
}

enum Board { bMagic = 0, bGen, bDesc, bDescHi, bOpen, bQuit, bSleepers, bSlots, bSpin, bSpinMax, bAlert, bSpinWorkers, bActivity };
// Words of a worker's slot (crew.h): its mark, its kernel thread id, then diagnostics it writes.
enum Slot { sMark = 0, sTid, sCaught, sWoken, sWindow, sPeak, sPeeked };

int32_t* boardAt(uint8_t* arena, size_t arenaBytes, size_t board) {
  if (board > arenaBytes || arenaBytes - board < crewBoardBytes(0) || reinterpret_cast<uintptr_t>(arena + board) % 64 != 0)
    throw std::runtime_error("cpu crew: the board offset is outside the arena or not 64-byte aligned");
  int32_t* w = reinterpret_cast<int32_t*>(arena + board);
  if (w[bMagic] != kCrewMagic && w[bMagic] != 0) throw std::runtime_error("cpu crew: no board at offset " + std::to_string(board));
  if (arenaBytes - board < crewBoardBytes(w[bSlots])) throw std::runtime_error("cpu crew: the board's slots run past the arena");
  return w;
}

std::atomic<int32_t>& at(int32_t* w, int i) { return atomicAt(w + i); }
int32_t* slotWord(int32_t* w, int s) { return w + kSlotWord + s * kSlotStride; }

// A worker's memory of the gaps between jobs (adaptive spin). Thread-local: it outlives a return to
// the event loop (crewServe is called again on the same thread).
struct GapPeak {
  double peak = 0;  // µs, decayed to `at`
  int64_t at = 0;
  double now(int64_t t) const { return at ? peak * std::exp2(-double(t - at) / kPeakHalfLifeMicros) : 0; }
  void observe(int64_t gap, int64_t t) {
    peak = std::max(now(t), double(gap));
    at = t;
  }
};
thread_local GapPeak gapPeak;

int64_t spinWindow(int32_t* w, int slot, int64_t t) {
  if (slot >= at(w, bSpinWorkers).load(std::memory_order_relaxed)) return 0;
  const int32_t fixed = at(w, bSpin).load(std::memory_order_relaxed);
  if (fixed >= 0) return fixed;
  const int64_t cap = at(w, bSpinMax).load(std::memory_order_relaxed);
  const double want = 1.5 * gapPeak.now(t);
  return std::min<int64_t>(cap, std::max<int64_t>(kAdaptiveMinSpinMicros, int64_t(want)));
}

// A sleeping worker looks at the board this often (doubling, from kFirstPeekMicros up to
// kMaxPeekMicros) even if nobody wakes it: a small joined job wakes sleepers only when its work pays
// for the wake-up (crewJoin), so a worker that fell asleep in one long gap would otherwise sleep
// through every later post, learn no gap, and never spin again before its idle timeout. A peek that
// finds posts it slept through counts their rate as its gap, and the worker spins again.
constexpr int64_t kFirstPeekMicros = 4000;
constexpr int64_t kMaxPeekMicros = 128000;

// HETMOE_CREW_SPIN_PAUSES (measurements): pause instructions between the idle spin's yields (0: none).
// A yielding loop gives the vCPU to a thread that shares it (the main thread) but keeps a hyperthread's
// sibling busy with syscalls; pauses in between free the sibling's pipeline at some reaction time.
int spinPauses() {
  static const int v = envInt("HETMOE_CREW_SPIN_PAUSES", 0, 0, 100000);
  return v;
}

// Waits for gen to differ from `seen`; returns the new gen, or `seen` after idleMicros without one.
// `mine`: the worker's slot (diagnostics: arrivals caught spinning, woken, or found on a peek; the window).
int32_t awaitPost(int32_t* w, int slot, int32_t* mine, int32_t seen, int64_t idleMicros) {
  const int64_t start = nowMicros();
  // The gap this worker saw before the post (from its last job's end; over k posts if it slept
  // through some, their mean), counted when no longer than the adaptive bound: a longer one is the
  // app idle, not its rhythm.
  const auto arrived = [&](int slotWord, int32_t g) {
    const int64_t t = nowMicros();
    const int64_t k = std::max<int64_t>(1, int64_t(uint32_t(g) - uint32_t(seen)));
    const int64_t gap = (t - start) / k;
    if (gap <= at(w, bSpinMax).load(std::memory_order_relaxed)) {
      gapPeak.observe(gap, t);
      atomicAt(mine + sPeak).store(int32_t(gapPeak.peak), std::memory_order_relaxed);
    }
    atomicAt(mine + slotWord).fetch_add(1, std::memory_order_relaxed);
  };
  const int pauses = spinPauses();
  int64_t spinFrom = start;
  int32_t activity = at(w, bActivity).load(std::memory_order_relaxed);
  int64_t quietFrom = start;
  int32_t alert = 0;
  for (;;) {
    const int64_t window = spinWindow(w, slot, spinFrom);
    atomicAt(mine + sWindow).store(int32_t(std::min<int64_t>(window, INT32_MAX)), std::memory_order_relaxed);
    for (int i = 0;; ++i) {
      const int32_t g = at(w, bGen).load(std::memory_order_seq_cst);
      if (g != seen) {
        arrived(sCaught, g);
        return g;
      }
      if ((i & 7) == 0 && nowMicros() - spinFrom >= window) break;
      for (int p = 0; p < pauses; ++p) __builtin_ia32_pause();
      sched_yield();
    }
    for (int64_t peek = kFirstPeekMicros;; peek = std::min(2 * peek, kMaxPeekMicros)) {
      // Idle means no forward at all (the activity word), not merely no post: a stretch of jobs run
      // on the calling thread alone posts nothing, and a worker back in its event loop then needs the
      // main thread's event loop to turn before it serves again, which a decode loop of synchronous
      // forwards never lets happen (the tiny model's 16-token layers after its 1- and 4-token ones,
      // 300 µs apart, ran every block on the main thread: 32 µs a layer instead of 17-20).
      const int32_t act = at(w, bActivity).load(std::memory_order_relaxed);
      if (act != activity) {
        activity = act;
        quietFrom = nowMicros();
      }
      const int64_t left = idleMicros - (nowMicros() - quietFrom);
      if (left <= 0) return seen;
      alert = at(w, bAlert).load(std::memory_order_seq_cst);
      at(w, bSleepers).fetch_add(1, std::memory_order_seq_cst);
      const FutexWoke why = futexWait(w + bGen, seen, std::min(left, peek));  // returns at once if gen already moved on
      at(w, bSleepers).fetch_sub(1, std::memory_order_seq_cst);
      const int32_t g = at(w, bGen).load(std::memory_order_seq_cst);
      if (g != seen) {
        if (why == FutexWoke::Woken) noteArrival(nowMicros());
        arrived(why == FutexWoke::TimedOut ? sPeeked : sWoken, g);
        return g;
      }
      // Woken early (crewAlert: a job is on its way): pass the wake-up on, and spin again.
      const int32_t a = at(w, bAlert).load(std::memory_order_seq_cst);
      if (a != alert) {
        alert = a;
        if (at(w, bSleepers).load(std::memory_order_seq_cst) > 0) futexWake(w + bGen, kWakeFanout);
        spinFrom = nowMicros();
        break;
      }
    }
  }
}

std::atomic<bool> traceOn{false};
JoinTrace lastJoin;

// Wakes up to `count` sleeping workers, timing it per worker woken (the waker's share).
int wakeSome(int32_t* w, int count) {
  const int64_t t0 = nowMicros();
  lastWakeAt.store(t0, std::memory_order_relaxed);
  const int woken = futexWake(w + bGen, count);
  if (woken > 0) {
    const int64_t c = wakeCostMicros.load(std::memory_order_relaxed);
    const int64_t sample = std::max<int64_t>(1, (nowMicros() - t0 + woken / 2) / woken);
    wakeCostMicros.store((3 * c + sample) / 4, std::memory_order_relaxed);
  }
  return woken;
}

// Opens a validated job to the workers; spinning ones see it at once, sleeping ones only if `wake`.
void open(uint8_t* arena, int32_t* w, size_t board, size_t desc, bool wake) {
  if (at(w, bOpen).load()) throw std::runtime_error("cpu crew: a job is already posted (jobs run one at a time)");
  int32_t* h = reinterpret_cast<int32_t*>(arena + desc);
  if (h[0] == kJobMagic) {  // layer jobs: where to look for dead workers (layer_job.h, header words 26-29)
    h[28] = int32_t(uint32_t(board));
    h[29] = int32_t(uint32_t(uint64_t(board) >> 32));
    h[26] = 1;
  }
  w[bDesc] = int32_t(uint32_t(desc));
  w[bDescHi] = int32_t(uint32_t(desc >> 32));
  at(w, bOpen).store(1, std::memory_order_seq_cst);
  at(w, bGen).fetch_add(1, std::memory_order_seq_cst);
  const int32_t sleepers = at(w, bSleepers).load(std::memory_order_seq_cst);
  if (traceOn.load(std::memory_order_relaxed)) lastJoin.sleepersAtPost = sleepers;
  if (wake && sleepers > 0) {
    const int woken = wakeSome(w, INT32_MAX);
    if (traceOn.load(std::memory_order_relaxed)) lastJoin.woken = woken;
  }
}

void validate(uint8_t* arena, size_t arenaBytes, size_t desc) {
  const size_t arenaLeft = desc <= arenaBytes ? arenaBytes - desc : 0;
  if (arenaLeft >= 4 && *reinterpret_cast<const int32_t*>(arena + desc) == kGateMagic)
    checkGateJob(arena, arenaBytes, desc);
  else
    checkLayerJob(arena, arenaBytes, desc);
}

}  // namespace

void crewInit(uint8_t* arena, size_t arenaBytes, size_t board, int slots) {
  if (slots < 1 || slots > 64) throw std::runtime_error("cpu crew: 1 to 64 worker slots");
  if (board > arenaBytes || arenaBytes - board < crewBoardBytes(slots) || reinterpret_cast<uintptr_t>(arena + board) % 64 != 0)
    throw std::runtime_error("cpu crew: the board does not fit the arena at that offset");
  int32_t* w = reinterpret_cast<int32_t*>(arena + board);
  for (size_t i = 0; i < crewBoardBytes(slots) / 4; ++i) w[i] = 0;
  w[bSlots] = slots;
  w[bSpin] = -1;
  w[bSpinMax] = kDefaultSpinMaxMicros;
  w[bSpinWorkers] = slots;
  at(w, bMagic).store(kCrewMagic, std::memory_order_seq_cst);
}

void crewConfigure(uint8_t* arena, size_t arenaBytes, size_t board, int32_t spinMicros, int32_t spinMaxMicros, int32_t spinWorkers) {
  int32_t* w = boardAt(arena, arenaBytes, board);
  if (spinMaxMicros < 0) throw std::runtime_error("cpu crew: the adaptive spin's bound must be >= 0 µs");
  if (spinWorkers < 0) throw std::runtime_error("cpu crew: the spinning workers must be >= 0");
  at(w, bSpinWorkers).store(spinWorkers, std::memory_order_seq_cst);
  at(w, bSpinMax).store(spinMaxMicros, std::memory_order_seq_cst);
  at(w, bSpin).store(spinMicros < 0 ? -1 : spinMicros, std::memory_order_seq_cst);
}

int crewAlert(uint8_t* arena, size_t arenaBytes, size_t board, int count) {
  int32_t* w = boardAt(arena, arenaBytes, board);
  if (count <= 0 || at(w, bSleepers).load(std::memory_order_seq_cst) == 0) return 0;
  at(w, bAlert).fetch_add(1, std::memory_order_seq_cst);
  return futexWake(w + bGen, count);
}

ServeStatus crewServe(uint8_t* arena, size_t arenaBytes, size_t board, int slot, bool testHooks, int64_t idleMicros) {
  int32_t* w = boardAt(arena, arenaBytes, board);
  if (slot < 0 || slot >= w[bSlots]) throw std::runtime_error("cpu crew: slot out of range");
  int32_t* mine = slotWord(w, slot);
  atomicAt(mine + 1).store(static_cast<int32_t>(syscall(SYS_gettid)), std::memory_order_seq_cst);
  int32_t seen = 0;  // a job posted before this worker started is joined too
  for (;;) {
    const int32_t g = awaitPost(w, slot, mine, seen, idleMicros);
    if (at(w, bQuit).load(std::memory_order_seq_cst)) return ServeStatus::Quit;
    if (g == seen) return ServeStatus::Idle;
    seen = g;
    atomicAt(mine).store(1, std::memory_order_seq_cst);
    JobRunResult r;
    if (at(w, bOpen).load(std::memory_order_seq_cst) && at(w, bGen).load(std::memory_order_seq_cst) == seen) {
      const size_t desc = size_t(uint32_t(w[bDesc])) | (size_t(uint32_t(w[bDescHi])) << 32);
      // Nothing left to claim (the main thread takes small jobs' blocks first): leave at once rather
      // than parse the descriptor, so the retire does not wait on sixteen latecomers.
      const int32_t* jh = reinterpret_cast<const int32_t*>(arena + desc);
      bool claimable = atomicAt(const_cast<int32_t*>(jh) + 2).load(std::memory_order_acquire) < jh[5];  // next < numBlocks
      // A layer job may admit only so many workers (word 27): a small job's blocks go further among a
      // few threads than contended by sixteen, each of which the retire then waits for.
      if (claimable && jh[0] == kJobMagic) {
        const int32_t before = atomicAt(const_cast<int32_t*>(jh) + kEnteredWord).fetch_add(1, std::memory_order_relaxed);
        const int32_t cap = jh[kMaxEnteredWord];
        if (cap > 0 && before >= cap) {
          atomicAt(const_cast<int32_t*>(jh) + kEnteredWord).fetch_sub(1, std::memory_order_relaxed);
          claimable = false;
        }
      }
      if (claimable && jobFanout() > 0 && at(w, bSleepers).load(std::memory_order_seq_cst) > 0) {
        lastWakeAt.store(nowMicros(), std::memory_order_relaxed);
        futexWake(w + bGen, jobFanout());
      }
      if (claimable && jh[0] == kGateMagic) {
        int32_t n = 0;
        try {
          n = runGateJob(arena, arenaBytes, desc, testHooks);
        } catch (const std::exception&) {
          // Validated by the main thread before posting; it computes any block left unclaimed.
        }
        if (n < 0) return ServeStatus::Die;  // test hook: dies holding a block, its mark kept
      } else if (claimable) {
        try {
          r = runLayerJob(arena, arenaBytes, desc, testHooks);
        } catch (const std::exception&) {
          // The main thread validated this descriptor before posting it; if a worker still cannot run
          // it (weights unmapped meanwhile), the job must not wait for blocks nobody will run.
          atomicAt(reinterpret_cast<int32_t*>(arena + desc) + 1).store(1, std::memory_order_seq_cst);  // header word 1: abort
        }
      }
    }
    // A dying worker keeps its mark: the main thread clears it when it learns of the death.
    if (r.status == JobStatus::Die) return ServeStatus::Die;
    atomicAt(mine).store(0, std::memory_order_seq_cst);
  }
}

void crewPost(uint8_t* arena, size_t arenaBytes, size_t board, size_t desc, bool wake) {
  int32_t* w = boardAt(arena, arenaBytes, board);
  validate(arena, arenaBytes, desc);
  open(arena, w, board, desc, wake);
}

JoinStatus crewJoin(uint8_t* arena, size_t arenaBytes, size_t board, size_t desc, JoinMode mode, int64_t spinMicros, int64_t retireMicros) {
  const bool trace = traceOn.load(std::memory_order_relaxed);
  if (trace) {
    const int64_t seq = lastJoin.seq + 1;
    lastJoin = JoinTrace{nowNanos()};
    lastJoin.seq = seq;
  }
  if (mode == JoinMode::Alone) {
    const JobRunResult r = runLayerJob(arena, arenaBytes, desc, false);
    if (trace) {
      lastJoin.posted = lastJoin.mainDone = lastJoin.waited = lastJoin.retired = nowNanos();
      lastJoin.mainBlocks = r.blocks;
      lastJoin.numBlocks = reinterpret_cast<const int32_t*>(arena + desc)[5];
    }
    return r.status == JobStatus::Done ? JoinStatus::Done : JoinStatus::Aborted;
  }
  int32_t* w = boardAt(arena, arenaBytes, board);
  bool posted = false;
  bool wakeDecided = mode == JoinMode::WakeAtPost;
  int64_t start = 0;
  // Lazy wake: after each of this thread's blocks, until decided, price the work left (blocks not yet
  // claimed, at this thread's time per block) in wake-ups: a woken worker costs this thread one (c),
  // and helps only once it has arrived (L, measured: a vCPU coming out of halt). Wake as many as the
  // work left after L pays four times over, and none if it does not pay for one.
  const std::function<void(int32_t, int32_t)> afterBlock = [&](int32_t mine, int32_t claimed) {
    if (wakeDecided) return;
    const int32_t total = reinterpret_cast<const int32_t*>(arena + desc)[5];  // header word 5: numBlocks
    if (claimed >= total) {
      wakeDecided = true;
      return;
    }
    const int32_t sleepers = at(w, bSleepers).load(std::memory_order_seq_cst);
    if (sleepers == 0) return;
    const int64_t left = int64_t(total - claimed) * (nowMicros() - start) / mine;
    const int64_t arrival = arrivalMicros.load(std::memory_order_relaxed);
    const int64_t after = left - (arrival ? arrival : kAssumedArrivalMicros);
    const int64_t n = after <= 0 ? 0 : std::min<int64_t>(sleepers, after / (4 * wakeCostMicros.load(std::memory_order_relaxed)));
    if (n < 1 && after <= 0) wakeDecided = true;  // the work left only shrinks
    if (n >= 1) {
      wakeDecided = true;
      const int woken = wakeSome(w, static_cast<int>(n));
      if (trace) lastJoin.woken += woken;
    }
  };
  JobRunResult r;
  try {
    // Parsed once, posted, and this thread claims its first block right away.
    r = runLayerJobOpened(
        arena, arenaBytes, desc,
        [&] {
          open(arena, w, board, desc, mode == JoinMode::WakeAtPost);
          posted = true;
          // The lazy wake prices the work left by this thread's time per block: a clock only if any sleep.
          if (!wakeDecided && at(w, bSleepers).load(std::memory_order_relaxed) > 0) start = nowMicros();
          else wakeDecided = true;
          if (trace) lastJoin.posted = nowNanos();
        },
        afterBlock);
  } catch (...) {
    if (!posted) throw;
    // A block this thread could not run: stop the workers too (the caller retires and reports it).
    atomicAt(reinterpret_cast<int32_t*>(arena + desc) + 1).store(1, std::memory_order_seq_cst);  // header word 1: abort
    return JoinStatus::Aborted;
  }
  if (r.status != JobStatus::Done) return JoinStatus::Aborted;
  if (trace) {
    lastJoin.mainDone = nowNanos();
    lastJoin.mainBlocks = r.blocks;
    lastJoin.numBlocks = reinterpret_cast<const int32_t*>(arena + desc)[5];
  }
  const JobWait s = waitLayerJob(arena, arenaBytes, desc, spinMicros);
  if (trace) lastJoin.waited = nowNanos();
  if (s != JobWait::Done) return s == JobWait::Aborted ? JoinStatus::Aborted : JoinStatus::Pending;
  const bool retired = crewRetire(arena, arenaBytes, board, retireMicros);
  if (trace) {
    lastJoin.retired = nowNanos();
    lastJoin.entered = reinterpret_cast<const int32_t*>(arena + desc)[kEnteredWord];
    lastJoin.arrivalMicros = arrivalMicros.load(std::memory_order_relaxed);
    lastJoin.wakeCostMicros = wakeCostMicros.load(std::memory_order_relaxed);
  }
  return retired ? JoinStatus::Done : JoinStatus::Unretired;
}

void crewTrace(bool on) { traceOn.store(on, std::memory_order_relaxed); }
JoinTrace crewLastJoin() { return lastJoin; }

bool crewRetire(uint8_t* arena, size_t arenaBytes, size_t board, int64_t spinMicros) {
  int32_t* w = boardAt(arena, arenaBytes, board);
  const int slots = w[bSlots];
  at(w, bOpen).store(0, std::memory_order_seq_cst);
  // Workers still inside have run out of blocks (or seen abort) and leave within one block's time;
  // one that stays may have died unnoticed, so the caller gets control back to learn of deaths (and
  // clears a dead worker's mark itself: it is the one that learns of the death).
  int64_t until = 0;  // the clock is read only if a worker is still inside
  for (int s = 0; s < slots; ++s)
    for (int i = 0; atomicAt(slotWord(w, s)).load(std::memory_order_seq_cst) != 0; ++i) {
      if ((i & 63) == 0) {
        const int64_t t = nowMicros();
        if (until == 0) until = t + spinMicros;
        else if (t >= until) return false;
      }
      __builtin_ia32_pause();
    }
  return true;
}

namespace {
// Whether worker s is marked inside a job and its thread is gone.
bool slotDied(int32_t* w, int s) {
  int32_t* slot = slotWord(w, s);
  const int32_t tid = atomicAt(slot + sTid).load(std::memory_order_seq_cst);
  return atomicAt(slot).load(std::memory_order_seq_cst) == 1 && tid > 0 && syscall(SYS_tgkill, getpid(), tid, 0) != 0 && errno == ESRCH;
}
}  // namespace

bool crewWorkerDied(uint8_t* arena, size_t arenaBytes, size_t board) {
  int32_t* w = boardAt(arena, arenaBytes, board);
  for (int s = 0; s < w[bSlots]; ++s)
    if (slotDied(w, s)) return true;
  return false;
}

bool crewRetireLive(uint8_t* arena, size_t arenaBytes, size_t board, int64_t spinMicros) {
  int32_t* w = boardAt(arena, arenaBytes, board);
  at(w, bOpen).store(0, std::memory_order_seq_cst);
  const int64_t until = nowMicros() + spinMicros;
  for (int s = 0; s < w[bSlots]; ++s)
    for (int i = 0; atomicAt(slotWord(w, s)).load(std::memory_order_seq_cst) != 0; ++i) {
      if ((i & 63) == 0) {
        if (slotDied(w, s)) break;
        if (nowMicros() >= until) return false;
      }
      __builtin_ia32_pause();
    }
  return true;
}

void crewQuit(uint8_t* arena, size_t arenaBytes, size_t board) {
  int32_t* w = boardAt(arena, arenaBytes, board);
  at(w, bQuit).store(1, std::memory_order_seq_cst);
  at(w, bGen).fetch_add(1, std::memory_order_seq_cst);
  futexWakeAll(w + bGen);
}

}  // namespace cpu
}  // namespace hetmoe
