// Run-time choice of the kernel level (cpuid via cpu_features) and the per-thread scratch buffers.
// Compiled without ISA flags: this is the only code that runs before a level has been checked.
#include "cpu/kernels.h"

#include <cstdlib>
#include <stdexcept>

#include "cpu/cpu_features.h"

namespace hetmoe {
namespace cpu {

namespace {
const char* const kNames[kIsaCount] = {"scalar", "avx2", "avx512", "avx512bf16", "amx"};
// Slots: 0-3 matmul (token pointers, panel, bf16 activations), 4-6 AMX packing and decoded panels,
// 7 the layer job's up-projection tile, 8 AMX C tiles between K chunks.
constexpr int kScratchSlots = 10;

struct ScratchSlots {
  void* p[kScratchSlots] = {};
  size_t bytes[kScratchSlots] = {};
  ~ScratchSlots() {
    for (void* q : p) std::free(q);
  }
};
thread_local ScratchSlots scratch;
}  // namespace

void* threadScratch(int slot, size_t bytes) {
  if (bytes <= scratch.bytes[slot]) return scratch.p[slot];
  std::free(scratch.p[slot]);
  size_t cap = (bytes + bytes / 2 + 4095) / 4096 * 4096;
  scratch.p[slot] = std::aligned_alloc(4096, cap);
  if (!scratch.p[slot]) {
    scratch.bytes[slot] = 0;
    throw std::bad_alloc();
  }
  scratch.bytes[slot] = cap;
  return scratch.p[slot];
}

const char* isaName(Isa isa) {
  const int i = static_cast<int>(isa);
  return i >= 0 && i < kIsaCount ? kNames[i] : "unknown";
}

bool parseIsa(const std::string& text, Isa& out) {
  for (int i = 0; i < kIsaCount; ++i)
    if (text == kNames[i]) {
      out = static_cast<Isa>(i);
      return true;
    }
  return false;
}

bool isaAvailable(Isa isa, std::string* why) {
  const CpuFeatures& f = cpuFeatures();
  std::string missing;
  auto need = [&](bool ok, const char* name) {
    if (!ok) missing += missing.empty() ? name : std::string(", ") + name;
  };
  switch (isa) {
    case Isa::Scalar: break;
    case Isa::Amx:
      need(f.amxTile, "AMX-TILE");
      need(f.amxBf16, "AMX-BF16");
      if (f.amxTile && f.amxBf16) need(f.amxGranted, f.amxNote.empty() ? "AMX permission" : f.amxNote.c_str());
      [[fallthrough]];
    case Isa::Avx512Bf16:
      need(f.avx512bf16, "AVX512_BF16");
      [[fallthrough]];
    case Isa::Avx512:
      need(f.avx512f, "AVX-512F");
      need(f.avx512bw, "AVX-512BW");
      need(f.avx512vl, "AVX-512VL");
      need(f.avx512dq, "AVX-512DQ");
      [[fallthrough]];
    case Isa::Avx2:
      need(f.avx2, "AVX2");
      need(f.fma, "FMA");
      need(f.f16c, "F16C");
      break;
  }
  if (why) *why = missing;
  return missing.empty();
}

Isa bestIsa() {
  static const Isa best = [] {
    for (int i = kIsaCount - 1; i > 0; --i)
      if (isaAvailable(static_cast<Isa>(i))) return static_cast<Isa>(i);
    return Isa::Scalar;
  }();
  return best;
}

Isa resolveIsa(const std::string& requested) {
  std::string want = requested;
  const char* source = "the isa argument";
  if (want.empty()) {
    const char* env = std::getenv("HETMOE_ISA");
    if (!env || !*env) return bestIsa();
    want = env;
    source = "HETMOE_ISA";
  }
  Isa isa;
  if (!parseIsa(want, isa))
    throw std::runtime_error(std::string(source) + " is \"" + want +
                             "\"; expected one of scalar, avx2, avx512, avx512bf16, amx");
  std::string why;
  if (!isaAvailable(isa, &why))
    throw std::runtime_error(std::string(source) + " asks for the " + want + " kernels, but this CPU (" +
                             cpuFeatures().model + ") lacks " + why + "; the best level here is " + isaName(bestIsa()));
  return isa;
}

const KernelTable& kernels(Isa isa) {
  switch (isa) {
    case Isa::Avx2: return avx2Kernels();
    case Isa::Avx512: return avx512Kernels();
    case Isa::Avx512Bf16: return avx512bf16Kernels();
    case Isa::Amx: return amxKernels();
    case Isa::Scalar: break;
  }
  return scalarKernels();
}

bool useAmx(Isa isa, int32_t n, const MatrixView& up, const MatrixView& down) {
  const bool sparse = up.format != WeightFormat::Dense || down.format != WeightFormat::Dense;
  return isa == Isa::Amx && n >= (sparse ? kAmxMinTokensSparse : kAmxMinTokens) && up.dtype == WeightDtype::BF16 && down.dtype == WeightDtype::BF16 &&
         up.cols % 32 == 0 && up.rows % 32 == 0 && down.rows % 32 == 0;
}

}  // namespace cpu
}  // namespace hetmoe
