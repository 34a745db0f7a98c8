// The machine's read bandwidth, all cores: each thread streams its own slice of a buffer much larger
// than the last-level cache; a pass ends when the slowest thread is done.
#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/layer_job.h"

namespace hetmoe {
namespace cpu {

uint64_t readStreamAvx2(const uint8_t* p, size_t bytes);  // read_bandwidth_avx2.cc

namespace {
uint64_t readStreamScalar(const uint8_t* p, size_t bytes) {
  uint64_t a[8] = {};
  const uint64_t* q = reinterpret_cast<const uint64_t*>(p);
  for (size_t i = 0; i + 8 <= bytes / 8; i += 8)
    for (int u = 0; u < 8; ++u) a[u] ^= q[i + u];
  return a[0] ^ a[1] ^ a[2] ^ a[3] ^ a[4] ^ a[5] ^ a[6] ^ a[7];
}
}  // namespace

void readBandwidth(size_t bytes, int threads, int iters, double* gbps) {
  if (threads < 1) threads = 1;
  bytes = bytes / (16384 * size_t(threads)) * 16384 * threads;  // slices split evenly into 4 streams
  void* mem = std::aligned_alloc(2 << 20, bytes);
  if (!mem) throw std::runtime_error("read bandwidth: cannot allocate the buffer");
  madvise(mem, bytes, MADV_HUGEPAGE);
  const size_t slice = bytes / threads;
  auto* base = static_cast<uint8_t*>(mem);
  const bool avx2 = isaAvailable(Isa::Avx2);
  auto stream = avx2 ? readStreamAvx2 : readStreamScalar;
  std::atomic<int> go{0}, finished{0};
  std::atomic<uint64_t> sink{0};
  // Slice 0 is read by the calling thread itself: a caller spinning while `threads` helpers stream
  // would be one runnable thread too many, and the helper sharing its core would finish late.
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t)
    pool.emplace_back([&, t] {
      // Each thread first touches its own slice (first touch places the pages near it).
      std::memset(base + t * slice, t + 1, slice);
      finished.fetch_add(1);
      for (int it = 1; it <= iters; ++it) {
        while (go.load(std::memory_order_acquire) < it) __builtin_ia32_pause();
        sink.fetch_xor(stream(base + t * slice, slice));
        finished.fetch_add(1);
      }
    });
  std::memset(base, 1, slice);
  while (finished.load() < threads - 1) std::this_thread::yield();
  for (int it = 1; it <= iters; ++it) {
    finished.store(0);
    const auto t0 = std::chrono::steady_clock::now();
    go.store(it, std::memory_order_release);
    sink.fetch_xor(stream(base, slice));
    while (finished.load(std::memory_order_acquire) < threads - 1) __builtin_ia32_pause();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    gbps[it - 1] = bytes / s / 1e9;
  }
  for (auto& t : pool) t.join();
  std::free(mem);
  if (sink.load() == 0x5eed) gbps[0] += 0;  // keep the loads observable
}

}  // namespace cpu
}  // namespace hetmoe
