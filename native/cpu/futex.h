// Linux futex wait/wake on an int32 in (shared) memory. The memory is one process's (threads of one
// Node process share the arena), so the private variants are right.
#pragma once
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <ctime>

namespace hetmoe {
namespace cpu {

inline std::atomic<int32_t>& atomicAt(int32_t* w) { return *reinterpret_cast<std::atomic<int32_t>*>(w); }

enum class FutexWoke { Woken, TimedOut, Other };
// Sleeps while *addr == expected, at most `micros` (< 0: no limit); spurious returns are fine.
// Says why it returned: woken by futexWake, the time ran out, or another reason (the value had
// already changed, a signal).
inline FutexWoke futexWait(int32_t* addr, int32_t expected, int64_t micros) {
  timespec ts{static_cast<time_t>(micros / 1000000), static_cast<long>(micros % 1000000) * 1000L};
  if (syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, expected, micros < 0 ? nullptr : &ts, nullptr, 0) == 0) return FutexWoke::Woken;
  return errno == ETIMEDOUT ? FutexWoke::TimedOut : FutexWoke::Other;
}
// Wakes at most `count` threads sleeping on addr; returns how many it woke.
inline int futexWake(int32_t* addr, int count) { return static_cast<int>(syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, count, nullptr, nullptr, 0)); }
inline void futexWakeAll(int32_t* addr) { futexWake(addr, INT_MAX); }

// Monotonic microseconds (spin budgets).
inline int64_t nowMicros() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return int64_t(t.tv_sec) * 1000000 + t.tv_nsec / 1000;
}

inline int64_t nowNanos() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return int64_t(t.tv_sec) * 1000000000 + t.tv_nsec;
}

}  // namespace cpu
}  // namespace hetmoe
