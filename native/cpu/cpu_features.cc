#include "cpu/cpu_features.h"

#include <cerrno>
#include <cstring>
#include <mutex>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace hetmoe {
namespace {

#if defined(__x86_64__) || defined(__i386__)
void cpuid(unsigned leaf, unsigned sub, unsigned r[4]) { __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]); }
unsigned long long xgetbv0() {
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
}
#endif

// Linux keeps AMX tile data (XFEATURE 18) off until a process asks for it; the first tile
// instruction without permission raises SIGILL. Asking is per process and idempotent.
bool requestAmx(std::string& note) {
#if defined(__linux__) && defined(__x86_64__)
  constexpr long ARCH_GET_XCOMP_PERM = 0x1022, ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
  if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) {
    note = std::string("arch_prctl(ARCH_REQ_XCOMP_PERM) failed: ") + std::strerror(errno) +
           " (a Linux kernel >= 5.16 is needed for AMX)";
    return false;
  }
  unsigned long long mask = 0;
  if (syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &mask) != 0 || !(mask & (1ULL << XFEATURE_XTILEDATA))) {
    note = "the kernel did not grant AMX tile state";
    return false;
  }
  return true;
#else
  note = "AMX needs Linux on x86-64";
  return false;
#endif
}

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  unsigned r[4];
  cpuid(0, 0, r);
  const unsigned maxLeaf = r[0];
  char vendor[13] = {0};
  std::memcpy(vendor, &r[1], 4);
  std::memcpy(vendor + 4, &r[3], 4);
  std::memcpy(vendor + 8, &r[2], 4);
  f.vendor = vendor;

  cpuid(0x80000000u, 0, r);
  if (r[0] >= 0x80000004u) {
    char brand[49] = {0};
    for (unsigned i = 0; i < 3; ++i) {
      cpuid(0x80000002u + i, 0, r);
      std::memcpy(brand + 16 * i, r, 16);
    }
    f.model = brand;
    const auto b = f.model.find_first_not_of(' ');
    f.model = b == std::string::npos ? "" : f.model.substr(b);
    while (!f.model.empty() && f.model.back() == ' ') f.model.pop_back();
  }

  cpuid(1, 0, r);
  const bool osxsave = r[2] & (1u << 27);
  f.fma = r[2] & (1u << 12);
  f.f16c = r[2] & (1u << 29);
  unsigned long long xcr0 = osxsave ? xgetbv0() : 0;
  f.osAvx = (xcr0 & 0x6) == 0x6;
  f.osAvx512 = (xcr0 & 0xe6) == 0xe6;
  const bool osAmx = (xcr0 & 0x60000) == 0x60000;  // XTILECFG + XTILEDATA
  if (!f.osAvx) f.fma = f.f16c = false;

  if (maxLeaf >= 7) {
    cpuid(7, 0, r);
    f.avx2 = f.osAvx && (r[1] & (1u << 5));
    f.avx512f = f.osAvx512 && (r[1] & (1u << 16));
    f.avx512dq = f.osAvx512 && (r[1] & (1u << 17));
    f.avx512bw = f.osAvx512 && (r[1] & (1u << 30));
    f.avx512vl = f.osAvx512 && (r[1] & (1u << 31));
    f.amxBf16 = r[3] & (1u << 22);
    f.amxTile = r[3] & (1u << 24);
    cpuid(7, 1, r);
    f.avx512bf16 = f.osAvx512 && (r[0] & (1u << 5));
  }
  if (f.amxTile && f.amxBf16) {
    if (!osAmx) f.amxNote = "the OS has not enabled AMX state in XCR0";
    else f.amxGranted = requestAmx(f.amxNote);
  }
#else
  f.vendor = "non-x86";
#endif
  return f;
}

}  // namespace

const CpuFeatures& cpuFeatures() {
  static std::once_flag once;
  static CpuFeatures features;
  std::call_once(once, [] { features = detect(); });
  return features;
}

}  // namespace hetmoe
