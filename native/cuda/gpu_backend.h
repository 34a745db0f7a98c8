// The GPU backend as the addon sees it: plain C++ (no CUDA headers), so gpu_bindings.cc compiles the
// same with or without CUDA. Every function may throw GpuError; its `oom` flag marks out-of-memory
// (device allocation failed, or the expert cache's byte budget is exhausted), which the runtime
// answers by computing on the CPU instead.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace hetmoe {
namespace gpu {

struct GpuError : std::runtime_error {
  bool oom;
  GpuError(const std::string& what, bool isOom) : std::runtime_error(what), oom(isOom) {}
};

// One stored matrix: layout.h bytes (host memory, e.g. the mapped weights file).
struct MatrixSrc {
  int rows = 0, cols = 0;
  int format = 0;  // layout.h WeightFormat: 0 dense, 1 2:4, 2 75%
  int dtype = 0;   // layout.h WeightDtype: 0 bf16, 1 fp32
  const uint8_t* values = nullptr;
  size_t valuesBytes = 0;
  const uint8_t* meta = nullptr;
  size_t metaBytes = 0;
  const uint8_t* select = nullptr;
  size_t selectBytes = 0;
};

enum Ffn : int { kSwiGLU = 0, kGeLU = 1 };

struct ExpertInfo {
  std::string key;
  int ffn = 0, format = 0, D = 0, F = 0;
  size_t bytes = 0;
};

// One expert's selections for runLayer: out[outRows[i]] = scale[i] * FFN(hidden[tokenRows[i]]).
struct LayerExpert {
  std::string key;
  const int32_t* tokenRows = nullptr;
  const int32_t* outRows = nullptr;
  const float* scale = nullptr;  // nullptr: 1
  int n = 0;
};

struct LayerTiming {
  float gpuMs = 0;        // stream time of the whole call (copies in, kernels, copies out)
  float kernelMs = 0;     // the two projection launches of every format group
  float copyInMs = 0;     // of gpuMs, before the kernels: selection arrays and hidden rows in, bf16 conversion
  bool staged = false;    // hidden or out went through the pinned staging buffer
  float hostMs = 0;       // wall time of the call on its thread: preparing, enqueueing, waiting
  float prepMs = 0;       // of which before the first copy was enqueued (lookups, plan building)
};

int open(int device, size_t budgetBytes);  // returns a handle
void close(int handle);
std::string deviceName(int handle);

// Uploads (and repacks) one expert; replaces an expert of the same key. Returns its device bytes.
// Blocking; the copies go through a second stream and pinned staging chunks, and layer calls, evict,
// resident and bytesUsed go on meanwhile (they wait only for short bookkeeping). Uploads serialize
// among themselves. The expert's bytes count against the budget from the start of the upload (GPU_OOM
// when they do not fit) and it becomes resident when the upload returns. Call it from a worker thread
// to keep the caller free (the addon's gpuUploadAsync does).
size_t upload(int handle, const std::string& key, int ffn, const MatrixSrc* gate, const MatrixSrc& up,
              const MatrixSrc& down);
// Frees an expert's memory after the layer calls already running that read it (never waits).
bool evict(int handle, const std::string& key);
bool resident(int handle, const std::string& key);
size_t bytesUsed(int handle);  // resident experts plus uploads in flight
size_t budget(int handle);
// Tokens of a call's busiest expert from which its format group runs the large-batch kernel; 0: never.
int largeBatchMinTokens(int handle);
std::vector<ExpertInfo> residentExperts(int handle);

// Page-locks host memory (the runtime's arena) for DMA and zero-copy. Returns "" on success, or the
// reason it failed (then copies go through a pinned staging buffer).
std::string registerHost(int handle, void* p, size_t bytes);
void unregisterHost(int handle, void* p);

// Blocking (call it from a worker thread); layer calls serialize among themselves. hidden: T x D fp32; out: outRowsTotal x D fp32; only the
// rows named in outRows are written.
// sleepWait: the calling thread sleeps until the device is done instead of spinning (a call beside CPU
// work, whose workers want every core); it wakes a little later.
LayerTiming runLayer(int handle, const std::vector<LayerExpert>& experts, const float* hidden, int T, int D,
                     float* out, int outRowsTotal, bool sleepWait = false);

// The benchmark (gpu_bench.cu): returns its results as a JSON text.
struct BenchOptions {
  std::string preset = "mixtral";
  int E = 8, D = 4096, F = 14336, topK = 2;
  std::vector<int> tokensPerExpert{1, 4, 16, 64, 256, 1024, 4096};
  std::vector<std::string> formats{"dense", "2:4", "75%"};
  bool baselines = true;
  int minReps = 5;
  double targetSecondsPerPoint = 0.25;
  int device = 0;
};
std::string runBench(const BenchOptions& o);

}  // namespace gpu
}  // namespace hetmoe
