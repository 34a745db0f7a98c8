// CPU feature detection (cpuid + xgetbv), shared by `hetmoe info` and the kernel dispatcher.
#pragma once
#include <string>

namespace hetmoe {

struct CpuFeatures {
  std::string vendor;
  std::string model;
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false, avx512bf16 = false;
  bool amxTile = false, amxBf16 = false;
  bool osAvx = false;      // XCR0 has SSE+AVX state enabled
  bool osAvx512 = false;   // XCR0 has opmask + ZMM state enabled
  bool amxGranted = false; // the kernel let this process use AMX tile data (Linux: ARCH_REQ_XCOMP_PERM)
  std::string amxNote;     // why AMX is unusable, when the hardware has it
};

// Detected once per process (thread-safe); AMX permission is requested on the first call.
const CpuFeatures& cpuFeatures();

}  // namespace hetmoe
