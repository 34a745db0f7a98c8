// The CPU crew: worker threads that stay inside native code between layer jobs, so that a job
// reaches them by a store and (at most) a futex wake instead of a message per worker. At decode
// sizes a layer's kernels take microseconds and a round of piscina messages took 100-300 µs.
//
// Board layout (int32 words in the shared arena at the board's offset, 64-byte aligned; written by
// runtime/cpu-crew.ts through the functions below, read by every serving worker):
//   0 magic kCrewMagic   1 gen: bumped by every post (and by quit)   2-3 job descriptor offset
//   4 open: 1 while the posted job may be joined   5 quit   6 sleepers: workers in futex wait
//   7 slots   8 idle spin: >= 0 a fixed window (µs), < 0 adaptive   9 the adaptive window's bound (µs)
//   10 alert: bumped by crewAlert (a job is coming: sleepers spin again)   11 spinning workers: slots
//   below it spin when idle, the others sleep at once   12 activity: bumped by every forward of the
//   crew's runtime (a serving worker goes back to its event loop only after idleMicros without one)
//   slot s at word kSlotWord + s * kSlotStride: 1 while worker s is inside a posted job; then the
//   serving thread's kernel thread id (crewWorkerDied); then diagnostics the worker writes: posts it
//   saw while spinning, posts it was woken for, its current spin window (µs), the gap peak it
//   remembers (µs), posts it found when it looked up from sleep by itself (crew.cc: peeks)
//
// Protocol. A worker waits for gen to change (spins for a window, then sleeps on the gen word), marks its
// slot, and only then reads `open` and the offset: the main thread retires a job by clearing `open`
// and then waiting for every live slot to be 0, so (all accesses sequentially consistent) a worker
// either saw `open == 0` or is counted by the retire; the descriptor's lease is released after the
// retire, never under a worker. Jobs are posted one at a time. crewPost wakes every sleeping worker;
// a small joined job wakes as many as its work pays for, perhaps none (crewJoin; crew.cc says why);
// a worker that finds blocks left in a job wakes two more while any sleep.
#pragma once
#include <cstddef>
#include <cstdint>

#include "cpu/layer_job.h"

namespace hetmoe {
namespace cpu {

constexpr int32_t kCrewMagic = 0x31434d48;  // "HMC1"
constexpr int kSlotWord = 16;
constexpr int kSlotStride = 16;  // a cache line per slot: slots are written by different threads
constexpr size_t crewBoardBytes(int slots) { return size_t(kSlotWord + slots * kSlotStride) * 4; }

enum class ServeStatus : int32_t { Quit = 0, Die = 1, Idle = 2 };

// Formats a board for `slots` workers (idle spin adaptive, bounded at 2000 µs, every worker).
void crewInit(uint8_t* arena, size_t arenaBytes, size_t board, int slots);
// How long idle workers spin before they sleep (crew.cc): `spinMicros` >= 0 that long, < 0 adaptive
// up to `spinMaxMicros`; only slots below `spinWorkers` spin. Workers read it each time they become idle.
void crewConfigure(uint8_t* arena, size_t arenaBytes, size_t board, int32_t spinMicros, int32_t spinMaxMicros, int32_t spinWorkers);
// Main side, ahead of a job: if workers sleep, wakes up to `count` of them (each passes the wake-up on
// to two more while any sleep) to spin for the job; returns how many it woke.
int crewAlert(uint8_t* arena, size_t arenaBytes, size_t board, int count);
// Worker side: serves posted jobs as worker `slot` until quit, a test-hook death, or no job came for
// `idleMicros` (then Idle: the worker goes back to its event loop, where an idle worker does not keep
// the process alive; the runtime sends it back in before its next job).
ServeStatus crewServe(uint8_t* arena, size_t arenaBytes, size_t board, int slot, bool testHooks, int64_t idleMicros);
// Main side: validates the descriptor (throws std::runtime_error naming what is wrong), then opens it
// to the workers and, with `wake`, wakes the sleeping ones (without: only spinning workers come).
void crewPost(uint8_t* arena, size_t arenaBytes, size_t board, size_t desc, bool wake = true);
enum class JoinStatus : int32_t { Done = 0, Aborted = 1, Pending = 2, Unretired = 3 };
// Alone: the whole job runs on the calling thread and no worker ever sees it. WakeLazily: workers
// that spin join at once; sleeping ones are woken once the calling thread has timed its first
// blocks, as many as the work left pays for (crew.cc). WakeAtPost: all woken, as by crewPost.
enum class JoinMode : int32_t { Alone = 0, WakeLazily = 1, WakeAtPost = 2 };
// Main side, for a job the calling thread joins: validates and posts it (unless Alone), runs blocks
// on this thread until none is left, waits for the workers' last blocks (spinning at most
// `spinMicros`) and retires the job (spinning at most `retireMicros`). Done: finished and retired.
// Unretired: finished, a worker still inside (call crewRetire). Pending: workers still run blocks
// (wait, then retire). Aborted: abort was seen, or this thread could not run a block (abort is then
// set); retire before anything else. Throws, with nothing posted, for a descriptor that does not
// validate.
JoinStatus crewJoin(uint8_t* arena, size_t arenaBytes, size_t board, size_t desc, JoinMode mode, int64_t spinMicros, int64_t retireMicros);
// Main side: closes the posted job and waits (spinning at most `spinMicros`) until no worker is
// inside it; false if one still is (call again; the lease must not be released before true). The
// mark of a worker that died inside a job is cleared by whoever learns of the death.
bool crewRetire(uint8_t* arena, size_t arenaBytes, size_t board, int64_t spinMicros);
// Any thread: whether a worker marked inside the posted job has exited (its thread is gone; the
// runtime clears its mark later, on its event loop). For waits inside a job that the main thread
// joined: the abort that a death calls for would otherwise come from the thread that is waiting.
bool crewWorkerDied(uint8_t* arena, size_t arenaBytes, size_t board);
// crewRetire that does not wait for workers whose threads are gone (their marks stay until the
// runtime clears them): for a job that a death made the main thread give up.
bool crewRetireLive(uint8_t* arena, size_t arenaBytes, size_t board, int64_t spinMicros);
// Main side: asks every worker to return from crewServe.
void crewQuit(uint8_t* arena, size_t arenaBytes, size_t board);

// Diagnostics (benches): timings of the last crewJoin on this process, when tracing is on.
// Nanoseconds on the monotonic clock; entered: workers that found blocks left and went in.
struct JoinTrace {
  int64_t start = 0, posted = 0, mainDone = 0, waited = 0, retired = 0;
  int32_t mainBlocks = 0, numBlocks = 0, sleepersAtPost = 0, woken = 0, entered = 0;
  int64_t seq = 0;  // joins traced so far, this one included
  int64_t arrivalMicros = 0, wakeCostMicros = 0;  // the lazy wake's estimates at the join's end (crew.cc)
};
void crewTrace(bool on);
JoinTrace crewLastJoin();

enum class JobWait : int32_t { Done = 0, Aborted = 1, Pending = 2 };
// Waits until every block of the job is done or the job is aborted, spinning at most `spinMicros`
// (then Pending) or, with spinMicros < 0, sleeping on the done counter without limit.
JobWait waitLayerJob(uint8_t* arena, size_t arenaBytes, size_t desc, int64_t spinMicros);

}  // namespace cpu
}  // namespace hetmoe
