// ECSS, device side: the expert cache in device memory, host registration of the arena, and the
// layer call (copies in, one launch per projection per format group, copies out).
//
// Concurrency. Three mutexes, always taken in this order when more than one is needed:
//   layerMu  layer calls serialize on it (they share the scratch buffers and the pinned args buffer);
//            held for a whole runLayer, including the wait for its stream.
//   up.mu    uploads serialize on it (they share the upload stream, the pinned staging chunks and the
//            device scratch); held for a whole upload, including its copies.
//   mu       the cache map, the byte budget, the registered ranges: held only for bookkeeping and,
//            in runLayer, while the expert pointers are resolved and the kernels that read them are
//            enqueued. Never held while waiting for a stream.
// Expert memory comes from a stream-ordered pool: allocated on the upload stream, freed with
// cudaFreeAsync on the layer stream. A free queued there (under mu) is ordered after every kernel
// already enqueued that reads the expert (also under mu), so eviction needs no synchronization, and a
// layer in flight never blocks evict / resident / bytesUsed on the JavaScript thread.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "cuda/gpu_backend.h"
#include "cuda/moe_kernels.cuh"
#include "cuda/moe_launch.cuh"

namespace hetmoe {
namespace gpu {

namespace {

// Pinned staging for uploads: two chunks, so that the host copy of chunk i+1 out of the (pageable,
// memory-mapped) weights overlaps the DMA of chunk i.
constexpr size_t kStageChunk = size_t(8) << 20;

struct DevMatrix {
  DevWeights w;
  size_t bytes = 0;
};

struct DevExpert {
  int ffn = 0, format = 0, D = 0, F = 0;
  DevMatrix mats[3];     // gate (SwiGLU only), up, down
  void* alloc = nullptr;  // one allocation holds every matrix of the expert
  size_t bytes = 0;
};

struct Backend;
void devAlloc(Backend& b, void** p, size_t bytes, cudaStream_t s, const std::string& what);
void devFree(Backend& b, void* p, cudaStream_t s);

// Layer scratch (device), on the layer stream: regrowing frees the old buffer stream-ordered.
template <typename T>
struct DevBuf {
  T* p = nullptr;
  size_t cap = 0;  // elements
  void ensure(Backend& b, cudaStream_t s, size_t n, const char* what) {
    if (n <= cap) return;
    release(b, s);
    void* q = nullptr;
    devAlloc(b, &q, std::max<size_t>(n, 1) * sizeof(T), s, what);
    p = static_cast<T*>(q);
    cap = n;
  }
  void release(Backend& b, cudaStream_t s) {
    if (p) devFree(b, p, s);
    p = nullptr;
    cap = 0;
  }
};

struct Registered {
  char* p;
  size_t bytes;
};

struct Uploader {
  std::mutex mu;
  cudaStream_t stream = nullptr;
  char* pinned = nullptr;           // 2 x kStageChunk, allocated at the first upload
  cudaEvent_t chunkFree[2] = {};    // the DMA out of chunk i has finished
  int next = 0;                     // the chunk the next staged copy uses
  char* scratch = nullptr;          // device: one matrix's layout.h bytes, before the repack
  size_t scratchCap = 0;
};

struct Backend {
  std::mutex layerMu;
  std::mutex mu;
  int device = 0;
  std::string name;
  size_t budget = 0, used = 0;  // used: resident experts plus uploads in flight (reserved)
  cudaStream_t stream = nullptr;  // layer calls, and every free of expert memory
  cudaMemPool_t pool = nullptr;   // expert and scratch memory; nullptr: plain cudaMalloc / cudaFree
  cudaEvent_t ev[4] = {};
  cudaEvent_t evSleep = nullptr;  // blocking-sync: runLayer's sleepWait
  std::map<std::string, DevExpert> cache;
  std::vector<Registered> registered;
  int metaVariant = 0;
  bool closed = false;
  Uploader up;
  // layer scratch (layerMu)
  DevBuf<float> hidF32;
  DevBuf<__nv_bfloat16> hidBf16, hidBf16Nat, H;
  WgOptions wg;  // when the large-batch kernel runs (moe_launch.cuh)
  DevBuf<float> out;
  DevBuf<float> outCompact;
  DevBuf<char> args;
  char* pinned = nullptr;  // the per-call index arrays and launch plan
  size_t pinnedCap = 0;
  char* stage = nullptr;  // hidden / out when they are not inside a registered range
  size_t stageCap = 0;
};

void devAlloc(Backend& b, void** p, size_t bytes, cudaStream_t s, const std::string& what) {
  *p = nullptr;
  if (b.pool)
    check(cudaMallocFromPoolAsync(p, bytes, b.pool, s), what);
  else
    check(cudaMalloc(p, bytes), what);
}

// Without a pool (devices that lack stream-ordered allocation) the free waits for the stream; cudaFree
// then synchronizes the device — slower, still correct.
void devFree(Backend& b, void* p, cudaStream_t s) {
  if (!p) return;
  if (b.pool) {
    cudaFreeAsync(p, s);
  } else {
    cudaStreamSynchronize(s);
    cudaFree(p);
  }
}

std::mutex gMu;
// shared_ptr: a layer call or an upload in flight keeps its backend alive while close() waits for it.
std::map<int, std::shared_ptr<Backend>> gBackends;
int gNext = 1;

std::shared_ptr<Backend> getShared(int h) {
  std::lock_guard<std::mutex> l(gMu);
  auto it = gBackends.find(h);
  if (it == gBackends.end()) throw GpuError("GPU backend handle " + std::to_string(h) + " is not open (closed?)", false);
  return it->second;
}

// Callers hold layerMu, and the layer stream has no earlier layer's work pending (each layer call waits
// for its stream before it returns), so the old buffer can go at once.
void ensurePinned(char*& p, size_t& cap, size_t bytes, const char* what) {
  if (bytes <= cap) return;
  if (p) cudaFreeHost(p);
  p = nullptr;
  cap = 0;
  const size_t n = std::max<size_t>(bytes, size_t(1) << 20);
  check(cudaMallocHost(&p, n), what);
  cap = n;
}

// Device pointer for [p, p+bytes) if it lies inside a registered range, else nullptr.
const Registered* findRegistered(Backend& b, const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (const Registered& r : b.registered)
    if (c >= r.p && c + bytes <= r.p + r.bytes) return &r;
  return nullptr;
}

// Caller holds mu. The memory goes back to the pool after every layer already enqueued.
void freeExpert(Backend& b, DevExpert& e) {
  devFree(b, e.alloc, b.stream);
  e.alloc = nullptr;
  b.used -= e.bytes;
  e.bytes = 0;
}

size_t align256(size_t n) { return (n + 255) & ~size_t(255); }

void validate(const MatrixSrc& m, const std::string& what, int rows, int cols, int format) {
  auto bad = [&](const std::string& why) { throw GpuError("uploading " + what + ": " + why, false); };
  if (m.rows != rows || m.cols != cols)
    bad("shape " + std::to_string(m.rows) + "x" + std::to_string(m.cols) + ", expected " + std::to_string(rows) + "x" +
        std::to_string(cols));
  if (m.format != format) bad("all matrices of an expert must share one format on the GPU");
  if (m.format < 0 || m.format > 2) bad("unknown format " + std::to_string(m.format));
  if (m.dtype != 0 && m.dtype != 1) bad("unknown dtype " + std::to_string(m.dtype));
  const int rowMul = m.format == 2 ? 32 : 16;
  if (rows % rowMul || cols % 64)
    bad("the GPU kernels need rows % " + std::to_string(rowMul) + " == 0 and cols % 64 == 0 (got " +
        std::to_string(rows) + "x" + std::to_string(cols) + ")");
  const size_t es = m.dtype == 0 ? 2 : 4;
  const size_t srows = m.format == 2 ? rows / 2 : rows;
  const size_t vcols = m.format == 0 ? cols : cols / 2;
  if (!m.values || m.valuesBytes < srows * vcols * es) bad("values range is too short");
  if (m.format != 0 && (!m.meta || m.metaBytes < srows * (cols / 16) * 4)) bad("meta range is too short");
  if (m.format == 2 && (!m.select || m.selectBytes < srows * ((cols + 127) / 128))) bad("select range is too short");
}

// Sizes of one matrix: layout.h bytes read from the host, and the repacked device arrays.
struct MatLayout {
  size_t srcVals = 0, srcMeta = 0, srcSel = 0;
  size_t valsB = 0, metaB = 0, selB = 0;
  size_t scratch() const { return align256(srcVals) + align256(srcMeta) + align256(srcSel); }
  size_t device() const { return align256(valsB) + align256(metaB) + align256(selB); }
};

MatLayout layoutOf(const MatrixSrc& m, DevWeights& w) {
  const int srows = m.format == 2 ? m.rows / 2 : m.rows;
  const size_t es = m.dtype == 0 ? 2 : 4;
  const size_t vcols = m.format == 0 ? m.cols : m.cols / 2;
  MatLayout L;
  L.srcVals = size_t(srows) * vcols * es;
  L.srcMeta = m.format ? size_t(srows) * (m.cols / 16) * 4 : 0;
  const int chunks = (m.cols + 127) / 128;
  L.srcSel = m.format == 2 ? size_t(srows) * chunks : 0;
  w.format = m.format;
  w.rows = m.rows;
  w.cols = m.cols;
  w.mTiles = srows / 16;
  w.kSteps = m.cols / 64;
  w.chunks = chunks;
  L.valsB = size_t(srows) * vcols * 2;
  L.metaB = m.format ? size_t(w.mTiles) * w.kSteps * 32 * 4 : 0;
  L.selB = m.format == 2 ? size_t(w.mTiles) * chunks * 4 : 0;
  return L;
}

void placeMatrix(DevWeights& w, const MatLayout& L, char* base) {
  w.vals = reinterpret_cast<const uint4*>(base);
  w.meta = L.metaB ? reinterpret_cast<const uint32_t*>(base + align256(L.valsB)) : nullptr;
  w.sel = L.selB ? reinterpret_cast<const uint32_t*>(base + align256(L.valsB) + align256(L.metaB)) : nullptr;
}

// Host bytes (pageable) -> device, through the two pinned chunks; caller holds up.mu.
void stagedCopy(Uploader& u, char* dst, const uint8_t* src, size_t bytes, const std::string& doing) {
  for (size_t off = 0; off < bytes; off += kStageChunk) {
    const size_t n = std::min(kStageChunk, bytes - off);
    const int c = u.next;
    u.next ^= 1;
    char* chunk = u.pinned + size_t(c) * kStageChunk;
    check(cudaEventSynchronize(u.chunkFree[c]), doing);  // its previous DMA is done
    std::memcpy(chunk, src + off, n);
    check(cudaMemcpyAsync(dst + off, chunk, n, cudaMemcpyHostToDevice, u.stream), doing);
    check(cudaEventRecord(u.chunkFree[c], u.stream), doing);
  }
}

void ensureUploadBuffers(Backend& b, size_t scratchBytes) {
  Uploader& u = b.up;
  if (!u.pinned) {
    void* p = nullptr;
    check(cudaMallocHost(&p, 2 * kStageChunk), "allocating the pinned upload staging buffer");
    u.pinned = static_cast<char*>(p);
  }
  if (scratchBytes > u.scratchCap) {
    devFree(b, u.scratch, u.stream);
    u.scratch = nullptr;
    u.scratchCap = 0;
    void* p = nullptr;
    const size_t cap = std::max(scratchBytes, kStageChunk);
    devAlloc(b, &p, cap, u.stream, "allocating the upload scratch buffer");
    u.scratch = static_cast<char*>(p);
    u.scratchCap = cap;
  }
}

// The one upload: phase 1 (mu) validates and reserves the budget; phase 2 (up.mu only) allocates,
// copies and repacks on the upload stream and waits for it; phase 3 (mu) publishes the expert. Runs on
// the caller's thread: the JavaScript thread for upload(), a libuv thread for the async binding.
size_t uploadExpert(int h, const std::string& key, int ffn, const MatrixSrc* gate, const MatrixSrc& up,
                    const MatrixSrc& down) {
  std::shared_ptr<Backend> keep = getShared(h);
  Backend& b = *keep;
  std::lock_guard<std::mutex> ul(b.up.mu);
  if (ffn != kSwiGLU && ffn != kGeLU) throw GpuError("uploading expert " + key + ": unknown FFN kind", false);
  if (ffn == kSwiGLU && !gate) throw GpuError("uploading expert " + key + ": a SwiGLU expert needs a gate matrix", false);
  const int F = up.rows, D = up.cols, fmt = up.format;
  const std::string w = "expert " + key;
  if (gate) validate(*gate, w + " gate", F, D, fmt);
  validate(up, w + " up", F, D, fmt);
  validate(down, w + " down", D, F, fmt);
  const MatrixSrc* srcs[3] = {ffn == kSwiGLU ? gate : nullptr, &up, &down};
  static const char* names[3] = {" gate", " up", " down"};
  DevExpert e;
  e.ffn = ffn;
  e.format = fmt;
  e.D = D;
  e.F = F;
  MatLayout L[3];
  size_t total = 0, scratch = 0;
  for (int i = 0; i < 3; ++i) {
    if (!srcs[i]) continue;
    L[i] = layoutOf(*srcs[i], e.mats[i].w);
    e.mats[i].bytes = L[i].device();
    total += L[i].device();
    scratch = std::max(scratch, L[i].scratch());
  }
  {  // phase 1
    std::lock_guard<std::mutex> l(b.mu);
    if (b.closed) throw GpuError("GPU backend handle " + std::to_string(h) + " was closed", false);
    check(cudaSetDevice(b.device), "selecting the CUDA device");
    auto it = b.cache.find(key);
    if (it != b.cache.end()) {
      freeExpert(b, it->second);
      b.cache.erase(it);
    }
    if (b.used + total > b.budget)
      throw GpuError("uploading " + w + ": the GPU expert cache budget (" + std::to_string(b.budget) + " bytes) is full (" +
                         std::to_string(b.used) + " used or reserved, " + std::to_string(total) +
                         " more needed); evict experts first",
                     true);
    b.used += total;
  }
  Uploader& u = b.up;
  try {  // phase 2
    check(cudaSetDevice(b.device), "selecting the CUDA device");
    devAlloc(b, &e.alloc, total, u.stream, "allocating device memory for " + w);
    ensureUploadBuffers(b, scratch);
    char* at = static_cast<char*>(e.alloc);
    for (int i = 0; i < 3; ++i) {
      if (!srcs[i]) continue;
      const MatrixSrc& m = *srcs[i];
      const std::string what = w + names[i];
      placeMatrix(e.mats[i].w, L[i], at);
      at += L[i].device();
      char* s = u.scratch;
      const std::string doing = "copying " + what + " to the device";
      stagedCopy(u, s, m.values, L[i].srcVals, doing);
      if (L[i].srcMeta) stagedCopy(u, s + align256(L[i].srcVals), m.meta, L[i].srcMeta, doing);
      if (L[i].srcSel) stagedCopy(u, s + align256(L[i].srcVals) + align256(L[i].srcMeta), m.select, L[i].srcSel, doing);
      repackOnDevice(e.mats[i].w, s, m.dtype, reinterpret_cast<const uint32_t*>(s + align256(L[i].srcVals)),
                     reinterpret_cast<const uint8_t*>(s + align256(L[i].srcVals) + align256(L[i].srcMeta)), b.metaVariant,
                     u.stream);
    }
    check(cudaStreamSynchronize(u.stream), "uploading " + w);
  } catch (...) {
    if (e.alloc) devFree(b, e.alloc, u.stream);
    cudaStreamSynchronize(u.stream);  // the staging chunks and the scratch are free again
    std::lock_guard<std::mutex> l(b.mu);
    b.used -= total;
    throw;
  }
  e.bytes = total;
  {  // phase 3
    std::lock_guard<std::mutex> l(b.mu);
    b.cache[key] = e;  // close() waits for up.mu, so the backend is still open
  }
  return total;
}

}  // namespace

int open(int device, size_t budgetBytes) {
  auto b = std::make_shared<Backend>();
  int count = 0;
  check(cudaGetDeviceCount(&count), "counting CUDA devices");
  if (device < 0 || device >= count)
    throw GpuError("no CUDA device " + std::to_string(device) + " (" + std::to_string(count) + " found)", false);
  check(cudaSetDevice(device), "selecting the CUDA device");
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, device), "reading the device's properties");
  if (p.major < 8)
    throw GpuError(std::string(p.name) + " has compute capability " + std::to_string(p.major) + "." +
                       std::to_string(p.minor) + "; the sparse kernels need 8.0 or later",
                   false);
  b->device = device;
  b->name = p.name;
  size_t freeB = 0, totalB = 0;
  check(cudaMemGetInfo(&freeB, &totalB), "reading free device memory");
  b->budget = budgetBytes ? budgetBytes : size_t(double(freeB) * 0.8);
  if (const char* v = std::getenv("HETMOE_SPMETA")) b->metaVariant = std::atoi(v) == 1 ? 1 : 0;
  b->wg = wgOptionsFor(device);
  check(cudaStreamCreateWithFlags(&b->stream, cudaStreamNonBlocking), "creating a CUDA stream");
  check(cudaStreamCreateWithFlags(&b->up.stream, cudaStreamNonBlocking), "creating the upload stream");
  for (auto& e : b->ev) check(cudaEventCreate(&e), "creating CUDA events");
  check(cudaEventCreateWithFlags(&b->evSleep, cudaEventBlockingSync | cudaEventDisableTiming), "creating CUDA events");
  for (auto& e : b->up.chunkFree) check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "creating CUDA events");
  // A pool of our own (not the device's default one, which other code in the process may use): freed
  // blocks stay in it (release threshold: never), so evict + upload reuse memory without returning it
  // to the driver.
  int pools = 0;
  if (cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device) != cudaSuccess) cudaGetLastError(), pools = 0;
  if (pools) {
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    check(cudaMemPoolCreate(&b->pool, &props), "creating the device memory pool");
    uint64_t keepAll = UINT64_MAX;
    check(cudaMemPoolSetAttribute(b->pool, cudaMemPoolAttrReleaseThreshold, &keepAll), "configuring the device memory pool");
  }
  std::lock_guard<std::mutex> l(gMu);
  int h = gNext++;
  gBackends[h] = std::move(b);
  return h;
}

void close(int h) {
  std::shared_ptr<Backend> b;
  {
    std::lock_guard<std::mutex> l(gMu);
    auto it = gBackends.find(h);
    if (it == gBackends.end()) return;
    b = std::move(it->second);
    gBackends.erase(it);
  }
  // Waits for the layer call and the upload in flight, if any (lock order: layerMu, up.mu, mu).
  std::lock_guard<std::mutex> ll(b->layerMu);
  std::lock_guard<std::mutex> ul(b->up.mu);
  std::lock_guard<std::mutex> l(b->mu);
  b->closed = true;
  cudaSetDevice(b->device);
  for (auto& kv : b->cache) freeExpert(*b, kv.second);
  b->cache.clear();
  cudaStreamSynchronize(b->stream);
  cudaStreamSynchronize(b->up.stream);
  for (const Registered& r : b->registered) cudaHostUnregister(r.p);
  b->registered.clear();
  b->hidF32.release(*b, b->stream);
  b->hidBf16.release(*b, b->stream);
  b->hidBf16Nat.release(*b, b->stream);
  b->H.release(*b, b->stream);
  b->out.release(*b, b->stream);
  b->outCompact.release(*b, b->stream);
  b->args.release(*b, b->stream);
  devFree(*b, b->up.scratch, b->up.stream);
  cudaStreamSynchronize(b->stream);
  cudaStreamSynchronize(b->up.stream);
  if (b->pinned) cudaFreeHost(b->pinned);
  if (b->stage) cudaFreeHost(b->stage);
  if (b->up.pinned) cudaFreeHost(b->up.pinned);
  for (auto& e : b->ev) cudaEventDestroy(e);
  if (b->evSleep) cudaEventDestroy(b->evSleep);
  for (auto& e : b->up.chunkFree) cudaEventDestroy(e);
  cudaStreamDestroy(b->stream);
  cudaStreamDestroy(b->up.stream);
  if (b->pool) cudaMemPoolDestroy(b->pool);
}

std::string deviceName(int h) { return getShared(h)->name; }

size_t upload(int h, const std::string& key, int ffn, const MatrixSrc* gate, const MatrixSrc& up,
              const MatrixSrc& down) {
  return uploadExpert(h, key, ffn, gate, up, down);
}

bool evict(int h, const std::string& key) {
  std::shared_ptr<Backend> keep = getShared(h);
  Backend& b = *keep;
  std::lock_guard<std::mutex> l(b.mu);
  if (b.closed) throw GpuError("GPU backend handle " + std::to_string(h) + " was closed", false);
  auto it = b.cache.find(key);
  if (it == b.cache.end()) return false;
  cudaSetDevice(b.device);
  freeExpert(b, it->second);  // stream-ordered after the layers that read it: no wait here
  b.cache.erase(it);
  return true;
}

bool resident(int h, const std::string& key) {
  std::shared_ptr<Backend> keep = getShared(h);
  Backend& b = *keep;
  std::lock_guard<std::mutex> l(b.mu);
  if (b.closed) throw GpuError("GPU backend handle " + std::to_string(h) + " was closed", false);
  return b.cache.count(key) > 0;
}

size_t bytesUsed(int h) {
  std::shared_ptr<Backend> keep = getShared(h);
  Backend& b = *keep;
  std::lock_guard<std::mutex> l(b.mu);
  if (b.closed) throw GpuError("GPU backend handle " + std::to_string(h) + " was closed", false);
  return b.used;
}

size_t budget(int h) { return getShared(h)->budget; }

int largeBatchMinTokens(int h) {
  const WgOptions& o = getShared(h)->wg;
  return o.enabled ? o.minTokens : 0;
}

std::vector<ExpertInfo> residentExperts(int h) {
  std::shared_ptr<Backend> keep = getShared(h);
  Backend& b = *keep;
  std::lock_guard<std::mutex> l(b.mu);
  if (b.closed) throw GpuError("GPU backend handle " + std::to_string(h) + " was closed", false);
  std::vector<ExpertInfo> v;
  for (auto& kv : b.cache) v.push_back({kv.first, kv.second.ffn, kv.second.format, kv.second.D, kv.second.F, kv.second.bytes});
  return v;
}

std::string registerHost(int h, void* p, size_t bytes) {
  std::shared_ptr<Backend> keep = getShared(h);
  Backend& b = *keep;
  std::lock_guard<std::mutex> ll(b.layerMu);  // layer calls read the registered ranges under layerMu
  std::lock_guard<std::mutex> l(b.mu);
  if (b.closed) throw GpuError("GPU backend handle " + std::to_string(h) + " was closed", false);
  cudaSetDevice(b.device);
  cudaError_t e = cudaHostRegister(p, bytes, cudaHostRegisterMapped | cudaHostRegisterPortable);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
  }
  void* dp = nullptr;
  e = cudaHostGetDevicePointer(&dp, p, 0);
  if (e != cudaSuccess || dp != p) {  // 64-bit UVA: the device sees the same address
    cudaGetLastError();
    cudaHostUnregister(p);
    return e != cudaSuccess ? std::string(cudaGetErrorName(e)) + " (cudaHostGetDevicePointer)"
                            : "the registered memory has a different device address (no unified addressing)";
  }
  b.registered.push_back({static_cast<char*>(p), bytes});
  return "";
}

void unregisterHost(int h, void* p) {
  std::shared_ptr<Backend> keep = getShared(h);
  Backend& b = *keep;
  // A layer call reads the registered ranges, and copies into them after it has let go of mu: wait
  // for it (layerMu).
  std::lock_guard<std::mutex> ll(b.layerMu);
  std::lock_guard<std::mutex> l(b.mu);
  if (b.closed) throw GpuError("GPU backend handle " + std::to_string(h) + " was closed", false);
  cudaSetDevice(b.device);
  cudaStreamSynchronize(b.stream);
  for (size_t i = 0; i < b.registered.size(); ++i)
    if (b.registered[i].p == p) {
      check(cudaHostUnregister(p), "unregistering host memory");
      b.registered.erase(b.registered.begin() + i);
      return;
    }
}

LayerTiming runLayer(int h, const std::vector<LayerExpert>& experts, const float* hidden, int T, int D, float* out,
                     int outRowsTotal, bool sleepWait) {
  const auto start = std::chrono::steady_clock::now();
  const auto msSince = [start] { return std::chrono::duration<float, std::milli>(std::chrono::steady_clock::now() - start).count(); };
  std::shared_ptr<Backend> keep = getShared(h);
  Backend& b = *keep;
  // layerMu: the scratch and pinned buffers below, and the registered ranges (their writers hold both
  // layerMu and mu). close() sets `closed` under layerMu too, so it cannot change during this call.
  std::lock_guard<std::mutex> ll(b.layerMu);
  if (b.closed) throw GpuError("GPU backend handle " + std::to_string(h) + " was closed", false);
  check(cudaSetDevice(b.device), "selecting the CUDA device");
  LayerTiming timing;
  const size_t hidBytes = size_t(T) * D * 4, outBytes = size_t(outRowsTotal) * D * 4;
  const Registered* hidReg = (reinterpret_cast<uintptr_t>(hidden) % 16 == 0) ? findRegistered(b, hidden, hidBytes) : nullptr;
  const Registered* outReg = (reinterpret_cast<uintptr_t>(out) % 16 == 0) ? findRegistered(b, out, outBytes) : nullptr;
  int S = 0;
  for (const LayerExpert& le : experts) S += le.n;
  // Staged inputs are copied to pinned memory before mu is taken (the largest host copy of the call).
  const size_t outStageBytes = size_t(S) * D * 4;
  ensurePinned(b.stage, b.stageCap, std::max(hidReg ? 0 : hidBytes, outReg ? 0 : outStageBytes),
               "allocating the pinned staging buffer");
  if (!hidReg && S > 0) std::memcpy(b.stage, hidden, hidBytes);

  std::unique_lock<std::mutex> l(b.mu);  // the cache, until the kernels that read it are enqueued
  // Resolve experts, group them by (format, ffn, F), concatenate the selection arrays.
  struct Sel {
    const DevExpert* e;
    const LayerExpert* le;
    int tokOff;
  };
  std::vector<Sel> sels;
  int maxF = 0;
  S = 0;
  for (const LayerExpert& le : experts) {
    auto it = b.cache.find(le.key);
    if (it == b.cache.end()) throw GpuError("runLayer: expert " + le.key + " is not resident on the GPU", false);
    const DevExpert& e = it->second;
    if (e.D != D)
      throw GpuError("runLayer: expert " + le.key + " has D=" + std::to_string(e.D) + ", hidden has " + std::to_string(D), false);
    for (int i = 0; i < le.n; ++i) {
      if (le.tokenRows[i] < 0 || le.tokenRows[i] >= T)
        throw GpuError("runLayer: expert " + le.key + " tokenRows[" + std::to_string(i) + "] = " +
                           std::to_string(le.tokenRows[i]) + " is outside [0, " + std::to_string(T) + ")", false);
      if (le.outRows[i] < 0 || le.outRows[i] >= outRowsTotal)
        throw GpuError("runLayer: expert " + le.key + " outRows[" + std::to_string(i) + "] = " +
                           std::to_string(le.outRows[i]) + " is outside [0, " + std::to_string(outRowsTotal) + ")", false);
    }
    sels.push_back({&e, &le, S});
    S += le.n;
    maxF = std::max(maxF, e.F);
  }
  if (S == 0) return timing;
  timing.staged = !hidReg || !outReg;

  // Per-call arrays: tokenRows | outRows | scales | then per group: ExpDesc[], WorkItem[] x2.
  std::vector<int32_t> tok(S), orow(S);
  std::vector<float> scl(S);
  for (const Sel& s : sels) {
    std::memcpy(tok.data() + s.tokOff, s.le->tokenRows, sizeof(int32_t) * s.le->n);
    std::memcpy(orow.data() + s.tokOff, s.le->outRows, sizeof(int32_t) * s.le->n);
    for (int i = 0; i < s.le->n; ++i) scl[s.tokOff + i] = s.le->scale ? s.le->scale[i] : 1.f;
  }
  // Groups: experts that share (format, ffn, F) go into one launch per projection.
  std::map<std::tuple<int, int, int>, std::vector<const Sel*>> groups;
  for (const Sel& s : sels)
    if (s.le->n > 0) groups[{s.e->format, s.e->ffn, s.e->F}].push_back(&s);

  HostLaunchPlan plan;
  plan.begin(b.wg);
  for (auto& kv : groups) {
    const int fmt = std::get<0>(kv.first), ffn = std::get<1>(kv.first);
    std::vector<GroupExpert> ge;
    for (const Sel* s : kv.second) {
      GroupExpert x;
      x.gate = ffn == kSwiGLU ? &s->e->mats[0].w : nullptr;
      x.up = &s->e->mats[1].w;
      x.down = &s->e->mats[2].w;
      x.tokOff = s->tokOff;
      x.n = s->le->n;
      ge.push_back(x);
    }
    plan.addGroup(fmt, ffn, ge);
  }
  const size_t idxBytes = align256(sizeof(int32_t) * S) * 2 + align256(sizeof(float) * S);
  const size_t planBytes = plan.bytes();
  ensurePinned(b.pinned, b.pinnedCap, idxBytes + planBytes, "allocating the pinned argument buffer");
  char* hp = b.pinned;
  std::memcpy(hp, tok.data(), sizeof(int32_t) * S);
  std::memcpy(hp + align256(sizeof(int32_t) * S), orow.data(), sizeof(int32_t) * S);
  std::memcpy(hp + 2 * align256(sizeof(int32_t) * S), scl.data(), sizeof(float) * S);
  b.args.ensure(b, b.stream, idxBytes + planBytes, "allocating the per-call index arrays");
  char* dp = b.args.p;
  const int* dTok = reinterpret_cast<const int*>(dp);
  const int* dOutRows = reinterpret_cast<const int*>(dp + align256(sizeof(int32_t) * S));
  const float* dScale = reinterpret_cast<const float*>(dp + 2 * align256(sizeof(int32_t) * S));
  plan.write(hp + idxBytes, dp + idxBytes);

  b.hidBf16.ensure(b, b.stream, size_t(T) * D, "allocating the device hidden buffer");
  const bool natural = plan.needsNaturalHidden();
  if (natural) b.hidBf16Nat.ensure(b, b.stream, size_t(T) * D, "allocating the device hidden buffer (natural order)");
  b.H.ensure(b, b.stream, size_t(S) * maxF, "allocating the intermediate activations");
  b.out.ensure(b, b.stream, size_t(outRowsTotal) * D, "allocating the device output buffer");
  b.hidF32.ensure(b, b.stream, size_t(T) * D, "allocating the device fp32 hidden buffer");
  if (!outReg) b.outCompact.ensure(b, b.stream, size_t(S) * D, "allocating the compact output buffer");

  timing.prepMs = msSince();
  check(cudaEventRecord(b.ev[0], b.stream), "recording an event");
  check(cudaMemcpyAsync(dp, hp, idxBytes + planBytes, cudaMemcpyHostToDevice, b.stream), "copying the selection arrays");
  check(cudaMemcpyAsync(b.hidF32.p, hidReg ? static_cast<const void*>(hidden) : b.stage, hidBytes, cudaMemcpyHostToDevice,
                        b.stream),
        hidReg ? "copying hidden states (DMA)" : "copying hidden states (staged)");
  launchToBf16(b.hidF32.p, b.hidBf16.p, (long long)T * D, D, b.stream, natural ? b.hidBf16Nat.p : nullptr);
  check(cudaGetLastError(), "launching the hidden-state conversion");
  check(cudaEventRecord(b.ev[1], b.stream), "recording an event");
  plan.launchAll(b.hidBf16.p, natural ? b.hidBf16Nat.p : nullptr, D, dTok, b.H.p, maxF, b.out.p, D, dOutRows, dScale,
                 b.stream);
  check(cudaGetLastError(), "launching the expert kernels");
  check(cudaEventRecord(b.ev[2], b.stream), "recording an event");
  // Every read of expert memory is enqueued: an evict from here on queues its free after these kernels.
  l.unlock();

  if (outReg) {
    launchCopyRows(b.out.p, out, dOutRows, S, D, false, b.stream);
    check(cudaGetLastError(), "launching the output copy");
  } else {
    // The staged hidden copy above precedes this one on the stream, so the buffer is free again.
    launchCopyRows(b.out.p, b.outCompact.p, dOutRows, S, D, true, b.stream);
    check(cudaGetLastError(), "launching the output copy");
    check(cudaMemcpyAsync(b.stage, b.outCompact.p, outStageBytes, cudaMemcpyDeviceToHost, b.stream),
          "copying outputs back (staged)");
  }
  check(cudaEventRecord(b.ev[3], b.stream), "recording an event");
  if (sleepWait) {
    check(cudaEventRecord(b.evSleep, b.stream), "recording an event");
    check(cudaEventSynchronize(b.evSleep), "running the expert layer");
  }
  check(cudaStreamSynchronize(b.stream), "running the expert layer");
  if (!outReg)
    for (int i = 0; i < S; ++i) std::memcpy(out + size_t(orow[i]) * D, b.stage + size_t(i) * D * 4, size_t(D) * 4);
  cudaEventElapsedTime(&timing.gpuMs, b.ev[0], b.ev[3]);
  cudaEventElapsedTime(&timing.kernelMs, b.ev[1], b.ev[2]);
  cudaEventElapsedTime(&timing.copyInMs, b.ev[0], b.ev[1]);
  timing.hostMs = msSince();
  return timing;
}

}  // namespace gpu
}  // namespace hetmoe
