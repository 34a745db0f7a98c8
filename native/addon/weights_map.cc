#include "addon/weights_map.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <stdexcept>

namespace hetmoe {
namespace {

constexpr int kSlots = 256;
struct Slot {
  std::string path;
  int refs = 0;
  // Kernels read these without the lock; they are published (release) after the mapping exists
  // and cleared before it is unmapped, and the runtime never unmaps a file a job still reads.
  std::atomic<const uint8_t*> data{nullptr};
  std::atomic<size_t> bytes{0};
};
Slot slots[kSlots];
std::mutex mu;

}  // namespace

int mapWeights(const std::string& path, bool populate) {
  char real[PATH_MAX];
  if (!realpath(path.c_str(), real))
    throw std::runtime_error("cannot open weights file " + path + ": " + std::strerror(errno));
  std::lock_guard<std::mutex> lock(mu);
  int freeSlot = -1;
  for (int i = 0; i < kSlots; ++i) {
    if (slots[i].refs > 0 && slots[i].path == real) {
      ++slots[i].refs;
      return i;
    }
    if (slots[i].refs == 0 && freeSlot < 0) freeSlot = i;
  }
  if (freeSlot < 0) throw std::runtime_error("too many weight files mapped at once (256); close unused models");
  int fd = open(real, O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(std::string("cannot open weights file ") + real + ": " + std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    throw std::runtime_error(std::string("cannot stat ") + real + ": " + std::strerror(e));
  }
  size_t bytes = static_cast<size_t>(st.st_size);
  void* p = nullptr;
  if (bytes > 0) {
    p = mmap(nullptr, bytes, PROT_READ, MAP_SHARED | (populate ? MAP_POPULATE : 0), fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      close(fd);
      throw std::runtime_error(std::string("cannot map ") + real + ": " + std::strerror(e));
    }
    madvise(p, bytes, MADV_WILLNEED);
  }
  close(fd);
  Slot& s = slots[freeSlot];
  s.path = real;
  s.refs = 1;
  s.bytes.store(bytes, std::memory_order_relaxed);
  s.data.store(static_cast<const uint8_t*>(p), std::memory_order_release);
  return freeSlot;
}

void unmapWeights(int id) {
  if (id < 0 || id >= kSlots) return;
  std::lock_guard<std::mutex> lock(mu);
  Slot& s = slots[id];
  if (s.refs <= 0 || --s.refs > 0) return;
  const uint8_t* p = s.data.exchange(nullptr, std::memory_order_acq_rel);
  size_t bytes = s.bytes.exchange(0);
  if (p) munmap(const_cast<uint8_t*>(p), bytes);
  s.path.clear();
}

bool retainWeights(int id) {
  if (id < 0 || id >= kSlots) return false;
  std::lock_guard<std::mutex> lock(mu);
  if (slots[id].refs <= 0) return false;
  ++slots[id].refs;
  return true;
}

MappedWeights weightsById(int id) {
  if (id < 0 || id >= kSlots) return {};
  return {slots[id].data.load(std::memory_order_acquire), slots[id].bytes.load(std::memory_order_relaxed)};
}

}  // namespace hetmoe
