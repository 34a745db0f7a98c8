#include "cpu/parallel_scan.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "cpu/futex.h"
#include "cpu/router_math.h"

namespace hetmoe {
namespace cpu {

namespace {

// Chunks of 64 Ki floats (256 KiB): small enough that a thread arriving late (a halted vCPU takes tens
// of µs to wake) only finds fewer chunks left, large enough that claiming one costs nothing.
constexpr int64_t kChunk = int64_t(1) << 16;
constexpr int kMaxThreads = 16;
constexpr int64_t kMaxChunks = 0xffff;

// The scan itself, compiled for the CPU it runs on (GCC picks a clone at load time); the index of the
// first non-finite value, else -1. Branch-free over blocks of 1024, then a search only on a hit.
__attribute__((target_clones("avx512f", "avx2", "default"))) int64_t scanSerial(const float* x, int64_t n) {
  constexpr int64_t kBlock = 1024;
  for (int64_t c = 0; c < n; c += kBlock) {
    const int64_t end = c + kBlock < n ? c + kBlock : n;
    uint32_t any = 0;
    for (int64_t i = c; i < end; ++i) {
      uint32_t b;
      std::memcpy(&b, x + i, 4);
      any |= (b & 0x7f800000u) == 0x7f800000u;
    }
    if (any)
      for (int64_t i = c; i < end; ++i) {
        uint32_t b;
        std::memcpy(&b, x + i, 4);
        if ((b & 0x7f800000u) == 0x7f800000u) return i;
      }
  }
  return -1;
}

// Scans from this many floats (1 MiB) go to the pool; HETMOE_SCAN_PARALLEL_MIN overrides it (0: never).
int64_t parallelMin() {
  static const int64_t v = [] {
    const char* e = std::getenv("HETMOE_SCAN_PARALLEL_MIN");
    return e && *e ? std::max<int64_t>(0, std::atoll(e)) : int64_t(1) << 18;
  }();
  return v;
}

// One scan at a time runs on the pool (a second caller, e.g. a gate job while the main thread routes,
// scans on its own thread). The claim word packs the scan's generation (high 32 bits), its chunk count
// and the next unclaimed chunk (16 bits each): a thread that wakes late for an old scan sees another
// generation, or no chunk left, and takes nothing; a thread that does claim a chunk knows the scan is
// still waiting for it, so the scan's arguments cannot change under it.
class ScanPool {
 public:
  static ScanPool* get() {
    // Never destroyed: its threads sleep until the process exits (a static's destructor would have
    // to join them at exit).
    static ScanPool* pool = new ScanPool();
    return pool;
  }

  bool tryScan(const float* x, int64_t n, int64_t* result) {
    std::unique_lock<std::mutex> l(mu_, std::try_to_lock);
    if (!l.owns_lock() || threads_.empty()) return false;
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    if (chunks > kMaxChunks) return false;
    x_ = x;
    n_ = n;
    for (int64_t c = 0; c < chunks; ++c) found_[c] = -1;
    pending_.store(static_cast<int32_t>(chunks), std::memory_order_relaxed);
    const uint64_t gen = (claim_.load(std::memory_order_relaxed) >> 32) + 1;
    claim_.store((gen << 32) | (uint64_t(chunks) << 16), std::memory_order_release);
    genWord_.store(static_cast<int32_t>(gen), std::memory_order_release);
    // No more helpers than there are chunks beside the caller's first: every wake-up is a syscall on
    // this thread (an interrupt to a halted vCPU on a virtual machine), and one that finds no chunk
    // left only costs.
    futexWake(reinterpret_cast<int32_t*>(&genWord_), static_cast<int>(std::min<int64_t>(chunks - 1, int64_t(threads_.size()))));
    drain(gen);
    while (pending_.load(std::memory_order_acquire) > 0) __builtin_ia32_pause();
    *result = -1;
    for (int64_t c = 0; c < chunks; ++c)
      if (found_[c] >= 0) {
        *result = found_[c];  // chunks are in order: the first hit is the smallest index
        break;
      }
    return true;
  }

 private:
  ScanPool() : found_(kMaxChunks) {
    const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const int helpers = std::min(hw, kMaxThreads) - 1;
    for (int i = 0; i < helpers; ++i) {
      try {
        threads_.emplace_back([this] { serve(); });
        threads_.back().detach();
      } catch (...) {
        break;  // fewer threads (or none: every scan stays on its caller)
      }
    }
  }

  void serve() {
    uint32_t seen = static_cast<uint32_t>(genWord_.load(std::memory_order_acquire));
    for (;;) {
      const int32_t g = genWord_.load(std::memory_order_acquire);
      if (static_cast<uint32_t>(g) == seen) {
        futexWait(reinterpret_cast<int32_t*>(&genWord_), g, -1);
        continue;
      }
      seen = static_cast<uint32_t>(g);
      drain(seen);
    }
  }

  // Claims and scans chunks of scan `gen` until none is left.
  void drain(uint64_t gen) {
    for (;;) {
      uint64_t c = claim_.load(std::memory_order_acquire);
      const uint64_t next = c & 0xffff, chunks = (c >> 16) & 0xffff;
      if ((c >> 32) != gen || next >= chunks) return;
      if (!claim_.compare_exchange_weak(c, c + 1, std::memory_order_acq_rel)) continue;
      const int64_t begin = int64_t(next) * kChunk, len = std::min(kChunk, n_ - begin);
      const int64_t i = scanSerial(x_ + begin, len);
      found_[next] = i < 0 ? -1 : begin + i;
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  std::mutex mu_;
  std::vector<std::thread> threads_;
  std::atomic<uint64_t> claim_{0};
  std::atomic<int32_t> genWord_{0};
  std::atomic<int32_t> pending_{0};
  const float* x_ = nullptr;
  int64_t n_ = 0;
  std::vector<int64_t> found_;
};

}  // namespace

int64_t firstNonFinite(const float* x, int64_t n) { return scanSerial(x, n); }

int64_t scanPoolMinFloats() {
  const int64_t min = parallelMin();
  return min == 0 ? 0 : std::max(min, 2 * kChunk);
}

int64_t firstNonFiniteParallel(const float* x, int64_t n) {
  const int64_t min = scanPoolMinFloats();
  if (min == 0 || n < min) return scanSerial(x, n);
  int64_t r;
  if (ScanPool::get()->tryScan(x, n, &r)) return r;
  return scanSerial(x, n);
}

}  // namespace cpu
}  // namespace hetmoe
