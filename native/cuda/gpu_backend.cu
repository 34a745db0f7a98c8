// ECSS, device side: the expert cache in device memory, host registration of the arena, and the
// layer call (copies in, one launch per projection per format group, copies out).
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
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

struct DevMatrix {
  DevWeights w;
  void* alloc = nullptr;  // one allocation holds vals, meta, sel
  size_t bytes = 0;
};

struct DevExpert {
  int ffn = 0, format = 0, D = 0, F = 0;
  DevMatrix mats[3];  // gate (SwiGLU only), up, down
  size_t bytes = 0;
};

template <typename T>
struct DevBuf {
  T* p = nullptr;
  size_t cap = 0;  // elements
  void ensure(size_t n, const char* what) {
    if (n <= cap) return;
    if (p) cudaFree(p);
    p = nullptr;
    cap = 0;
    check(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)), what);
    cap = n;
  }
  void release() {
    if (p) cudaFree(p);
    p = nullptr;
    cap = 0;
  }
};

struct Registered {
  char* p;
  size_t bytes;
};

struct Backend {
  std::mutex mu;
  int device = 0;
  std::string name;
  size_t budget = 0, used = 0;
  cudaStream_t stream = nullptr;
  cudaEvent_t ev[4] = {};
  std::map<std::string, DevExpert> cache;
  std::vector<Registered> registered;
  int metaVariant = 0;
  bool closed = false;
  // scratch
  DevBuf<float> hidF32;
  DevBuf<__nv_bfloat16> hidBf16, hidBf16Nat, H;
  WgOptions wg;  // when the large-batch kernel runs (moe_launch.cuh)
  DevBuf<float> out;
  DevBuf<float> outCompact;
  DevBuf<char> args;
  char* pinned = nullptr;  // staging for args, and for hidden/out when they are not registered
  size_t pinnedCap = 0;
};

std::mutex gMu;
// shared_ptr: a layer call in flight keeps its backend alive while close() waits for it.
std::map<int, std::shared_ptr<Backend>> gBackends;
int gNext = 1;

std::shared_ptr<Backend> getShared(int h) {
  std::lock_guard<std::mutex> l(gMu);
  auto it = gBackends.find(h);
  if (it == gBackends.end()) throw GpuError("GPU backend handle " + std::to_string(h) + " is not open (closed?)", false);
  return it->second;
}

void ensurePinned(Backend& b, size_t bytes) {
  if (bytes <= b.pinnedCap) return;
  if (b.pinned) cudaFreeHost(b.pinned);
  b.pinned = nullptr;
  b.pinnedCap = 0;
  size_t cap = std::max<size_t>(bytes, size_t(1) << 20);
  check(cudaMallocHost(&b.pinned, cap), "allocating the pinned staging buffer");
  b.pinnedCap = cap;
}

// Device pointer for [p, p+bytes) if it lies inside a registered range, else nullptr.
const Registered* findRegistered(Backend& b, const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (const Registered& r : b.registered)
    if (c >= r.p && c + bytes <= r.p + r.bytes) return &r;
  return nullptr;
}

void freeExpert(Backend& b, DevExpert& e) {
  for (DevMatrix& m : e.mats)
    if (m.alloc) cudaFree(m.alloc), m.alloc = nullptr;
  b.used -= e.bytes;
  e.bytes = 0;
}

size_t align256(size_t n) { return (n + 255) & ~size_t(255); }

void validate(const MatrixSrc& m, const char* what, int rows, int cols, int format) {
  auto bad = [&](const std::string& why) {
    throw GpuError(std::string("uploading ") + what + ": " + why, false);
  };
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

// Copies layout.h bytes to a temporary device buffer and repacks them into `dm`.
void uploadMatrix(Backend& b, DevMatrix& dm, const MatrixSrc& m, const char* what) {
  const int srows = m.format == 2 ? m.rows / 2 : m.rows;
  const size_t es = m.dtype == 0 ? 2 : 4;
  const size_t vcols = m.format == 0 ? m.cols : m.cols / 2;
  const size_t srcVals = size_t(srows) * vcols * es;
  const size_t srcMeta = m.format ? size_t(srows) * (m.cols / 16) * 4 : 0;
  const int chunks = (m.cols + 127) / 128;
  const size_t srcSel = m.format == 2 ? size_t(srows) * chunks : 0;
  DevWeights& w = dm.w;
  w.format = m.format;
  w.rows = m.rows;
  w.cols = m.cols;
  w.mTiles = srows / 16;
  w.kSteps = m.cols / 64;
  w.chunks = chunks;
  const size_t valsB = size_t(srows) * (m.format == 0 ? m.cols : m.cols / 2) * 2;
  const size_t metaB = m.format ? size_t(w.mTiles) * w.kSteps * 32 * 4 : 0;
  const size_t selB = m.format == 2 ? size_t(w.mTiles) * chunks * 4 : 0;
  const size_t total = align256(valsB) + align256(metaB) + align256(selB);
  if (b.used + total > b.budget)
    throw GpuError(std::string("uploading ") + what + ": the GPU expert cache budget (" + std::to_string(b.budget) +
                       " bytes) is full (" + std::to_string(b.used) + " used, " + std::to_string(total) +
                       " more needed); evict experts first",
                   true);
  char* alloc = nullptr;
  check(cudaMalloc(&alloc, total), std::string("allocating device memory for ") + what);
  dm.alloc = alloc;
  dm.bytes = total;
  b.used += total;
  w.vals = reinterpret_cast<const uint4*>(alloc);
  w.meta = metaB ? reinterpret_cast<const uint32_t*>(alloc + align256(valsB)) : nullptr;
  w.sel = selB ? reinterpret_cast<const uint32_t*>(alloc + align256(valsB) + align256(metaB)) : nullptr;

  char* tmp = nullptr;
  const size_t tmpB = align256(srcVals) + align256(srcMeta) + align256(srcSel);
  check(cudaMalloc(&tmp, tmpB), std::string("allocating upload scratch for ") + what);
  struct Free {
    char* p;
    ~Free() { cudaFree(p); }
  } freeTmp{tmp};
  const std::string doing = std::string("copying ") + what + " to the device";
  check(cudaMemcpyAsync(tmp, m.values, srcVals, cudaMemcpyHostToDevice, b.stream), doing);
  if (srcMeta) check(cudaMemcpyAsync(tmp + align256(srcVals), m.meta, srcMeta, cudaMemcpyHostToDevice, b.stream), doing);
  if (srcSel)
    check(cudaMemcpyAsync(tmp + align256(srcVals) + align256(srcMeta), m.select, srcSel, cudaMemcpyHostToDevice,
                          b.stream),
          doing);
  repackOnDevice(w, tmp, m.dtype, reinterpret_cast<const uint32_t*>(tmp + align256(srcVals)),
                 reinterpret_cast<const uint8_t*>(tmp + align256(srcVals) + align256(srcMeta)), b.metaVariant,
                 b.stream);
  check(cudaStreamSynchronize(b.stream), std::string("repacking ") + what);
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
  for (auto& e : b->ev) check(cudaEventCreate(&e), "creating CUDA events");
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
  std::lock_guard<std::mutex> l(b->mu);
  b->closed = true;
  cudaSetDevice(b->device);
  cudaStreamSynchronize(b->stream);
  for (auto& kv : b->cache) freeExpert(*b, kv.second);
  b->cache.clear();
  b->registered.clear();
  for (const Registered& r : b->registered) cudaHostUnregister(r.p);
  b->hidF32.release();
  b->hidBf16.release();
  b->hidBf16Nat.release();
  b->H.release();
  b->out.release();
  b->outCompact.release();
  b->args.release();
  if (b->pinned) cudaFreeHost(b->pinned);
  for (auto& e : b->ev) cudaEventDestroy(e);
  cudaStreamDestroy(b->stream);
}

std::string deviceName(int h) { return getShared(h)->name; }

size_t upload(int h, const std::string& key, int ffn, const MatrixSrc* gate, const MatrixSrc& up,
              const MatrixSrc& down) {
  std::shared_ptr<Backend> keep = getShared(h);
  Backend& b = *keep;
  std::lock_guard<std::mutex> l(b.mu);
  if (b.closed) throw GpuError("GPU backend handle " + std::to_string(h) + " was closed", false);
  check(cudaSetDevice(b.device), "selecting the CUDA device");
  if (ffn != kSwiGLU && ffn != kGeLU) throw GpuError("uploading expert " + key + ": unknown FFN kind", false);
  if (ffn == kSwiGLU && !gate) throw GpuError("uploading expert " + key + ": a SwiGLU expert needs a gate matrix", false);
  const int F = up.rows, D = up.cols, fmt = up.format;
  const std::string w = "expert " + key;
  if (gate) validate(*gate, (w + " gate").c_str(), F, D, fmt);
  validate(up, (w + " up").c_str(), F, D, fmt);
  validate(down, (w + " down").c_str(), D, F, fmt);
  auto it = b.cache.find(key);
  if (it != b.cache.end()) {
    freeExpert(b, it->second);
    b.cache.erase(it);
  }
  DevExpert e;
  e.ffn = ffn;
  e.format = fmt;
  e.D = D;
  e.F = F;
  try {
    if (ffn == kSwiGLU) uploadMatrix(b, e.mats[0], *gate, (w + " gate").c_str());
    uploadMatrix(b, e.mats[1], up, (w + " up").c_str());
    uploadMatrix(b, e.mats[2], down, (w + " down").c_str());
  } catch (...) {
    for (DevMatrix& m : e.mats)
      if (m.alloc) cudaFree(m.alloc), b.used -= m.bytes;
    throw;
  }
  for (DevMatrix& m : e.mats) e.bytes += m.bytes;
  b.cache[key] = e;
  return e.bytes;
}

bool evict(int h, const std::string& key) {
  std::shared_ptr<Backend> keep = getShared(h);
  Backend& b = *keep;
  std::lock_guard<std::mutex> l(b.mu);
  if (b.closed) throw GpuError("GPU backend handle " + std::to_string(h) + " was closed", false);
  auto it = b.cache.find(key);
  if (it == b.cache.end()) return false;
  cudaSetDevice(b.device);
  cudaStreamSynchronize(b.stream);
  freeExpert(b, it->second);
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
                     int outRowsTotal) {
  const auto start = std::chrono::steady_clock::now();
  const auto msSince = [start] { return std::chrono::duration<float, std::milli>(std::chrono::steady_clock::now() - start).count(); };
  std::shared_ptr<Backend> keep = getShared(h);
  Backend& b = *keep;
  std::lock_guard<std::mutex> l(b.mu);
  if (b.closed) throw GpuError("GPU backend handle " + std::to_string(h) + " was closed", false);
  check(cudaSetDevice(b.device), "selecting the CUDA device");
  LayerTiming timing;

  // Resolve experts, group them by (format, ffn, F), concatenate the selection arrays.
  struct Sel {
    const DevExpert* e;
    const LayerExpert* le;
    int tokOff;
  };
  std::vector<Sel> sels;
  int S = 0, maxF = 0;
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
  plan.begin(S, b.wg);
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
  ensurePinned(b, idxBytes + planBytes);
  char* hp = b.pinned;
  std::memcpy(hp, tok.data(), sizeof(int32_t) * S);
  std::memcpy(hp + align256(sizeof(int32_t) * S), orow.data(), sizeof(int32_t) * S);
  std::memcpy(hp + 2 * align256(sizeof(int32_t) * S), scl.data(), sizeof(float) * S);
  b.args.ensure(idxBytes + planBytes, "allocating the per-call index arrays");
  char* dp = b.args.p;
  const int* dTok = reinterpret_cast<const int*>(dp);
  const int* dOutRows = reinterpret_cast<const int*>(dp + align256(sizeof(int32_t) * S));
  const float* dScale = reinterpret_cast<const float*>(dp + 2 * align256(sizeof(int32_t) * S));
  plan.write(hp + idxBytes, dp + idxBytes);

  b.hidBf16.ensure(size_t(T) * D, "allocating the device hidden buffer");
  const bool natural = plan.needsNaturalHidden();
  if (natural) b.hidBf16Nat.ensure(size_t(T) * D, "allocating the device hidden buffer (natural order)");
  b.H.ensure(size_t(S) * maxF, "allocating the intermediate activations");
  b.out.ensure(size_t(outRowsTotal) * D, "allocating the device output buffer");

  const size_t hidBytes = size_t(T) * D * 4, outBytes = size_t(outRowsTotal) * D * 4;
  const Registered* hidReg = (reinterpret_cast<uintptr_t>(hidden) % 16 == 0) ? findRegistered(b, hidden, hidBytes) : nullptr;
  const Registered* outReg = (reinterpret_cast<uintptr_t>(out) % 16 == 0) ? findRegistered(b, out, outBytes) : nullptr;
  timing.staged = !hidReg || !outReg;

  timing.prepMs = msSince();
  check(cudaEventRecord(b.ev[0], b.stream), "recording an event");
  check(cudaMemcpyAsync(dp, hp, idxBytes + planBytes, cudaMemcpyHostToDevice, b.stream), "copying the selection arrays");
  b.hidF32.ensure(size_t(T) * D, "allocating the device fp32 hidden buffer");
  if (hidReg) {
    check(cudaMemcpyAsync(b.hidF32.p, hidden, hidBytes, cudaMemcpyHostToDevice, b.stream), "copying hidden states (DMA)");
  } else {
    // Not registered: stage through pinned memory (the pinned buffer is reused after a sync).
    check(cudaStreamSynchronize(b.stream), "copying the selection arrays");
    ensurePinned(b, hidBytes);
    std::memcpy(b.pinned, hidden, hidBytes);
    check(cudaMemcpyAsync(b.hidF32.p, b.pinned, hidBytes, cudaMemcpyHostToDevice, b.stream), "copying hidden states (staged)");
  }
  launchToBf16(b.hidF32.p, b.hidBf16.p, (long long)T * D, D, b.stream, natural ? b.hidBf16Nat.p : nullptr);
  check(cudaGetLastError(), "launching the hidden-state conversion");
  check(cudaEventRecord(b.ev[1], b.stream), "recording an event");
  plan.launchAll(b.hidBf16.p, natural ? b.hidBf16Nat.p : nullptr, D, dTok, b.H.p, maxF, b.out.p, D, dOutRows, dScale,
                 b.stream);
  check(cudaGetLastError(), "launching the expert kernels");
  check(cudaEventRecord(b.ev[2], b.stream), "recording an event");
  if (outReg) {
    launchCopyRows(b.out.p, out, dOutRows, S, D, false, b.stream);
    check(cudaGetLastError(), "launching the output copy");
  } else {
    b.outCompact.ensure(size_t(S) * D, "allocating the compact output buffer");
    launchCopyRows(b.out.p, b.outCompact.p, dOutRows, S, D, true, b.stream);
    check(cudaGetLastError(), "launching the output copy");
    check(cudaStreamSynchronize(b.stream), "running the expert kernels");
    ensurePinned(b, size_t(S) * D * 4);
    check(cudaMemcpyAsync(b.pinned, b.outCompact.p, size_t(S) * D * 4, cudaMemcpyDeviceToHost, b.stream),
          "copying outputs back (staged)");
  }
  check(cudaEventRecord(b.ev[3], b.stream), "recording an event");
  check(cudaStreamSynchronize(b.stream), "running the expert layer");
  if (!outReg)
    for (int i = 0; i < S; ++i) std::memcpy(out + size_t(orow[i]) * D, b.pinned + size_t(i) * D * 4, size_t(D) * 4);
  cudaEventElapsedTime(&timing.gpuMs, b.ev[0], b.ev[3]);
  cudaEventElapsedTime(&timing.kernelMs, b.ev[1], b.ev[2]);
  timing.hostMs = msSince();
  return timing;
}

}  // namespace gpu
}  // namespace hetmoe
