// `hetmoe bench gpu`: our layer kernel in each format against cuBLAS (dense) and cuSPARSELt (2:4),
// all in one process on the same random weights and routings. cuBLAS and cuSPARSELt are loaded at
// run time with dlopen (no headers or import libraries exist on the build machine); the few entry
// points used are declared here by hand.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <glob.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cuda/gpu_backend.h"
#include "cuda/moe_kernels.cuh"
#include "cuda/moe_launch.cuh"

namespace hetmoe {
namespace gpu {
namespace {

// ------------------------------------------------------------------------------------------------
// Random weights and their pruning, on the device.

__device__ __forceinline__ uint32_t hash32(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

// uniform in [-scale, scale)
static __global__ void genKernel(__nv_bfloat16* dst, long long n, uint64_t seed, float scale) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    const uint32_t h = hash32(seed * 0x9E3779B97F4A7C15ULL + i);
    dst[i] = __float2bfloat16_rn(scale * (float(h) * (2.f / 4294967296.f) - 1.f));
  }
}

// Keeps the two largest magnitudes of each group of 4 of row r over columns [c0, c1).
__device__ void prune24Group(const __nv_bfloat16* w, int& i0, int& i1) {
  float a[4];
  for (int k = 0; k < 4; ++k) a[k] = fabsf(__bfloat162float(w[k]));
  int best = 0;
  for (int k = 1; k < 4; ++k)
    if (a[k] > a[best]) best = k;
  int second = best == 0 ? 1 : 0;
  for (int k = 0; k < 4; ++k)
    if (k != best && a[k] > a[second]) second = k;
  i0 = min(best, second);
  i1 = max(best, second);
}

// dense [rows][cols] -> 2:4 layout.h (values [rows][cols/2], meta [rows][cols/16]); optionally the
// pruned matrix in dense form (for cuSPARSELt). One thread per (row, 32-column word).
static __global__ void prune24Kernel(const __nv_bfloat16* w, int rows, int cols, __nv_bfloat16* vals, uint32_t* meta,
                              __nv_bfloat16* prunedDense) {
  const long long words = (long long)rows * (cols / 32);
  for (long long id = blockIdx.x * (long long)blockDim.x + threadIdx.x; id < words; id += (long long)gridDim.x * blockDim.x) {
    const long long r = id / (cols / 32);
    const int wi = id % (cols / 32);
    uint32_t m = 0;
    for (int gi = 0; gi < 8; ++gi) {
      const long long c = 32LL * wi + 4 * gi;
      const __nv_bfloat16* p = w + r * cols + c;
      int i0, i1;
      prune24Group(p, i0, i1);
      vals[r * (cols / 2) + c / 2] = p[i0];
      vals[r * (cols / 2) + c / 2 + 1] = p[i1];
      m |= uint32_t(i0 | (i1 << 2)) << (4 * gi);
      if (prunedDense)
        for (int k = 0; k < 4; ++k)
          prunedDense[r * cols + c + k] = (k == i0 || k == i1) ? p[k] : __float2bfloat16_rn(0.f);
    }
    meta[r * (cols / 16) + wi] = m;
    meta[r * (cols / 16) + (cols / 32) + wi] = 0;  // the unused second half of each layout.h meta row
  }
}

// dense -> 75% layout.h: per (pair, 128-column chunk) keep the row whose 2:4-pruned chunk has the
// larger L1 norm. One thread per (pair, chunk).
static __global__ void prune75Kernel(const __nv_bfloat16* w, int rows, int cols, __nv_bfloat16* vals, uint32_t* meta,
                              uint8_t* select) {
  const int chunks = (cols + 127) / 128;
  const long long total = (long long)(rows / 2) * chunks;
  for (long long id = blockIdx.x * (long long)blockDim.x + threadIdx.x; id < total; id += (long long)gridDim.x * blockDim.x) {
    const long long p = id / chunks;
    const int ch = id % chunks;
    const int c0 = ch * 128, c1 = min(cols, c0 + 128);
    float norm[2] = {0, 0};
    for (int h = 0; h < 2; ++h) {
      const __nv_bfloat16* row = w + (2 * p + h) * cols;
      for (int c = c0; c < c1; c += 4) {
        int i0, i1;
        prune24Group(row + c, i0, i1);
        norm[h] += fabsf(__bfloat162float(row[c + i0])) + fabsf(__bfloat162float(row[c + i1]));
      }
    }
    const int keep = norm[1] > norm[0] ? 1 : 0;
    select[p * chunks + ch] = uint8_t(keep);
    const __nv_bfloat16* row = w + (2 * p + keep) * cols;
    for (int c = c0; c < c1; c += 32) {
      uint32_t m = 0;
      for (int gi = 0; gi < 8; ++gi) {
        const int cc = c + 4 * gi;
        int i0, i1;
        prune24Group(row + cc, i0, i1);
        vals[p * (cols / 2) + cc / 2] = row[cc + i0];
        vals[p * (cols / 2) + cc / 2 + 1] = row[cc + i1];
        m |= uint32_t(i0 | (i1 << 2)) << (4 * gi);
      }
      meta[p * (cols / 16) + c / 32] = m;
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Baseline helper kernels (the work cuBLAS / cuSPARSELt do not do themselves).

// X[dstOff(i) ...] = hidden[tokenRows[i]] for the selections of expert e; compact rows (cuBLAS) or
// padded per expert (cuSPARSELt; pad rows are zero).
static __global__ void gatherKernel(const __nv_bfloat16* hidden, int D, const int* tokenRows, const int* dstRow, int S,
                             __nv_bfloat16* X) {
  for (int i = blockIdx.x; i < S; i += gridDim.x) {
    const uint4* s = reinterpret_cast<const uint4*>(hidden + (long long)tokenRows[i] * D);
    uint4* d = reinterpret_cast<uint4*>(X + (long long)dstRow[i] * D);
    for (int c = threadIdx.x; c < D / 8; c += blockDim.x) d[c] = s[c];
  }
}

// cuBLAS: G [n][2F] (gate | up) -> H [n][F]
static __global__ void swigluRowsKernel(const __nv_bfloat16* G, int F, long long count, __nv_bfloat16* H) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < count; i += (long long)gridDim.x * blockDim.x) {
    const long long r = i / F, f = i % F;
    const float g = __bfloat162float(G[r * 2 * F + f]), u = __bfloat162float(G[r * 2 * F + F + f]);
    H[i] = __float2bfloat16_rn(g / (1.f + __expf(-g)) * u);
  }
}

// cuSPARSELt (everything row-major, tokens along columns): G [2F][ld] -> H [F][ld]
static __global__ void swigluColsKernel(const __nv_bfloat16* G, int F, int ld, __nv_bfloat16* H) {
  const long long count = (long long)F * ld;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < count; i += (long long)gridDim.x * blockDim.x) {
    const float g = __bfloat162float(G[i]), u = __bfloat162float(G[(long long)F * ld + i]);
    H[i] = __float2bfloat16_rn(g / (1.f + __expf(-g)) * u);
  }
}

// cuBLAS: out[outRows[i]] = scale[i] * Y[i] (Y fp32 [S][D])
static __global__ void scatterRowsKernel(const float* Y, int D, const int* outRows, const float* scales, int S, float* out) {
  for (int i = blockIdx.x; i < S; i += gridDim.x) {
    const float s = scales[i];
    const float4* y = reinterpret_cast<const float4*>(Y + (long long)i * D);
    float4* o = reinterpret_cast<float4*>(out + (long long)outRows[i] * D);
    for (int c = threadIdx.x; c < D / 4; c += blockDim.x) {
      float4 v = y[c];
      v.x *= s, v.y *= s, v.z *= s, v.w *= s;
      o[c] = v;
    }
  }
}

// cuSPARSELt: Y^T per expert ([D][ld] bf16, token j in column j) -> out rows, through a 32x32
// shared-memory transpose so both sides are coalesced. grid: (ceil(n/32), D/32), one expert.
static __global__ void scatterColsKernel(const __nv_bfloat16* Y, int D, int ld, int n, const int* outRows,
                                  const float* scales, float* out) {
  __shared__ float tile[32][33];
  const int j0 = blockIdx.x * 32, d0 = blockIdx.y * 32;
  for (int k = threadIdx.y; k < 32; k += blockDim.y) {
    const int d = d0 + k, j = j0 + threadIdx.x;
    tile[k][threadIdx.x] = j < n ? __bfloat162float(Y[(long long)d * ld + j]) : 0.f;
  }
  __syncthreads();
  for (int k = threadIdx.y; k < 32; k += blockDim.y) {
    const int j = j0 + k;
    if (j < n) out[(long long)outRows[j] * D + d0 + threadIdx.x] = scales[j] * tile[threadIdx.x][k];
  }
}

// ------------------------------------------------------------------------------------------------
// Run-time loading of cuBLAS and cuSPARSELt.

std::vector<std::string> candidates(const char* envVar, const std::vector<std::string>& names) {
  std::vector<std::string> out;
  if (const char* v = std::getenv(envVar)) out.push_back(v);
  std::vector<std::string> dirs = {"/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"};
  std::vector<std::string> patterns = {"/usr/local/cuda*/lib64",
                                       "/usr/local/cuda*/targets/x86_64-linux/lib",
                                       "/opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib",
                                       "/opt/*/lib/python3*/site-packages/nvidia/*/lib",
                                       "/usr/local/lib/python3*/dist-packages/nvidia/*/lib",
                                       "/usr/local/lib/python3*/site-packages/nvidia/*/lib",
                                       "/usr/lib/python3/dist-packages/nvidia/*/lib",
                                       "/root/.local/lib/python3*/site-packages/nvidia/*/lib"};
  // Python's own answer, where python3 exists (PyTorch's wheels put the libraries there).
  if (FILE* p = popen("python3 -c 'import site,sys; print(\"\\n\".join(site.getsitepackages()))' 2>/dev/null", "r")) {
    char line[4096];
    while (fgets(line, sizeof line, p)) {
      std::string s(line);
      while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
      if (!s.empty()) patterns.push_back(s + "/nvidia/*/lib");
    }
    pclose(p);
  }
  for (const std::string& pat : patterns) {
    glob_t g{};
    if (glob(pat.c_str(), 0, nullptr, &g) == 0)
      for (size_t i = 0; i < g.gl_pathc; ++i) dirs.push_back(g.gl_pathv[i]);
    globfree(&g);
  }
  for (const std::string& d : dirs)
    for (const std::string& n : names) {
      glob_t g{};
      if (glob((d + "/" + n).c_str(), 0, nullptr, &g) == 0)
        for (size_t i = 0; i < g.gl_pathc; ++i) out.push_back(g.gl_pathv[i]);
      globfree(&g);
    }
  for (const std::string& n : names)
    if (n.find('*') == std::string::npos) out.push_back(n);  // the loader's own search path
  return out;
}

void* openFirst(const std::vector<std::string>& cands, std::string* path, std::string* err) {
  for (const std::string& c : cands) {
    void* h = dlopen(c.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (h) {
      *path = c;
      return h;
    }
    *err = dlerror();
  }
  return nullptr;
}

// cuBLAS
using cublasHandle_t = void*;
using PFcublasCreate = int (*)(cublasHandle_t*);
using PFcublasSetStream = int (*)(cublasHandle_t, cudaStream_t);
using PFcublasGemmEx = int (*)(cublasHandle_t, int, int, int, int, int, const void*, const void*, int, int, const void*,
                               int, int, const void*, void*, int, int, int, int);
constexpr int kCublasOpN = 0, kCublasOpT = 1, kCublasCompute32F = 68, kCublasGemmDefault = -1;
constexpr int kCudaR16BF = 14, kCudaR32F = 0;

struct Cublas {
  void* lib = nullptr;
  std::string path, error;
  cublasHandle_t h = nullptr;
  PFcublasGemmEx gemm = nullptr;
  bool load(cudaStream_t s) {
    std::string e1;
    openFirst(candidates("HETMOE_CUBLASLT", {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so*"}), &e1, &error);
    lib = openFirst(candidates("HETMOE_CUBLAS", {"libcublas.so.13", "libcublas.so.12", "libcublas.so*"}), &path, &error);
    if (!lib) return false;
    auto create = (PFcublasCreate)dlsym(lib, "cublasCreate_v2");
    auto setStream = (PFcublasSetStream)dlsym(lib, "cublasSetStream_v2");
    gemm = (PFcublasGemmEx)dlsym(lib, "cublasGemmEx");
    if (!create || !setStream || !gemm) {
      error = "cuBLAS entry points missing in " + path;
      return false;
    }
    int st = create(&h);
    if (st != 0) {
      error = "cublasCreate failed with status " + std::to_string(st);
      return false;
    }
    setStream(h, s);
    return true;
  }
};

// cuSPARSELt: opaque objects are caller-allocated fixed-size structs; 4 KiB each is more than any
// version uses.
struct alignas(16) LtObj {
  unsigned char data[4096];
};
using PFltInit = int (*)(LtObj*);
using PFltDense = int (*)(const LtObj*, LtObj*, int64_t, int64_t, int64_t, uint32_t, int, int);
using PFltStruct = int (*)(const LtObj*, LtObj*, int64_t, int64_t, int64_t, uint32_t, int, int, int);
using PFltMatmulDesc = int (*)(const LtObj*, LtObj*, int, int, const LtObj*, const LtObj*, const LtObj*, const LtObj*, int);
using PFltAlgSel = int (*)(const LtObj*, LtObj*, const LtObj*, int);
using PFltPlanInit = int (*)(const LtObj*, LtObj*, const LtObj*, const LtObj*);
using PFltWorkspace = int (*)(const LtObj*, const LtObj*, size_t*);
using PFltCompSize2 = int (*)(const LtObj*, const LtObj*, size_t*, size_t*);
using PFltCompress2 = int (*)(const LtObj*, const LtObj*, int, int, const void*, void*, void*, cudaStream_t);
using PFltMatmul = int (*)(const LtObj*, const LtObj*, const void*, const void*, const void*, const void*, const void*,
                           void*, void*, cudaStream_t*, int32_t);
constexpr int kOrderRow = 2, kOpN = 0, kOpT = 1, kSparsity50 = 0, kLtCompute32F = 2;

struct CusparseLt {
  void* lib = nullptr;
  std::string path, error;
  LtObj handle;
  PFltDense dense = nullptr;
  PFltStruct structured = nullptr;
  PFltMatmulDesc matmulDesc = nullptr;
  PFltAlgSel algSel = nullptr;
  PFltPlanInit planInit = nullptr;
  PFltWorkspace workspace = nullptr;
  PFltCompSize2 compSize2 = nullptr;
  PFltCompress2 compress2 = nullptr;
  PFltMatmul matmul = nullptr;
  bool load() {
    lib = openFirst(candidates("HETMOE_CUSPARSELT", {"libcusparseLt.so.0", "libcusparseLt.so*"}), &path, &error);
    if (!lib) return false;
    auto init = (PFltInit)dlsym(lib, "cusparseLtInit");
    dense = (PFltDense)dlsym(lib, "cusparseLtDenseDescriptorInit");
    structured = (PFltStruct)dlsym(lib, "cusparseLtStructuredDescriptorInit");
    matmulDesc = (PFltMatmulDesc)dlsym(lib, "cusparseLtMatmulDescriptorInit");
    algSel = (PFltAlgSel)dlsym(lib, "cusparseLtMatmulAlgSelectionInit");
    planInit = (PFltPlanInit)dlsym(lib, "cusparseLtMatmulPlanInit");
    workspace = (PFltWorkspace)dlsym(lib, "cusparseLtMatmulGetWorkspace");
    compSize2 = (PFltCompSize2)dlsym(lib, "cusparseLtSpMMACompressedSize2");
    compress2 = (PFltCompress2)dlsym(lib, "cusparseLtSpMMACompress2");
    matmul = (PFltMatmul)dlsym(lib, "cusparseLtMatmul");
    if (!init || !dense || !structured || !matmulDesc || !algSel || !planInit || !workspace || !compSize2 ||
        !compress2 || !matmul) {
      error = "cuSPARSELt entry points missing in " + path + " (needs 0.6 or later)";
      return false;
    }
    int st = init(&handle);
    if (st != 0) {
      error = "cusparseLtInit failed with status " + std::to_string(st);
      return false;
    }
    return true;
  }
};

#define LT_CHECK(call, what)                                                                     \
  do {                                                                                           \
    int st_ = (call);                                                                            \
    if (st_ != 0) throw GpuError(std::string("cuSPARSELt ") + what + " failed, status " + std::to_string(st_), false); \
  } while (0)

// ------------------------------------------------------------------------------------------------

struct Timer {
  cudaStream_t s;
  cudaEvent_t a, b;
  explicit Timer(cudaStream_t st) : s(st) {
    check(cudaEventCreate(&a), "creating events");
    check(cudaEventCreate(&b), "creating events");
  }
  ~Timer() {
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  // median of per-run event times, after warm-up; `run(rep)` enqueues one run
  double median(const std::function<void(int)>& run, int minReps, double targetSec) {
    for (int w = 0; w < 2; ++w) run(w);
    check(cudaStreamSynchronize(s), "warming up");
    check(cudaEventRecord(a, s), "timing");
    run(0);
    check(cudaEventRecord(b, s), "timing");
    check(cudaEventSynchronize(b), "timing");
    float est = 0;
    cudaEventElapsedTime(&est, a, b);
    int reps = std::max(minReps, std::min(50, int(targetSec * 1e3 / std::max(est, 1e-3f))));
    std::vector<float> t(reps);
    for (int r = 0; r < reps; ++r) {
      check(cudaEventRecord(a, s), "timing");
      run(r + 1);
      check(cudaEventRecord(b, s), "timing");
      check(cudaEventSynchronize(b), "timing");
      cudaEventElapsedTime(&t[r], a, b);
    }
    check(cudaGetLastError(), "running a timed variant");
    std::sort(t.begin(), t.end());
    return t[reps / 2];
  }
};

template <typename T>
T* dalloc(size_t n, const std::string& what) {
  T* p = nullptr;
  check(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)), "allocating " + what);
  return p;
}

struct DevAllocs {
  std::vector<void*> ptrs;
  template <typename T>
  T* get(size_t n, const std::string& what) {
    T* p = dalloc<T>(n, what);
    ptrs.push_back(p);
    return p;
  }
  ~DevAllocs() {
    for (void* p : ptrs) cudaFree(p);
  }
};

std::string jsonStr(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += c;
    else if (c == '\n') o += "\\n";
    else if (static_cast<unsigned char>(c) < 0x20) o += ' ';
    else o += c;
  }
  return o + "\"";
}

std::string num(double v) {
  if (!std::isfinite(v)) return "null";
  char b[64];
  snprintf(b, sizeof b, "%.6g", v);
  return b;
}

double relErrRows(const std::vector<float>& a, const std::vector<float>& ref) {
  double num2 = 0, den2 = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = double(a[i]) - double(ref[i]);
    num2 += d * d;
    den2 += double(ref[i]) * ref[i];
    if (!std::isfinite(a[i])) return INFINITY;
  }
  return std::sqrt(num2 / std::max(den2, 1e-300));
}

}  // namespace

std::string runBench(const BenchOptions& o) {
  check(cudaSetDevice(o.device), "selecting the device");
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, o.device), "reading device properties");
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  cudaStream_t s;
  check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "creating a stream");
  Timer timer(s);
  const int E = o.E, D = o.D, F = o.F, K = o.topK;
  if (D % 64 || F % 64 || F % 32 || D % 32) throw GpuError("bench: D and F must be multiples of 64", false);
  const int maxN = *std::max_element(o.tokensPerExpert.begin(), o.tokensPerExpert.end());
  std::vector<std::string> notes;
  DevAllocs mem;
  const int metaVariant = std::getenv("HETMOE_SPMETA") && std::atoi(std::getenv("HETMOE_SPMETA")) == 1 ? 1 : 0;
  const WgOptions wgOpts = wgOptionsFor(o.device);

  // Dense weights: per expert gate|up [2F][D] (one matrix, so cuBLAS does one GEMM) and down [D][F].
  std::vector<__nv_bfloat16*> wGU(E), wDn(E);
  for (int e = 0; e < E; ++e) {
    wGU[e] = mem.get<__nv_bfloat16>(size_t(2) * F * D, "dense gate|up weights");
    wDn[e] = mem.get<__nv_bfloat16>(size_t(D) * F, "dense down weights");
    genKernel<<<4096, 256, 0, s>>>(wGU[e], (long long)2 * F * D, 1000 + 3 * e, 1.f / std::sqrt(float(D)));
    genKernel<<<4096, 256, 0, s>>>(wDn[e], (long long)D * F, 1001 + 3 * e, 1.f / std::sqrt(float(F)));
  }
  check(cudaGetLastError(), "generating weights");

  // Our layouts of each format, built with the same repack kernels as uploads from a weights file.
  struct Fmt {
    std::string name;
    int fmt;
    std::vector<DevWeights> gate, up, down;
    double weightBytes = 0;
  };
  std::vector<Fmt> fmts;
  std::vector<__nv_bfloat16*> pGU(E, nullptr), pDn(E, nullptr);  // 2:4-pruned dense copies for cuSPARSELt
  for (const std::string& fname : o.formats) {
    Fmt f;
    f.name = fname;
    f.fmt = fname == "dense" ? 0 : fname == "2:4" ? 1 : fname == "75%" ? 2 : -1;
    if (f.fmt < 0) throw GpuError("bench: unknown format " + fname, false);
    for (int e = 0; e < E; ++e) {
      for (int which = 0; which < 3; ++which) {
        const int rows = which == 2 ? D : F, cols = which == 2 ? F : D;
        const __nv_bfloat16* src = which == 2 ? wDn[e] : wGU[e] + (which == 1 ? size_t(F) * D : 0);
        DevWeights w;
        w.format = f.fmt;
        w.rows = rows;
        w.cols = cols;
        const int srows = f.fmt == 2 ? rows / 2 : rows;
        w.mTiles = srows / 16;
        w.kSteps = cols / 64;
        w.chunks = (cols + 127) / 128;
        w.vals = reinterpret_cast<const uint4*>(mem.get<__nv_bfloat16>(size_t(srows) * (f.fmt ? cols / 2 : cols), "weights"));
        if (f.fmt) w.meta = mem.get<uint32_t>(size_t(w.mTiles) * w.kSteps * 32, "metadata");
        if (f.fmt == 2) w.sel = mem.get<uint32_t>(size_t(w.mTiles) * w.chunks, "select masks");
        if (f.fmt == 0) {
          repackOnDevice(w, src, 0, nullptr, nullptr, 0, s);
        } else {
          __nv_bfloat16* v = dalloc<__nv_bfloat16>(size_t(srows) * cols / 2, "pruned values");
          uint32_t* m = dalloc<uint32_t>(size_t(srows) * cols / 16, "pruned metadata");
          uint8_t* sl = f.fmt == 2 ? dalloc<uint8_t>(size_t(srows) * w.chunks, "select") : nullptr;
          if (f.fmt == 1) {
            __nv_bfloat16* pd = nullptr;
            if (o.baselines) {
              __nv_bfloat16*& slot = which == 2 ? pDn[e] : pGU[e];
              if (!slot) slot = dalloc<__nv_bfloat16>(which == 2 ? size_t(D) * F : size_t(2) * F * D, "pruned dense");
              pd = slot + (which == 1 ? size_t(F) * D : 0);
            }
            prune24Kernel<<<4096, 256, 0, s>>>(src, rows, cols, v, m, pd);
          } else {
            prune75Kernel<<<4096, 128, 0, s>>>(src, rows, cols, v, m, sl);
          }
          check(cudaGetLastError(), "pruning");
          repackOnDevice(w, v, 0, m, sl, metaVariant, s);
          check(cudaStreamSynchronize(s), "pruning and repacking");
          cudaFree(v);
          cudaFree(m);
          if (sl) cudaFree(sl);
        }
        f.weightBytes += double(w.bytes());
        (which == 0 ? f.gate : which == 1 ? f.up : f.down).push_back(w);
      }
    }
    fmts.push_back(std::move(f));
  }
  check(cudaStreamSynchronize(s), "building the weight formats");

  // Baselines.
  Cublas cublas;
  CusparseLt lt;
  bool haveCublas = false, haveLt = false;
  if (o.baselines) {
    haveCublas = cublas.load(s);
    if (!haveCublas) notes.push_back("cuBLAS not available: " + cublas.error);
    const bool have24 = pGU[0] != nullptr;
    if (have24) {
      haveLt = lt.load();
      if (!haveLt) notes.push_back("cuSPARSELt not available: " + lt.error);
    } else {
      notes.push_back("cuSPARSELt skipped: the 2:4 format is not in this run");
    }
  }

  // Buffers for the largest size.
  const long long maxS = (long long)maxN * E;
  const int maxT = int((maxS + K - 1) / K);
  const int maxPad = ((maxN + 15) / 16) * 16;
  __nv_bfloat16* hid[2] = {mem.get<__nv_bfloat16>(size_t(maxT) * D, "hidden A"), mem.get<__nv_bfloat16>(size_t(maxT) * D, "hidden B")};
  genKernel<<<4096, 256, 0, s>>>(hid[0], (long long)maxT * D, 7, 1.f);
  genKernel<<<4096, 256, 0, s>>>(hid[1], (long long)maxT * D, 8, 1.f);
  // Our kernels read hidden rows k-permuted (runLayer's fp32->bf16 conversion writes them so);
  // the same values, permuted once here, outside the timing.
  __nv_bfloat16* hidP[2] = {mem.get<__nv_bfloat16>(size_t(maxT) * D, "permuted hidden A"),
                            mem.get<__nv_bfloat16>(size_t(maxT) * D, "permuted hidden B")};
  launchPermuteBf16(hid[0], hidP[0], (long long)maxT * D, D, s);
  launchPermuteBf16(hid[1], hidP[1], (long long)maxT * D, D, s);
  float* out = mem.get<float>(size_t(maxT) * K * D, "output");
  __nv_bfloat16* H = mem.get<__nv_bfloat16>(size_t(maxS) * F, "intermediate H");
  __nv_bfloat16* X = nullptr;
  __nv_bfloat16* G = nullptr;
  float* Y = nullptr;
  __nv_bfloat16* Xp = nullptr;
  __nv_bfloat16* Gp = nullptr;
  __nv_bfloat16* Hp = nullptr;
  __nv_bfloat16* Yp = nullptr;
  if (haveCublas) {
    X = mem.get<__nv_bfloat16>(size_t(maxS) * D, "gathered X");
    G = mem.get<__nv_bfloat16>(size_t(maxS) * 2 * F, "gate|up output");
    Y = mem.get<float>(size_t(maxS) * D, "down output");
  }
  // cuSPARSELt: compressed weights (made once) and padded per-expert buffers.
  std::vector<void*> cGU(E, nullptr), cDn(E, nullptr);
  double ltWeightBytes = 0;
  LtObj ltA_GU, ltA_Dn;
  if (haveLt) {
    const size_t padS = size_t(maxPad) * E;
    Xp = mem.get<__nv_bfloat16>(padS * D, "padded X");
    Gp = mem.get<__nv_bfloat16>(padS * 2 * F, "padded G");
    Hp = mem.get<__nv_bfloat16>(padS * F, "padded H");
    Yp = mem.get<__nv_bfloat16>(padS * D, "padded Y");
    try {
      LT_CHECK(lt.structured(&lt.handle, &ltA_GU, 2 * F, D, D, 16, kCudaR16BF, kOrderRow, kSparsity50), "structured descriptor");
      LT_CHECK(lt.structured(&lt.handle, &ltA_Dn, D, F, F, 16, kCudaR16BF, kOrderRow, kSparsity50), "structured descriptor");
      for (int e = 0; e < E; ++e) {
        for (int which = 0; which < 2; ++which) {
          const LtObj* desc = which == 0 ? &ltA_GU : &ltA_Dn;
          size_t cs = 0, cb = 0;
          LT_CHECK(lt.compSize2(&lt.handle, desc, &cs, &cb), "compressed size");
          void* c = mem.get<char>(cs, "cuSPARSELt compressed weights");
          void* buf = dalloc<char>(cb, "cuSPARSELt compress buffer");
          LT_CHECK(lt.compress2(&lt.handle, desc, 1, kOpN, which == 0 ? pGU[e] : pDn[e], c, buf, s), "compress");
          check(cudaStreamSynchronize(s), "cuSPARSELt compression");
          cudaFree(buf);
          (which == 0 ? cGU[e] : cDn[e]) = c;
          ltWeightBytes += double(cs);
        }
      }
    } catch (const GpuError& e) {
      haveLt = false;
      notes.push_back(std::string("cuSPARSELt setup failed: ") + e.what());
    }
  }
  for (int e = 0; e < E; ++e) {
    if (pGU[e]) cudaFree(pGU[e]);
    if (pDn[e]) cudaFree(pDn[e]);
  }
  // The dense bf16 weights stay for cuBLAS; free them if it is absent and dense is not measured.

  std::ostringstream res;
  bool first = true;
  const double denseBytes = double(E) * 3 * D * F * 2;
  std::mt19937 rng(12345);

  for (int n : o.tokensPerExpert) {
    // Balanced random routing: exactly n tokens per expert, top-K distinct experts per token,
    // token rows in random order; routing weights random in (0.05, 1).
    const long long S = (long long)n * E;
    const int T = int((S + K - 1) / K);
    std::vector<int> perm(T);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<std::vector<int>> tokE(E), outE(E);
    std::vector<std::vector<float>> sclE(E);
    std::uniform_real_distribution<float> ud(0.05f, 1.f);
    for (long long slot = 0; slot < S; ++slot) {
      const int p = int(slot / K), j = int(slot % K);
      const int e = int(slot % E);
      tokE[e].push_back(perm[p]);
      outE[e].push_back(perm[p] * K + j);
      sclE[e].push_back(ud(rng));
    }
    std::vector<int> tok, orow, tokOff(E), padRow;
    std::vector<float> scl;
    for (int e = 0; e < E; ++e) {
      tokOff[e] = int(tok.size());
      tok.insert(tok.end(), tokE[e].begin(), tokE[e].end());
      orow.insert(orow.end(), outE[e].begin(), outE[e].end());
      scl.insert(scl.end(), sclE[e].begin(), sclE[e].end());
    }
    const int nPad = ((n + 15) / 16) * 16;
    for (int e = 0; e < E; ++e)
      for (int i = 0; i < n; ++i) padRow.push_back(e * nPad + i);
    std::vector<int> compactRow(S);
    std::iota(compactRow.begin(), compactRow.end(), 0);
    int* dTok = dalloc<int>(S, "token rows");
    int* dOut = dalloc<int>(S, "out rows");
    float* dScl = dalloc<float>(S, "scales");
    int* dCompact = dalloc<int>(S, "compact rows");
    int* dPad = dalloc<int>(S, "padded rows");
    check(cudaMemcpy(dTok, tok.data(), S * 4, cudaMemcpyHostToDevice), "copying routing");
    check(cudaMemcpy(dOut, orow.data(), S * 4, cudaMemcpyHostToDevice), "copying routing");
    check(cudaMemcpy(dScl, scl.data(), S * 4, cudaMemcpyHostToDevice), "copying routing");
    check(cudaMemcpy(dCompact, compactRow.data(), S * 4, cudaMemcpyHostToDevice), "copying routing");
    check(cudaMemcpy(dPad, padRow.data(), S * 4, cudaMemcpyHostToDevice), "copying routing");
    const double flops = 2.0 * double(S) * 3 * D * F;
    const size_t outElems = size_t(T) * K * D;

    auto readOut = [&](std::vector<float>& v) {
      v.resize(S * size_t(D));
      std::vector<float> full(outElems);
      check(cudaMemcpy(full.data(), out, outElems * 4, cudaMemcpyDeviceToHost), "reading outputs");
      for (long long i = 0; i < S; ++i) std::memcpy(&v[i * D], &full[size_t(orow[i]) * D], D * 4);
    };
    const bool doCheck = n <= 256;

    // cuBLAS dense
    double cublasMs = NAN;
    std::vector<float> cublasOut;
    if (haveCublas) {
      auto run = [&](int rep) {
        const __nv_bfloat16* hb = hid[rep & 1];
        gatherKernel<<<std::min<long long>(S, 65535), 128, 0, s>>>(hb, D, dTok, dCompact, int(S), X);
        const float one = 1.f, zero = 0.f;
        for (int e = 0; e < E; ++e) {
          const __nv_bfloat16* x = X + size_t(tokOff[e]) * D;
          __nv_bfloat16* g = G + size_t(tokOff[e]) * 2 * F;
          cublas.gemm(cublas.h, kCublasOpT, kCublasOpN, 2 * F, n, D, &one, wGU[e], kCudaR16BF, D, x, kCudaR16BF, D, &zero, g,
                      kCudaR16BF, 2 * F, kCublasCompute32F, kCublasGemmDefault);
        }
        swigluRowsKernel<<<4096, 256, 0, s>>>(G, F, S * F, H);
        for (int e = 0; e < E; ++e) {
          const __nv_bfloat16* h = H + size_t(tokOff[e]) * F;
          float* y = Y + size_t(tokOff[e]) * D;
          cublas.gemm(cublas.h, kCublasOpT, kCublasOpN, D, n, F, &one, wDn[e], kCudaR16BF, F, h, kCudaR16BF, F, &zero, y,
                      kCudaR32F, D, kCublasCompute32F, kCublasGemmDefault);
        }
        scatterRowsKernel<<<std::min<long long>(S, 65535), 128, 0, s>>>(Y, D, dOut, dScl, int(S), out);
      };
      check(cudaMemsetAsync(out, 0xff, outElems * 4, s), "poisoning outputs");
      run(0);
      check(cudaStreamSynchronize(s), "running cuBLAS");
      if (doCheck) readOut(cublasOut);
      cublasMs = timer.median(run, o.minReps, o.targetSecondsPerPoint);
    }

    // cuSPARSELt 2:4: plans made once per size (outside the timing).
    double ltMs = NAN;
    std::vector<float> ltOut;
    if (haveLt) {
      try {
        LtObj mB1, mC1, mB2, mC2, mm1, mm2, alg1, alg2, plan1, plan2;
        LT_CHECK(lt.dense(&lt.handle, &mB1, nPad, D, D, 16, kCudaR16BF, kOrderRow), "dense descriptor");  // X [nPad][D], op T
        LT_CHECK(lt.dense(&lt.handle, &mC1, 2 * F, nPad, nPad, 16, kCudaR16BF, kOrderRow), "dense descriptor");
        LT_CHECK(lt.matmulDesc(&lt.handle, &mm1, kOpN, kOpT, &ltA_GU, &mB1, &mC1, &mC1, kLtCompute32F), "matmul descriptor");
        LT_CHECK(lt.algSel(&lt.handle, &alg1, &mm1, 0), "algorithm selection");
        LT_CHECK(lt.planInit(&lt.handle, &plan1, &mm1, &alg1), "plan");
        LT_CHECK(lt.dense(&lt.handle, &mB2, F, nPad, nPad, 16, kCudaR16BF, kOrderRow), "dense descriptor");  // H [F][nPad]
        LT_CHECK(lt.dense(&lt.handle, &mC2, D, nPad, nPad, 16, kCudaR16BF, kOrderRow), "dense descriptor");
        LT_CHECK(lt.matmulDesc(&lt.handle, &mm2, kOpN, kOpN, &ltA_Dn, &mB2, &mC2, &mC2, kLtCompute32F), "matmul descriptor");
        LT_CHECK(lt.algSel(&lt.handle, &alg2, &mm2, 0), "algorithm selection");
        LT_CHECK(lt.planInit(&lt.handle, &plan2, &mm2, &alg2), "plan");
        size_t ws1 = 0, ws2 = 0;
        LT_CHECK(lt.workspace(&lt.handle, &plan1, &ws1), "workspace size");
        LT_CHECK(lt.workspace(&lt.handle, &plan2, &ws2), "workspace size");
        void* ws = dalloc<char>(std::max<size_t>(std::max(ws1, ws2), 256), "cuSPARSELt workspace");
        check(cudaMemsetAsync(Xp, 0, size_t(nPad) * E * D * 2, s), "zeroing padded X");
        auto run = [&](int rep) {
          const __nv_bfloat16* hb = hid[rep & 1];
          gatherKernel<<<std::min<long long>(S, 65535), 128, 0, s>>>(hb, D, dTok, dPad, int(S), Xp);
          const float one = 1.f, zero = 0.f;
          for (int e = 0; e < E; ++e) {
            __nv_bfloat16* g = Gp + size_t(e) * nPad * 2 * F;
            int st = lt.matmul(&lt.handle, &plan1, &one, cGU[e], Xp + size_t(e) * nPad * D, &zero, g, g, ws, &s, 1);
            if (st) throw GpuError("cusparseLtMatmul (gate|up) failed, status " + std::to_string(st), false);
            swigluColsKernel<<<2048, 256, 0, s>>>(g, F, nPad, Hp + size_t(e) * nPad * F);
            __nv_bfloat16* y = Yp + size_t(e) * nPad * D;
            st = lt.matmul(&lt.handle, &plan2, &one, cDn[e], Hp + size_t(e) * nPad * F, &zero, y, y, ws, &s, 1);
            if (st) throw GpuError("cusparseLtMatmul (down) failed, status " + std::to_string(st), false);
            scatterColsKernel<<<dim3((n + 31) / 32, D / 32), dim3(32, 8), 0, s>>>(y, D, nPad, n, dOut + tokOff[e],
                                                                                  dScl + tokOff[e], out);
          }
        };
        check(cudaMemsetAsync(out, 0xff, outElems * 4, s), "poisoning outputs");
        run(0);
        check(cudaStreamSynchronize(s), "running cuSPARSELt");
        if (doCheck) readOut(ltOut);
        ltMs = timer.median(run, o.minReps, o.targetSecondsPerPoint);
        cudaFree(ws);
      } catch (const GpuError& e) {
        notes.push_back("cuSPARSELt at n=" + std::to_string(n) + ": " + e.what());
      }
    }

    auto emit = [&](const std::string& kernel, const std::string& format, double ms, double wbytes, double relErr,
                    const std::string& vs, const char* path = nullptr) {
      res << (first ? "" : ",\n") << "{\"kernel\":" << jsonStr(kernel) << ",\"format\":" << jsonStr(format)
          << ",\"tokensPerExpert\":" << n << ",\"ms\":" << num(ms) << ",\"tflops\":" << num(flops / (ms * 1e-3) / 1e12)
          << ",\"weightGBps\":" << num(wbytes / (ms * 1e-3) / 1e9) << ",\"speedupVsCublas\":" << num(cublasMs / ms)
          << ",\"speedupVsCusparselt\":" << num(ltMs / ms);
      if (std::isfinite(relErr)) res << ",\"checkRelErr\":" << num(relErr) << ",\"checkedAgainst\":" << jsonStr(vs);
      if (path) res << ",\"path\":" << jsonStr(path);
      res << "}";
      first = false;
    };
    if (haveCublas) emit("cublas", "dense", cublasMs, denseBytes, NAN, "");
    if (haveLt) emit("cusparselt", "2:4", ltMs, ltWeightBytes, NAN, "");

    for (Fmt& f : fmts) {
      std::vector<GroupExpert> ge(E);
      for (int e = 0; e < E; ++e) {
        ge[e].gate = &f.gate[e];
        ge[e].up = &f.up[e];
        ge[e].down = &f.down[e];
        ge[e].tokOff = tokOff[e];
        ge[e].n = n;
      }
      HostLaunchPlan plan;
      plan.begin(wgOpts);
      plan.addGroup(f.fmt, kSwiGLU, ge);
      char* dPlan = dalloc<char>(plan.bytes(), "launch plan");
      std::vector<char> hPlan(plan.bytes());
      plan.write(hPlan.data(), dPlan);
      check(cudaMemcpy(dPlan, hPlan.data(), plan.bytes(), cudaMemcpyHostToDevice), "copying the launch plan");
      auto run = [&](int rep) { plan.launchAll(hidP[rep & 1], hid[rep & 1], D, dTok, H, F, out, D, dOut, dScl, s); };
      check(cudaMemsetAsync(out, 0xff, outElems * 4, s), "poisoning outputs");
      run(0);
      check(cudaStreamSynchronize(s), "running the hetmoe kernel (" + f.name + ")");
      double relErr = NAN;
      std::string vs;
      if (doCheck) {
        std::vector<float> mine;
        readOut(mine);
        if (f.fmt == 0 && !cublasOut.empty()) relErr = relErrRows(mine, cublasOut), vs = "cublas";
        if (f.fmt == 1 && !ltOut.empty()) relErr = relErrRows(mine, ltOut), vs = "cusparselt";
        if (!std::isfinite(relErr) && vs.empty()) {
          bool allFinite = true;
          for (float v : mine) allFinite = allFinite && std::isfinite(v);
          if (!allFinite) notes.push_back("hetmoe " + f.name + " n=" + std::to_string(n) + ": output has NaN/unwritten rows");
        }
      }
      const double ms = timer.median(run, o.minReps, o.targetSecondsPerPoint);
      emit("hetmoe", f.name, ms, f.weightBytes, relErr, vs, plan.pathName());
      cudaFree(dPlan);
    }
    cudaFree(dTok);
    cudaFree(dOut);
    cudaFree(dScl);
    cudaFree(dCompact);
    cudaFree(dPad);
  }
  cudaStreamDestroy(s);

  std::ostringstream j;
  j << "{\"device\":" << jsonStr(prop.name) << ",\"computeCapability\":\"" << prop.major << "." << prop.minor
    << "\",\"multiprocessors\":" << prop.multiProcessorCount << ",\"driverVersion\":" << driver
    << ",\"runtimeVersion\":" << runtime << ",\"preset\":" << jsonStr(o.preset) << ",\"E\":" << E << ",\"D\":" << D
    << ",\"F\":" << F << ",\"topK\":" << K << ",\"cublas\":" << (haveCublas ? jsonStr(cublas.path) : "null")
    << ",\"cusparselt\":" << (haveLt ? jsonStr(lt.path) : "null") << ",\"notes\":[";
  for (size_t i = 0; i < notes.size(); ++i) j << (i ? "," : "") << jsonStr(notes[i]);
  j << "],\"results\":[\n" << res.str() << "\n]}";
  return j.str();
}

}  // namespace gpu
}  // namespace hetmoe
