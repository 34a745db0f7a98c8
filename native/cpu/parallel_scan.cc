#include "cpu/parallel_scan.h"

#include <algorithm>
#include <thread>
#include <vector>

#include "cpu/router_math.h"

namespace hetmoe {
namespace cpu {

namespace {
constexpr int64_t kSerialBelow = int64_t(1) << 20;  // floats (4 MiB)
constexpr int64_t kPerThread = int64_t(1) << 19;    // at least 2 MiB a thread
constexpr int kMaxThreads = 16;
}  // namespace

int64_t firstNonFiniteParallel(const float* x, int64_t n) {
  // Small scans (every decode batch) return before asking for the core count: glibc answers
  // hardware_concurrency by reading /sys/devices/system/cpu/online, 8-10 µs a call on the VMs here.
  if (n < kSerialBelow) return firstNonFinite(x, n);
  static const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int threads = static_cast<int>(std::min<int64_t>({int64_t(hw), int64_t(kMaxThreads), n / kPerThread}));
  if (threads < 2) return firstNonFinite(x, n);
  // Chunk c covers [c·step, min(n, (c+1)·step)), step a multiple of 16 floats (whole cache lines).
  const int64_t step = ((n + threads - 1) / threads + 15) / 16 * 16;
  std::vector<int64_t> found(threads, -1);
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  auto scan = [&](int c) {
    const int64_t begin = std::min(n, int64_t(c) * step), end = std::min(n, begin + step);
    const int64_t i = firstNonFinite(x + begin, end - begin);
    found[c] = i < 0 ? -1 : begin + i;
  };
  for (int c = 1; c < threads; ++c) pool.emplace_back(scan, c);
  scan(0);  // this thread takes the first chunk
  for (std::thread& t : pool) t.join();
  for (int64_t i : found)
    if (i >= 0) return i;  // chunks are in order: the first hit is the smallest index
  return -1;
}

}  // namespace cpu
}  // namespace hetmoe
