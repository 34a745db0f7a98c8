// Host-side helpers around moe_kernels.cuh: error checks, the repacked weights of one matrix, and
// the launch plan of one layer (work items of every expert of every format group).
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/gpu_backend.h"
#include "cuda/moe_kernels.cuh"
#include "cuda/moe_wgmma.cuh"

namespace hetmoe {
namespace gpu {

inline void check(cudaError_t e, const std::string& doing) {
  if (e == cudaSuccess) return;
  cudaGetLastError();
  const bool oom = e == cudaErrorMemoryAllocation;
  throw GpuError(std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + ") while " + doing, oom);
}

// One matrix in fragment order (see moe_kernels.cuh).
struct DevWeights {
  int format = 0, rows = 0, cols = 0;
  int mTiles = 0, kSteps = 0, chunks = 0;
  const uint4* vals = nullptr;
  const uint32_t* meta = nullptr;
  const uint32_t* sel = nullptr;
  size_t bytes() const {
    const size_t srows = size_t(mTiles) * 16;
    return srows * (format == 0 ? cols : cols / 2) * 2 + (format ? size_t(mTiles) * kSteps * 128 : 0) +
           (format == 2 ? size_t(mTiles) * chunks * 4 : 0);
  }
};

inline int gridFor(long long n, int threads) {
  long long b = (n + threads - 1) / threads;
  return int(std::min<long long>(std::max<long long>(b, 1), 65535LL * 16));
}

// src* are device pointers to layout.h arrays; w.vals/meta/sel must already point to device memory.
inline void repackOnDevice(const DevWeights& w, const void* srcVals, int dtype, const uint32_t* srcMeta,
                           const uint8_t* srcSel, int metaVariant, cudaStream_t s) {
  if (w.format == kFmtDense) {
    const long long n = (long long)w.mTiles * w.kSteps * 128;
    repackDenseKernel<<<gridFor(n, 256), 256, 0, s>>>(srcVals, dtype, w.rows, w.cols, const_cast<uint4*>(w.vals));
  } else {
    const int srows = w.mTiles * 16;
    const long long n = (long long)w.mTiles * w.kSteps * 64;
    repackSparseKernel<<<gridFor(n, 256), 256, 0, s>>>(srcVals, dtype, srcMeta, srows, w.cols, const_cast<uint4*>(w.vals),
                                                      const_cast<uint32_t*>(w.meta), metaVariant);
    if (w.format == kFmt75) {
      const long long m = (long long)w.mTiles * w.chunks;
      repackSelectKernel<<<gridFor(m, 256), 256, 0, s>>>(srcSel, srows, w.chunks, const_cast<uint32_t*>(w.sel));
    }
  }
  check(cudaGetLastError(), "launching the weight repack");
}

// fp32 [rows][D] -> bf16 k-permuted rows (what the mma kernels read as B), and natural-order rows
// too where dstNatural is given (what the large-batch wgmma kernel reads).
inline void launchToBf16(const float* src, __nv_bfloat16* dst, long long count, int D, cudaStream_t s,
                         __nv_bfloat16* dstNatural = nullptr) {
  toBf16Kernel<<<gridFor(count / 2 + 1, 256), 256, 0, s>>>(src, dst, count, D, dstNatural);
}

// When the large-batch kernel (moe_wgmma.cuh) runs: on a compute capability 9.0 device (its code is
// built for sm_90a only), for a format group whose largest expert has at least `minTokens` tokens.
// 32: on the H100 (mixtral shape) it beat the mma kernel at 32 tokens/expert (2:4 0.59 vs 0.62 ms,
// 75% 0.33 vs 0.40) and lost at 16 (0.62 vs 0.57, 0.35 vs 0.29); bench/results/gpu-h100-2026-11-25.md.
// HETMOE_WGMMA=0 turns it off; HETMOE_WGMMA_MIN sets minTokens.
// HETMOE_WG_TILES=0 restores one token-tile width for every expert of a large-batch launch, chosen
// by the largest (to measure wgTiles against it).
struct WgOptions {
  bool enabled = false;
  int minTokens = 32;
  int numSMs = 1;
  bool tilePerExpert = true;
  int maxKSplit = 8;  // decode launches: see kSplitFor
};
inline WgOptions wgOptionsFor(int device) {
  WgOptions o;
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, device) != cudaSuccess) {
    cudaGetLastError();
    return o;
  }
  o.numSMs = p.multiProcessorCount;
  o.enabled = p.major == 9 && p.minor == 0;
  if (const char* v = std::getenv("HETMOE_WGMMA")) o.enabled = o.enabled && std::atoi(v) != 0;
  if (const char* v = std::getenv("HETMOE_WGMMA_MIN")) o.minTokens = std::max(1, std::atoi(v));
  if (const char* v = std::getenv("HETMOE_WG_TILES")) o.tilePerExpert = std::atoi(v) != 0;
  if (const char* v = std::getenv("HETMOE_MMA_KSPLIT")) o.maxKSplit = std::min(8, std::max(1, std::atoi(v)));
  return o;
}

template <int FMT, int MODE, int N>
inline void launchWgN(int grid, const LayerArgs& a, cudaStream_t s) {
  using C = WgCfg<FMT, MODE, N>;
  static bool attrSet = false;  // per device would be stricter; one device per process in practice
  if (!attrSet) {
    check(cudaFuncSetAttribute(moeWgmmaKernel<FMT, MODE, N>, cudaFuncAttributeMaxDynamicSharedMemorySize, C::SMEM),
          "raising the shared-memory limit of the large-batch kernel");
    attrSet = true;
  }
  moeWgmmaKernel<FMT, MODE, N><<<grid, kWgThreads, C::SMEM, s>>>(a);
}
// n: the launch's token tile (64, 128 or 256, at most the format's cap; see wgTiles).
template <int FMT, int MODE>
inline void launchWgFmt(int n, int grid, const LayerArgs& a, cudaStream_t s) {
  constexpr int cap = wgMaxTile(FMT, MODE);
  if (n >= 256 && cap >= 256) launchWgN<FMT, MODE, (cap >= 256 ? 256 : 64)>(grid, a, s);
  else if (n >= 128 && cap >= 128) launchWgN<FMT, MODE, (cap >= 128 ? 128 : 64)>(grid, a, s);
  else launchWgN<FMT, MODE, 64>(grid, a, s);
}

// The token tiles of one expert of n tokens on the large-batch kernel, whose widest tile for the
// launch's format and mode is `cap` (64, 128 or 256): as many cap-wide tiles as fit, then the
// remainder r in the narrowest tile that holds it, except that 128 < r <= 192 (cap 256) takes a
// 128-wide and a 64-wide tile. A tile does the MMA work of its full width whatever it holds, and
// one tile width per launch used to be chosen by the group's largest expert: with Zipf-skewed
// counts an expert of 257 tokens ran 512 columns, one of 40 ran 256. The split of 128 < r <= 192
// does 25-50% less MMA work than one 256-wide tile, for one more pass over the weight block.
// `add(nStart, width)` receives the tiles.
template <typename Add>
inline void wgTiles(int n, int cap, Add add) {
  int start = 0;
  for (; n - start > cap; start += cap) add(start, cap);
  const int r = n - start;
  if (r <= 0) return;
  if (cap >= 256 && r > 128 && r <= 192) {
    add(start, 128);
    add(start + 128, 64);
  } else {
    add(start, r <= 64 ? 64 : r <= 128 ? 128 : 256);
  }
}
template <int MODE>
inline void launchWg(int fmt, int n, int grid, const LayerArgs& a, cudaStream_t s) {
  switch (fmt) {
    case kFmtDense: launchWgFmt<kFmtDense, MODE>(n, grid, a, s); break;
    case kFmt24: launchWgFmt<kFmt24, MODE>(n, grid, a, s); break;
    default: launchWgFmt<kFmt75, MODE>(n, grid, a, s); break;
  }
}
inline void launchPermuteBf16(const __nv_bfloat16* src, __nv_bfloat16* dst, long long count, int D, cudaStream_t s) {
  permuteBf16Kernel<<<gridFor(count / 2 + 1, 256), 256, 0, s>>>(src, dst, count, D);
}

inline void launchCopyRows(const float* src, float* dst, const int* rows, int count, int D, bool compact, cudaStream_t s) {
  if (count <= 0) return;
  copyRowsKernel<<<std::min(count, 65535), 256, 0, s>>>(src, dst, rows, count, D, compact ? 1 : 0);
}

struct GroupExpert {
  const DevWeights* gate = nullptr;  // SwiGLU only
  const DevWeights* up = nullptr;
  const DevWeights* down = nullptr;
  int tokOff = 0, n = 0;
};

// m16 tiles per warp: 2 for the wide tiles of 2:4, and of dense except its gate+up launch (which
// would spill), so each B fragment feeds two tiles.
inline int mtFor(int nt, int fmt, int mode) {
  return nt >= 4 && (fmt == kFmt24 || (fmt == kFmtDense && mode != kModeSwiGLU)) ? 2 : 1;
}

template <int FMT, int NT, int MODE>
inline void launchProjKS(int ks, int grid, const LayerArgs& a, cudaStream_t s) {
  switch (ks) {
    case 1: moeProjKernel<FMT, NT, MODE, 1, 1><<<grid, ctaWarps(NT, 1) * 32, 0, s>>>(a); break;
    case 2: moeProjKernel<FMT, NT, MODE, 1, 2><<<grid, ctaWarps(NT, 2) * 32, 0, s>>>(a); break;
    case 4: moeProjKernel<FMT, NT, MODE, 1, 4><<<grid, ctaWarps(NT, 4) * 32, 0, s>>>(a); break;
    default: moeProjKernel<FMT, NT, MODE, 1, 8><<<grid, ctaWarps(NT, 8) * 32, 0, s>>>(a); break;
  }
}

template <int FMT, int MODE>
inline void launchProjNT(int nt, int ks, int grid, const LayerArgs& a, cudaStream_t s) {
  switch (nt) {
    case 1: launchProjKS<FMT, 1, MODE>(ks, grid, a, s); break;
    case 2: launchProjKS<FMT, 2, MODE>(ks, grid, a, s); break;
    default:
      if constexpr (FMT == kFmt75 || (FMT == kFmtDense && MODE == kModeSwiGLU))
        moeProjKernel<FMT, 4, MODE, 1><<<grid, warpsFor(4) * 32, 0, s>>>(a);
      else moeProjKernel<FMT, 4, MODE, 2><<<grid, warpsFor(4) * 32, 0, s>>>(a);
      break;
  }
}

template <int MODE>
inline void launchProj(int fmt, int nt, int ks, int grid, const LayerArgs& a, cudaStream_t s) {
  switch (fmt) {
    case kFmtDense: launchProjNT<kFmtDense, MODE>(nt, ks, grid, a, s); break;
    case kFmt24: launchProjNT<kFmt24, MODE>(nt, ks, grid, a, s); break;
    default: launchProjNT<kFmt75, MODE>(nt, ks, grid, a, s); break;
  }
}

// Warps that split each m16 tile's K range in a decode launch (moeProjKernel's KS: 1, 2, 4 or 8):
// the fewest that give the launch `kSplitWarpsPerSM` warps per SM, each keeping at least one
// 128-column chunk. One warp per tile streams a few KiB at a time, and a launch of few tiles then
// leaves HBM idle: sigma-lite's down projection at one token is 128 tiles, one warp per SM, and
// its 64 MiB expert ran at 0.73 TB/s on the H200 (bench/results/h100-xeon16-2026-12-06).
// HETMOE_MMA_KSPLIT caps it (1: off).
constexpr int kSplitWarpsPerSM = 8;
inline int kSplitFor(int nt, int tiles, int kSteps, const WgOptions& o) {
  if (nt > 2) return 1;
  const int kChunks = (kSteps + 1) / 2;
  int ks = 1;
  while (2 * ks <= o.maxKSplit && 2 * ks <= kChunks && (long long)tiles * ks < (long long)kSplitWarpsPerSM * o.numSMs) ks *= 2;
  return ks;
}

// Tokens per warp tile / 8: as few as cover the largest expert up to 16 tokens (decode: the weights
// stream once), else 32 (with mtFor's m32 warp tiles where registers allow).
inline int chooseNT(int maxN, int fmt, bool twoMatrices) {
  if (maxN <= 8) return 1;
  if (maxN <= 16) return 2;
  return 4;
}

// The launches of one layer: for every group (one format and FFN kind, one shape, one kernel), the
// up/gate launches over all its experts, then the down launches.
class HostLaunchPlan {
 public:
  void begin(const WgOptions& wg = WgOptions()) {
    groups_.clear();
    blob_.clear();
    wg_ = wg;
  }

  // Whether some group runs the large-batch kernel (it reads hidden rows in natural order).
  bool needsNaturalHidden() const {
    for (const Group& g : groups_)
      if (g.large) return true;
    return false;
  }
  // "wgmma" when some group runs the large-batch kernel, else "mma" (the bench has one group).
  const char* pathName() const { return needsNaturalHidden() ? "wgmma" : "mma"; }

  // Experts of one format, FFN kind and shape: all on the large-batch kernel when the largest has at
  // least its minimum of tokens (each expert in token tiles of its own: wgTiles), else all on the mma
  // kernel. Experts below the minimum stay with the others: sent to the mma kernel in a group of their
  // own, sigma-lite's 256-token layers got slower (kernels 0.36 against 0.32 ms a layer on the H200:
  // two more launches, each filling the GPU less; bench/results/h100-xeon16-2026-12-06).
  void addGroup(int fmt, int ffn, const std::vector<GroupExpert>& ex) {
    int maxN = 0;
    for (const GroupExpert& e : ex) maxN = std::max(maxN, e.n);
    Group g;
    g.fmt = fmt;
    g.ffn = ffn;
    g.large = wg_.enabled && maxN >= wg_.minTokens;
    const DevWeights& up0 = *ex[0].up;
    const DevWeights& dn0 = *ex[0].down;
    g.upMTiles = up0.mTiles;
    g.upKSteps = up0.kSteps;
    g.upChunks = up0.chunks;
    g.dnMTiles = dn0.mTiles;
    g.dnKSteps = dn0.kSteps;
    g.dnChunks = dn0.chunks;
    const int upMode = ffn == kSwiGLU ? kModeSwiGLU : kModeGeLU;
    std::vector<ExpDesc> upD, dnD;
    for (const GroupExpert& e : ex) {
      ExpDesc u{}, d{};
      if (ffn == kSwiGLU) {
        u.vals[0] = e.gate->vals, u.meta[0] = e.gate->meta, u.sel[0] = e.gate->sel;
        u.vals[1] = e.up->vals, u.meta[1] = e.up->meta, u.sel[1] = e.up->sel;
      } else {
        u.vals[0] = e.up->vals, u.meta[0] = e.up->meta, u.sel[0] = e.up->sel;
      }
      d.vals[0] = e.down->vals, d.meta[0] = e.down->meta, d.sel[0] = e.down->sel;
      u.tokOff = d.tokOff = e.tokOff;
      u.n = d.n = e.n;
      upD.push_back(u);
      dnD.push_back(d);
    }
    g.offUpD = append(upD.data(), upD.size() * sizeof(ExpDesc));
    g.offDnD = append(dnD.data(), dnD.size() * sizeof(ExpDesc));
    if (g.large) {
      g.up = largeLaunches(ex, maxN, g.upMTiles, wgMaxTile(fmt, upMode));
      g.down = largeLaunches(ex, maxN, g.dnMTiles, wgMaxTile(fmt, kModeDown));
    } else {
      const int ntUp = chooseNT(maxN, fmt, ffn == kSwiGLU), ntDn = chooseNT(maxN, fmt, false);
      g.up = {mmaLaunch(ex, ntUp, g.upMTiles, g.upKSteps, mtFor(ntUp, fmt, upMode))};
      g.down = {mmaLaunch(ex, ntDn, g.dnMTiles, g.dnKSteps, mtFor(ntDn, fmt, kModeDown))};
    }
    groups_.push_back(g);
  }

  size_t bytes() const { return blob_.size(); }

  // Copies the plan to host memory `h`; `d` is where the same bytes will be on the device.
  void write(char* h, char* d) {
    std::memcpy(h, blob_.data(), blob_.size());
    dev_ = d;
  }

  // B: bf16 hidden [*, ldb], k-permuted rows (kPermute); Bnat: the same rows in natural order (read by
  // large-batch groups; may be null when needsNaturalHidden() is false); tokenRows: hidden row of each
  // selection; H: [S, ldh] bf16 scratch; out: fp32 [*, ldo] scattered by outRows, scaled by scales.
  void launchAll(const __nv_bfloat16* B, const __nv_bfloat16* Bnat, long long ldb, const int* tokenRows,
                 __nv_bfloat16* H, long long ldh, float* out, long long ldo, const int* outRows, const float* scales,
                 cudaStream_t s) const {
    for (const Group& g : groups_) {
      LayerArgs a{};
      a.exps = reinterpret_cast<const ExpDesc*>(dev_ + g.offUpD);
      a.mTiles = g.upMTiles;
      a.kSteps = g.upKSteps;
      a.chunks = g.upChunks;
      a.B = g.large ? Bnat : B;
      a.ldb = ldb;
      a.tokenRows = tokenRows;
      a.H = H;
      a.ldh = ldh;
      for (const Launch& l : g.up) {
        if (!l.items) continue;
        a.items = reinterpret_cast<const WorkItem*>(dev_ + l.offItems);
        a.numItems = l.items;
        if (g.large) {
          const int grid = std::min(l.items, wg_.numSMs);
          if (g.ffn == kSwiGLU) launchWg<kModeSwiGLU>(g.fmt, l.tile, grid, a, s);
          else launchWg<kModeGeLU>(g.fmt, l.tile, grid, a, s);
        } else {
          if (g.ffn == kSwiGLU) launchProj<kModeSwiGLU>(g.fmt, l.tile, l.ks, l.items, a, s);
          else launchProj<kModeGeLU>(g.fmt, l.tile, l.ks, l.items, a, s);
        }
      }
    }
    for (const Group& g : groups_) {
      LayerArgs a{};
      a.exps = reinterpret_cast<const ExpDesc*>(dev_ + g.offDnD);
      a.mTiles = g.dnMTiles;
      a.kSteps = g.dnKSteps;
      a.chunks = g.dnChunks;
      a.B = H;
      a.ldb = ldh;
      a.tokenRows = nullptr;
      a.out = out;
      a.ldo = ldo;
      a.outRows = outRows;
      a.scales = scales;
      for (const Launch& l : g.down) {
        if (!l.items) continue;
        a.items = reinterpret_cast<const WorkItem*>(dev_ + l.offItems);
        a.numItems = l.items;
        if (g.large) launchWg<kModeDown>(g.fmt, l.tile, std::min(l.items, wg_.numSMs), a, s);
        else launchProj<kModeDown>(g.fmt, l.tile, l.ks, l.items, a, s);
      }
    }
  }

 private:
  // One kernel launch of a projection: its work items and its tile (mma: NT, tokens per warp tile / 8,
  // and KS, the warps that split each tile's K range; large-batch kernel: the token tile N).
  struct Launch {
    int tile = 0, items = 0;
    size_t offItems = 0;
    int ks = 1;
  };
  struct Group {
    int fmt, ffn;
    bool large = false;  // the large-batch wgmma kernel (H in natural column order)
    int upMTiles, upKSteps, upChunks, dnMTiles, dnKSteps, dnChunks;
    size_t offUpD, offDnD;
    std::vector<Launch> up, down;  // mma: one each; large: one per token-tile width in use
  };

  // The mma kernel: blocks of m16 tiles (warpsFor(nt) warps x mt tiles each, or one tile whose K
  // range KS warps split: kSplitFor) x (nt * 8)-token tiles, n-tiles innermost (CTAs that run
  // together share weight tiles through L2).
  Launch mmaLaunch(const std::vector<GroupExpert>& ex, int nt, int mTiles, int kSteps, int mt) {
    int tiles = 0;
    for (const GroupExpert& e : ex) tiles += mTiles * ((e.n + nt * 8 - 1) / (nt * 8));
    const int ks = kSplitFor(nt, tiles, kSteps, wg_);
    const int mtPerBlock = ks > 1 ? 1 : warpsFor(nt) * mt;
    std::vector<WorkItem> items;
    const int mbs = (mTiles + mtPerBlock - 1) / mtPerBlock;
    for (size_t i = 0; i < ex.size(); ++i)
      for (int mb = 0; mb < mbs; ++mb)
        for (int n0 = 0; n0 < ex[i].n; n0 += nt * 8) items.push_back({int(i), mb, n0, 0});
    return {nt, int(items.size()), append(items.data(), items.size() * sizeof(WorkItem)), ks};
  }

  // The large-batch kernel: one launch per token-tile width (wgTiles), each over 128-row blocks x that
  // width's tiles of every expert, in groups of kGroup row blocks with the row block innermost: the
  // CTAs that run together cover a few row blocks by many token tiles, so each weight block and each
  // token tile comes from DRAM about once and is shared through L2.
  std::vector<Launch> largeLaunches(const std::vector<GroupExpert>& ex, int maxN, int mTiles, int cap) {
    constexpr int kGroup = 8;
    const int mbs = (mTiles + kWgMTiles - 1) / kWgMTiles;
    std::vector<Launch> launches;
    std::vector<int> starts;
    // HETMOE_WG_TILES=0: the one width the largest expert needs, for every expert.
    const int single = wg_.tilePerExpert ? 0 : std::min(cap, maxN > 128 ? 256 : maxN > 64 ? 128 : 64);
    for (int width = 256; width >= 64; width /= 2) {
      if (width > cap || (single && width != single)) continue;
      std::vector<WorkItem> items;
      for (size_t i = 0; i < ex.size(); ++i) {
        starts.clear();
        if (single)
          for (int n0 = 0; n0 < ex[i].n; n0 += single) starts.push_back(n0);
        else
          wgTiles(ex[i].n, cap, [&](int n0, int w) {
            if (w == width) starts.push_back(n0);
          });
        for (int m0 = 0; m0 < mbs; m0 += kGroup)
          for (int n0 : starts)
            for (int m = m0; m < std::min(mbs, m0 + kGroup); ++m) items.push_back({int(i), m, n0, 0});
      }
      if (!items.empty()) launches.push_back({width, int(items.size()), append(items.data(), items.size() * sizeof(WorkItem))});
    }
    return launches;
  }

  size_t append(const void* p, size_t n) {
    const size_t off = (blob_.size() + 255) & ~size_t(255);
    blob_.resize(off + n);
    if (n) std::memcpy(blob_.data() + off, p, n);
    return off;
  }
  std::vector<Group> groups_;
  std::vector<char> blob_;
  char* dev_ = nullptr;
  WgOptions wg_;
};

}  // namespace gpu
}  // namespace hetmoe
