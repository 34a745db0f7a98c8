#include "cuda/gpu_info.h"

#include <cuda_runtime.h>

namespace hetmoe {

GpuInfo queryGpus() {
  GpuInfo info;
  info.compiled = true;
  cudaRuntimeGetVersion(&info.runtimeVersion);
  if (cudaDriverGetVersion(&info.driverVersion) != cudaSuccess) info.driverVersion = 0;
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    info.error = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return info;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    GpuDevice d;
    d.index = i;
    d.name = p.name;
    d.major = p.major;
    d.minor = p.minor;
    d.totalBytes = p.totalGlobalMem;
    d.multiprocessors = p.multiProcessorCount;
    d.l2Bytes = p.l2CacheSize;
    d.sharedPerBlockOptin = p.sharedMemPerBlockOptin;
    d.sparseTensorCores = p.major >= 8;
    d.wgmmaSparse = p.major == 9;
    int prev = 0;
    cudaGetDevice(&prev);
    if (cudaSetDevice(i) == cudaSuccess) {
      size_t freeB = 0, totalB = 0;
      if (cudaMemGetInfo(&freeB, &totalB) == cudaSuccess) d.freeBytes = freeB;
      cudaSetDevice(prev);
    }
    info.devices.push_back(d);
  }
  if (count == 0) info.error = "cudaErrorNoDevice: no CUDA-capable device is detected";
  return info;
}

}  // namespace hetmoe
