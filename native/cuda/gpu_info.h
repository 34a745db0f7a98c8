// What the CUDA runtime can see. Plain C++ so the addon compiles the same with or without CUDA.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace hetmoe {

struct GpuDevice {
  int index = 0;
  std::string name;
  int major = 0, minor = 0;       // compute capability
  size_t totalBytes = 0, freeBytes = 0;
  int multiprocessors = 0;
  size_t l2Bytes = 0;
  size_t sharedPerBlockOptin = 0;
  bool sparseTensorCores = false;  // mma.sp: compute capability 8.0 and later
  bool wgmmaSparse = false;        // wgmma.mma_async.sp: sm_90a (Hopper)
};

struct GpuInfo {
  bool compiled = false;           // the addon was built with the CUDA backend
  int runtimeVersion = 0;          // CUDA runtime linked into the addon (e.g. 13000)
  int driverVersion = 0;           // 0 when no driver is installed
  std::string error;               // why no device is usable (empty when devices were found)
  std::vector<GpuDevice> devices;
};

// Safe on machines with no driver and no GPU: reports the CUDA error instead of failing.
GpuInfo queryGpus();

}  // namespace hetmoe
