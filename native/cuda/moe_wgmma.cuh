// The large-batch expert kernel (sm_90a): wgmma.mma_async(.sp) fed by a multi-stage cp.async
// shared-memory pipeline, persistent over (expert, 128-row block, N-token tile) work items.
// Included by gpu_backend.cu and gpu_bench.cu only (after moe_kernels.cuh).
//
// One CTA = 256 threads = two warpgroups; warpgroup w owns stored rows [64w, 64w+64) of the CTA's
// 128-row block (8 m16 tiles), for every matrix of the launch (gate and up together for SwiGLU),
// and all N tokens of the tile. Every thread also loads: each k64 step is one pipeline stage
//   [B: N token rows x 128 bytes, 128B-swizzled, K-major][A vals per matrix: 8 tiles in fragment
//    order, as stored][A meta per matrix][75%: select masks per matrix]
// filled with cp.async (16 B; the token rows are gathered through the selection array on load),
// STAGES (4-8) deep, loads running 2-5 steps ahead of the MMAs, one CTA barrier per step (per two
// steps where the ring has >= 6 stages), each step's loads issued right after its MMAs. A is read
// from shared memory into registers in the mma fragment layout the weights are stored in (which is
// the wgmma register-A layout of one warp's 16 rows), alternating between two register sets so no
// operand register of an MMA in flight is rewritten; B is read by the tensor cores through a
// shared-memory descriptor.
// Sparse metadata: stored lanes 4g+{0,1} hold the first k32 half, 4g+{2,3} the second, so the two
// wgmma.sp of a k64 step use sparsity selectors 0 and 1 (measured correct on the H100).
// 75%: each stored row p serves output rows 2p (chunks whose select bit is 0) and 2p+1 (bit 1); the
// kernel keeps one accumulator per output row and masks the A registers per 128-column chunk.
// Outputs: the gated activation goes to H in natural column order (the large-batch down launch
// reads it so); the down projection is scaled and scattered to its output rows.
// Measured on the H100 (mixtral shape): bench/results/gpu-h100-2026-11-25.md.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/moe_kernels.cuh"
#include "cuda/wgmma_ops.cuh"

namespace hetmoe {
namespace gpu {

constexpr int kWgThreads = 256;
constexpr int kWgMTiles = 8;  // m16 tiles of stored rows per CTA (two warpgroups x 4 warps)
constexpr int kWgSmemMax = 227 * 1024;

template <int FMT, int MODE, int N>
struct WgCfg {
  static constexpr int NMAT = MODE == kModeSwiGLU ? 2 : 1;
  static constexpr int NACC = NMAT * (FMT == kFmt75 ? 2 : 1);
  static constexpr int ACC = N / 2;  // fp32 accumulators per thread per set (m64 x N / 128 threads)
  static constexpr int P = FMT == kFmtDense ? 4 : 2;  // uint4 fragments per lane per k64 step
  static constexpr int B_BYTES = N * 128;
  static constexpr int VALS_BYTES = kWgMTiles * P * 512;
  static constexpr int META_BYTES = FMT == kFmtDense ? 0 : kWgMTiles * 128;
  static constexpr int SEL_BYTES = FMT == kFmt75 ? kWgMTiles * 4 : 0;
  static constexpr int OFF_VALS = B_BYTES;
  static constexpr int OFF_META = OFF_VALS + NMAT * VALS_BYTES;
  static constexpr int OFF_SEL = OFF_META + NMAT * META_BYTES;
  static constexpr int STAGE = (OFF_SEL + NMAT * SEL_BYTES + 1023) / 1024 * 1024;
  static constexpr int STAGES_FIT = (kWgSmemMax - 1024) / STAGE;
  static constexpr int STAGES = STAGES_FIT > 8 ? 8 : STAGES_FIT;
  static constexpr int SMEM = STAGES * STAGE + 1024;  // + slack to align the base to 1024
  static_assert(STAGES >= 3, "pipeline needs at least three stages");
  static_assert(NACC * ACC <= 128, "accumulators must fit the register budget");
  static_assert(N % 32 == 0 && N <= 256, "N tile");
};

// The widest token tile of a launch: the accumulator budget (128 fp32 registers per thread) divided
// among the accumulator sets (moe_launch.cuh: wgTiles cuts each expert's tokens into tiles).
__host__ __device__ constexpr int wgAccSets(int fmt, int mode) {
  return (mode == kModeSwiGLU ? 2 : 1) * (fmt == kFmt75 ? 2 : 1);
}
__host__ __device__ constexpr int wgMaxTile(int fmt, int mode) { return 256 / wgAccSets(fmt, mode); }

__device__ __forceinline__ uint32_t smemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cpAsync16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void cpAsync4(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(src) : "memory");
}
__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int K>
__device__ __forceinline__ void cpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(K) : "memory");
}
__device__ __forceinline__ uint4 ldShared4(uint32_t a) {
  uint4 v;
  asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(a));
  return v;
}
__device__ __forceinline__ uint32_t ldShared1(uint32_t a) {
  uint32_t v;
  asm volatile("ld.shared.u32 %0, [%1];\n" : "=r"(v) : "r"(a));
  return v;
}

#if HETMOE_WGMMA_ENABLED
__device__ __forceinline__ void wgFence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgCommit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int K>
__device__ __forceinline__ void wgWait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(K) : "memory");
}
__device__ __forceinline__ void fenceProxyAsync() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Pins a value in a register at this point of the program: whatever computes it is emitted before,
// so no instruction defines a wgmma operand between wgmma.fence and the MMAs (ptxas would
// otherwise inject fences or serialize the MMAs).
__device__ __forceinline__ void pinReg(uint32_t& x) { asm volatile("" : "+r"(x)::"memory"); }
__device__ __forceinline__ void pinReg(uint64_t& x) { asm volatile("" : "+l"(x)::"memory"); }
__device__ __forceinline__ void pinReg(int& x) { asm volatile("" : "+r"(x)::"memory"); }
__device__ __forceinline__ void pinReg(uint4& v) {
  asm volatile("" : "+r"(v.x), "+r"(v.y), "+r"(v.z), "+r"(v.w)::"memory");
}
template <int ACC>
__device__ __forceinline__ void fenceAcc(float (&d)[ACC]) {
#pragma unroll
  for (int i = 0; i < ACC; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

// K-major tile of rows x 128 bytes, 128-byte swizzle (8-row atoms of 1 KiB).
__device__ __forceinline__ uint64_t descSw128(uint32_t saddr) {
  return (uint64_t)((saddr & 0x3FFFF) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}

template <int N, int SPSEL>
__device__ __forceinline__ void wgSp(float (&d)[N / 2], const uint4& a, uint64_t desc, uint32_t meta, int scaleD) {
  if constexpr (N == 64) wg::mmaSp64<SPSEL>(d, a, desc, meta, scaleD);
  else if constexpr (N == 128) wg::mmaSp128<SPSEL>(d, a, desc, meta, scaleD);
  else wg::mmaSp256<SPSEL>(d, a, desc, meta, scaleD);
}
template <int N>
__device__ __forceinline__ void wgDense(float (&d)[N / 2], const uint4& a, uint64_t desc, int scaleD) {
  if constexpr (N == 64) wg::mmaDense64(d, a, desc, scaleD);
  else if constexpr (N == 128) wg::mmaDense128(d, a, desc, scaleD);
  else wg::mmaDense256(d, a, desc, scaleD);
}
#endif

// PF (HETMOE_WG_VARIANT bit 0): A-operand prefetch. The A fragments/metadata of the step after a
// barrier are read from shared memory into their register set before that barrier (right after the
// wgmma.wait_group that retired the MMAs which last read the set), so the MMAs issue as soon as the
// barrier opens. The barrier then has to make one more step visible: syncData waits for one more
// cp.async group (PFX). Where the ring is too shallow for that to be cheap (DIST < G + 2, except
// G = 2, DIST = 3, where that group was committed together with the one waited for anyway) PF only
// reorders nothing and the kernel is the default one.
template <int FMT, int MODE, int N, bool PF = false>
static __global__ void __launch_bounds__(kWgThreads, 1) moeWgmmaKernel(const LayerArgs args) {
#if HETMOE_WGMMA_ENABLED
  using C = WgCfg<FMT, MODE, N>;
  constexpr int S = C::STAGES, NMAT = C::NMAT, NACC = C::NACC, ACC = C::ACC, P = C::P;
  // Steps per CTA barrier: two where the ring is deep enough. Loads run DIST steps ahead; a load
  // group at step s refills the buffers of steps s-1-G .. s-2, whose MMAs are complete by then
  // (every warpgroup waits for all but its last MMA group before it reaches the barrier).
  constexpr int G = S >= 6 ? 2 : 1;
  constexpr int DIST = S - 1 - G;
  static_assert(DIST >= G, "pipeline too shallow");
  constexpr bool PFX = PF && (DIST >= G + 2 || (G == 2 && DIST == 3));
  constexpr int BCH = N / 32;                    // token rows each thread gathers per step (chunk tid&7 of each)
  constexpr int CH = kWgMTiles * P * 32;         // 16-byte A-value chunks per matrix and step
  constexpr int ACH = NMAT * CH / kWgThreads;    // of those, per thread
  extern __shared__ unsigned char smemRaw[];
  const uint32_t smemBase = (smemAddr(smemRaw) + 1023u) & ~1023u;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wgi = warp >> 2, wq = warp & 3;
  const int g = lane >> 2, t = lane & 3;
  const int kSteps = args.kSteps, mTiles = args.mTiles;
  const int myTiles = (args.numItems - (int)blockIdx.x + (int)gridDim.x - 1) / (int)gridDim.x;
  const int total = myTiles * kSteps;

  // ---- loader: per-thread source pointers of the tile being loaded (advanced by k per step) ----
  int lTile = -1, lKs = kSteps - 1;
  const __nv_bfloat16* bPtr[BCH];
  const uint4* aPtr[ACH];
  const uint4* mPtr = nullptr;
  const uint32_t* sPtr = nullptr;
  const int bc = tid & 7;                          // 16-byte chunk of the 128-byte k64 slice of a token row
  const int bSw = (bc ^ ((tid >> 3) & 7)) << 4;    // its swizzled place in the row
  const int metaQ = tid / (kWgMTiles * 8), metaRem = tid % (kWgMTiles * 8);
  const int selQ = tid / kWgMTiles, selMi = tid % kWgMTiles;

  auto loadNext = [&](int stageBuf) {
    if (++lKs == kSteps) {
      lKs = 0;
      ++lTile;
      const WorkItem it = args.items[blockIdx.x + lTile * gridDim.x];
      const ExpDesc& ex = args.exps[it.e];
      const int mtBase = it.mBlock * kWgMTiles;
#pragma unroll
      for (int i = 0; i < BCH; ++i) {
        int j = it.nStart + (tid >> 3) + 32 * i;
        if (j >= ex.n) j = ex.n - 1;
        const long long row = args.tokenRows ? args.tokenRows[ex.tokOff + j] : ex.tokOff + j;
        bPtr[i] = args.B + row * args.ldb + bc * 8;
      }
#pragma unroll
      for (int i = 0; i < ACH; ++i) {
        const int q = (i * kWgThreads) / CH;
        const int rem = tid + i * kWgThreads - q * CH;
        const int mt = min(mtBase + rem / (P * 32), mTiles - 1);
        aPtr[i] = ex.vals[q] + (long long)mt * kSteps * P * 32 + rem % (P * 32);
      }
      if constexpr (FMT != kFmtDense) {
        if (tid < NMAT * kWgMTiles * 8) {
          const int mt = min(mtBase + (metaRem >> 3), mTiles - 1);
          mPtr = reinterpret_cast<const uint4*>((metaQ == 0 ? ex.meta[0] : ex.meta[NMAT - 1]) + (long long)mt * kSteps * 32) +
                 (metaRem & 7);
        }
      }
      if constexpr (FMT == kFmt75) {
        if (tid < NMAT * kWgMTiles) {
          const int mt = min(mtBase + selMi, mTiles - 1);
          sPtr = (selQ == 0 ? ex.sel[0] : ex.sel[NMAT - 1]) + (long long)mt * args.chunks;
        }
      }
    }
    const uint32_t st = smemBase + stageBuf * C::STAGE;
    const int ks = lKs;
#pragma unroll
    for (int i = 0; i < BCH; ++i) cpAsync16(st + ((tid >> 3) + 32 * i) * 128 + bSw, bPtr[i] + ks * 64);
#pragma unroll
    for (int i = 0; i < ACH; ++i) cpAsync16(st + C::OFF_VALS + (tid + i * kWgThreads) * 16, aPtr[i] + ks * P * 32);
    if constexpr (FMT != kFmtDense)
      if (tid < NMAT * kWgMTiles * 8) cpAsync16(st + C::OFF_META + tid * 16, mPtr + ks * 8);
    if constexpr (FMT == kFmt75)
      if (tid < NMAT * kWgMTiles) cpAsync4(st + C::OFF_SEL + selQ * C::SEL_BYTES + selMi * 4, sPtr + (ks >> 1));
  };

  float acc[NACC][ACC];
#pragma unroll
  for (int k = 0; k < NACC; ++k)
#pragma unroll
    for (int i = 0; i < ACC; ++i) acc[k][i] = 0.f;

  // ---- prologue: DIST steps in flight ----
#pragma unroll 1
  for (int s = 0; s < DIST; ++s) {
    if (s < total) loadNext(s);
    cpAsyncCommit();
  }

  int cBuf = 0, lBuf = DIST % S, step = 0;
  const int mi = wgi * 4 + wq;  // this warp's m16 tile within the CTA

  // Waits until the data of the next steps has landed and is visible to every thread (and to the
  // tensor cores' async proxy).
  auto syncData = [&]() {
    cpAsyncWait<PFX ? DIST - G - 1 : DIST - G>();
    fenceProxyAsync();
    __syncthreads();
  };
  // Issues the loads of `cnt` later steps. Called after a step's MMAs are issued (so the tensor
  // cores start first): the buffers it refills belong to steps <= s-2, whose MMAs every warpgroup
  // retired before the barrier.
  auto issueLoads = [&](int cnt) {
#pragma unroll 1
    for (int i = 0; i < cnt; ++i) {
      if (step + i + DIST < total) loadNext(lBuf);
      cpAsyncCommit();
      if (++lBuf == S) lBuf = 0;
    }
  };

  // The wgmma register operands (A values, metadata) of two consecutive steps live in two register
  // sets: a set is rewritten only after the MMAs that read it have completed (PTX forbids writing
  // an operand register of a wgmma still in flight).
  uint4 aR[2][NMAT][FMT == kFmt75 ? 4 : P];
  uint32_t mR[2][NMAT];

  // Reads step `st`'s A fragments and metadata (75%: masked by the select bits) into set PAR.
  auto loadA = [&](auto parity, uint32_t st) {
    constexpr int PAR = decltype(parity)::value;
    auto& a = aR[PAR];
    auto& m = mR[PAR];
    (void)m;
#pragma unroll
    for (int q = 0; q < NMAT; ++q) {
      if constexpr (FMT == kFmt75) {
        // Per 128-column chunk each stored row's values belong to its even or its odd output row:
        // a[q][0..1] feed the even accumulators, a[q][2..3] the odd ones.
        const uint32_t sw = ldShared1(st + C::OFF_SEL + q * C::SEL_BYTES + mi * 4);
        const uint32_t oLo = ((sw >> g) & 1u) ? 0xffffffffu : 0u, oHi = ((sw >> (g + 8)) & 1u) ? 0xffffffffu : 0u;
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const uint4 v = ldShared4(st + C::OFF_VALS + q * C::VALS_BYTES + mi * P * 512 + j * 512 + lane * 16);
          a[q][j] = make_uint4(v.x & ~oLo, v.y & ~oHi, v.z & ~oLo, v.w & ~oHi);
          a[q][2 + j] = make_uint4(v.x & oLo, v.y & oHi, v.z & oLo, v.w & oHi);
        }
      } else {
#pragma unroll
        for (int j = 0; j < P; ++j)
          a[q][j] = ldShared4(st + C::OFF_VALS + q * C::VALS_BYTES + mi * P * 512 + j * 512 + lane * 16);
      }
      if constexpr (FMT != kFmtDense) m[q] = ldShared1(st + C::OFF_META + q * C::META_BYTES + mi * 128 + lane * 4);
    }
  };
  // Issues step `st`'s MMAs from register set PAR, then the loads of `loads` later steps, then
  // waits for all but this step's MMA group (dense: for all).
  auto mmaRun = [&](auto parity, uint64_t desc, int scale0, int loads) {
    constexpr int PAR = decltype(parity)::value;
    auto& a = aR[PAR];
    auto& m = mR[PAR];
    (void)m;
    // Operands pinned before the fence: descriptors of the k16 (dense) or k32 (sparse) slices, the
    // scale flag of the first MMA of a tile, the A values and the metadata.
    uint64_t dsc[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) dsc[j] = desc + (FMT == kFmtDense ? 2 * j : 4 * j);
#pragma unroll
    for (int j = 0; j < 4; ++j) pinReg(dsc[j]);
    int sc0 = scale0, one = 1;
    pinReg(sc0);
    pinReg(one);
#pragma unroll
    for (int q = 0; q < NMAT; ++q) {
#pragma unroll
      for (int j = 0; j < (FMT == kFmt75 ? 4 : P); ++j) pinReg(a[q][j]);
      if constexpr (FMT != kFmtDense) pinReg(m[q]);
    }
    if constexpr (FMT == kFmtDense) {
      wgFence();
#pragma unroll
      for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int q = 0; q < NMAT; ++q) wgDense<N>(acc[q], a[q][j], dsc[j], j ? one : sc0);
    } else {
      constexpr int SETS = FMT == kFmt75 ? 2 : 1;  // accumulator sets per matrix (75%: even, odd)
      wgFence();
#pragma unroll
      for (int q = 0; q < NMAT; ++q)
#pragma unroll
        for (int e = 0; e < SETS; ++e) wgSp<N, 0>(acc[SETS * q + e], a[q][2 * e], dsc[0], m[q], sc0);
#pragma unroll
      for (int q = 0; q < NMAT; ++q)
#pragma unroll
        for (int e = 0; e < SETS; ++e) wgSp<N, 1>(acc[SETS * q + e], a[q][2 * e + 1], dsc[1], m[q], one);
    }
    wgCommit();
    issueLoads(loads);
    // Dense: ptxas serializes its four k16 MMAs per step when the next step's A registers are
    // written with one group still in flight (C7513), so dense waits for its own group; the sparse
    // formats keep one group in flight.
    if constexpr (FMT == kFmtDense) wgWait<0>();
    else wgWait<1>();
  };
  auto mmaStep = [&](auto parity, int ks, int loads) {
    const uint32_t st = smemBase + cBuf * C::STAGE;
    if (++cBuf == S) cBuf = 0;
    const uint64_t desc = descSw128(st);
    const int scale0 = ks > 0 ? 1 : 0;
    loadA(parity, st);
    mmaRun(parity, desc, scale0, loads);
    ++step;
  };
  // PF: the next step's stage, without advancing.
  auto nextStage = [&]() {
    const uint32_t st = smemBase + cBuf * C::STAGE;
    if (++cBuf == S) cBuf = 0;
    return st;
  };
  auto peekStage = [&]() { return smemBase + cBuf * C::STAGE; };

  using P0 = std::integral_constant<int, 0>;
  using P1 = std::integral_constant<int, 1>;
#pragma unroll 1
  for (int tile = 0; tile < myTiles; ++tile) {
    if constexpr (!PFX) {
#pragma unroll 1
      for (int ks = 0; ks < kSteps; ks += 2) {
        const bool two = ks + 1 < kSteps;
        syncData();
        mmaStep(P0{}, ks, G == 2 && two ? 2 : 1);
        if (two) {
          if constexpr (G == 1) syncData();
          mmaStep(P1{}, ks + 1, G == 2 ? 0 : 1);
        }
      }
    } else {
      // Set 0 holds even steps, set 1 odd ones. Step ks's A is in set 0 when the pair starts
      // (loaded after the previous pair's last wgmma.wait_group, or here for the tile's first
      // step); step ks+1's is read after step ks's wait (which retired step ks-1, the last reader
      // of set 1) and, with G = 2, behind the second load group of the pair.
#pragma unroll 1
      for (int ks = 0; ks < kSteps; ks += 2) {
        const bool two = ks + 1 < kSteps;
        syncData();
        const uint32_t st0 = nextStage();
        if (ks == 0) loadA(P0{}, st0);
        if (!two) {
          mmaRun(P0{}, descSw128(st0), ks > 0 ? 1 : 0, 1);
          ++step;
          continue;
        }
        mmaRun(P0{}, descSw128(st0), ks > 0 ? 1 : 0, 1);
        const uint32_t st1 = nextStage();
        loadA(P1{}, st1);
        if constexpr (G == 2) {
          if (step + 1 + DIST < total) loadNext(lBuf);
          cpAsyncCommit();
          if (++lBuf == S) lBuf = 0;
        }
        ++step;
        if constexpr (G == 1) syncData();
        mmaRun(P1{}, descSw128(st1), 1, G == 2 ? 0 : 1);
        ++step;
        // Visible: the last barrier waited for step ks+2 too; set 0's last reader (step ks) retired.
        if (ks + 2 < kSteps) loadA(P0{}, peekStage());
      }
    }

    // ---- epilogue of the tile ----
    wgWait<0>();
#pragma unroll
    for (int k = 0; k < NACC; ++k) fenceAcc<ACC>(acc[k]);
    const WorkItem it = args.items[blockIdx.x + tile * gridDim.x];
    const ExpDesc& ex = args.exps[it.e];
    const int n = ex.n;
    const int mt = it.mBlock * kWgMTiles + mi;
    if (mt < mTiles) {
#pragma unroll
      for (int nb = 0; nb < N / 8; ++nb) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int j = it.nStart + nb * 8 + 2 * t + c;
          if (j >= n) continue;
          const int sel = ex.tokOff + j;
          float sc = 1.f;
          long long orow = sel;
          if constexpr (MODE == kModeDown) {
            if (args.scales) sc = args.scales[sel];
            if (args.outRows) orow = args.outRows[sel];
          }
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int i = nb * 4 + 2 * h + c;
            const int srow = 16 * mt + g + 8 * h;
            if constexpr (MODE == kModeDown) {
              if constexpr (FMT == kFmt75) {
                *reinterpret_cast<float2*>(args.out + orow * args.ldo + 2 * srow) = make_float2(sc * acc[0][i], sc * acc[1][i]);
              } else {
                args.out[orow * args.ldo + srow] = sc * acc[0][i];
              }
            } else {
              __nv_bfloat16* hp = args.H + (long long)sel * args.ldh;
              if constexpr (FMT == kFmt75) {
                float he, ho;
                if constexpr (MODE == kModeSwiGLU) {
                  he = siluf(acc[0][i]) * acc[2][i];
                  ho = siluf(acc[1][i]) * acc[3][i];
                } else {
                  he = geluTanh(acc[0][i]);
                  ho = geluTanh(acc[1][i]);
                }
                *reinterpret_cast<__nv_bfloat162*>(hp + 2 * srow) = __floats2bfloat162_rn(he, ho);
              } else {
                const float hv = MODE == kModeSwiGLU ? siluf(acc[0][i]) * acc[NMAT - 1][i] : geluTanh(acc[0][i]);
                hp[srow] = __float2bfloat16_rn(hv);
              }
            }
          }
        }
      }
    }
#pragma unroll
    for (int k = 0; k < NACC; ++k) fenceAcc<ACC>(acc[k]);
  }
  cpAsyncWait<0>();
#else
  // Built for a target without wgmma (sm_80): never launched there (the host checks the device).
  __trap();
#endif
}

// ---- 75% without the masked double MMA (HETMOE_WG_VARIANT bit 1) ----
// The default kernel issues every 75% MMA twice (A masked for the even and for the odd output rows),
// so it does 2:4's MMA work and reads the token tile twice per stored row. This kernel issues each
// MMA once: per 128-column chunk (= one pair of k64 steps, one CTA barrier) the stored rows' MMAs
// accumulate into a scratch accumulator (scale-d = 0 on the chunk's first MMA), which is then added
// into the even or the odd output accumulator by the row's select bit. Two scratch sets alternate by
// chunk, so that add (2 FFMA per element) runs while the next chunk's MMAs are in flight.
// Registers: even + odd + 2 scratch = 4 sets of N/2, so N = 64. Every warp works on one matrix:
// for SwiGLU the CTA takes 64 stored rows (4 m16 tiles) of gate (warpgroup 0) and of up (warpgroup 1),
// combined through shared memory in the epilogue; for GeLU-up and down it takes 128 stored rows of
// the one matrix, as the default kernel does. A stage holds 8 "slots" (matrix, m16 tile), slot = warp.
// Shared-memory bytes per token and k64 step (writes + tensor-core reads + A register reads):
//   SwiGLU: default (N=64, 128 stored rows x 2 matrices) 128 + 1024 + 2*288 = 1728 for 256 output rows
//           x 2 matrices; here 128 + 256 + 2*144 = 672 for 128 output rows x 2 matrices: 0.053 ->
//           0.041 bytes per dense-equivalent MAC (-22%), and half the MMA work.
//   down:   default (N=128) 784 -> here (N=64) 672 for 256 output rows: 0.048 -> 0.041 (-14%).
// L2->SM bytes per dense-equivalent MAC rise (the token tile is re-read per 64 instead of 128 stored
// rows for SwiGLU, per 64 instead of 128 tokens for down): SwiGLU 0.79 -> 1.04, down 0.76 -> 1.04
// bytes per token, output row and k64 step.
template <int MODE>
struct Wg75sCfg {
  static constexpr int N = 64;
  static constexpr bool SPLIT = MODE == kModeSwiGLU;
  static constexpr int BT = SPLIT ? 4 : 8;  // m16 tiles of stored rows per CTA (per matrix)
  static constexpr int ACC = N / 2;
  static constexpr int B_BYTES = N * 128;
  static constexpr int OFF_VALS = B_BYTES;                   // 8 slots x 2 fragments x 32 lanes x 16 B
  static constexpr int OFF_META = OFF_VALS + kWgMTiles * 1024;  // 8 slots x 32 lanes x 4 B
  static constexpr int OFF_SEL = OFF_META + kWgMTiles * 128;    // 8 slots x 4 B
  static constexpr int STAGE = (OFF_SEL + kWgMTiles * 4 + 1023) / 1024 * 1024;
  static constexpr int XBUF = SPLIT ? 2 * 2 * (ACC / 2) * 128 * 4 : 0;  // epilogue exchange, gate <-> up
  static constexpr int STAGES_FIT = (kWgSmemMax - 1024 - XBUF) / STAGE;
  static constexpr int STAGES = STAGES_FIT > 8 ? 8 : STAGES_FIT;
  static constexpr int SMEM = STAGES * STAGE + XBUF + 1024;
  static_assert(STAGES == 8, "the pipeline below assumes 8 stages (two steps per barrier, loads 5 ahead)");
  static_assert(4 * ACC <= 128, "accumulators must fit the register budget");
};

template <int MODE, bool PF>
static __global__ void __launch_bounds__(kWgThreads, 1) moeWg75sKernel(const LayerArgs args) {
#if HETMOE_WGMMA_ENABLED
  using C = Wg75sCfg<MODE>;
  constexpr int N = C::N, S = C::STAGES, ACC = C::ACC, BT = C::BT;
  constexpr int G = 2;             // steps per CTA barrier = one 128-column chunk
  constexpr int DIST = S - 1 - G;  // 5: loads run 5 steps ahead
  // PF: the barrier of a pair also makes the next pair's first step visible. Its load group was
  // committed together with the pair's second step's (both at the first step of the pair 4 steps
  // earlier), so the extra wait costs about nothing.
  constexpr int WAITN = PF ? DIST - G - 1 : DIST - G;
  constexpr int BCH = N / 32;  // token rows each thread gathers per step
  constexpr int ACH = 2;       // 16-byte A chunks per thread per step (8 slots x 64 / 256)
  extern __shared__ unsigned char smemRaw[];
  const uint32_t smemBase = (smemAddr(smemRaw) + 1023u) & ~1023u;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wgi = warp >> 2, wq = warp & 3;
  const int g = lane >> 2, t = lane & 3;
  const int kSteps = args.kSteps, mTiles = args.mTiles;
  const int myTiles = (args.numItems - (int)blockIdx.x + (int)gridDim.x - 1) / (int)gridDim.x;
  const int total = myTiles * kSteps;
  const int mi = warp;  // this warp's slot

  // ---- loader ----
  int lTile = -1, lKs = kSteps - 1;
  const __nv_bfloat16* bPtr[BCH];
  const uint4* aPtr[ACH];
  const uint4* mPtr = nullptr;
  const uint32_t* sPtr = nullptr;
  const int bc = tid & 7;
  const int bSw = (bc ^ ((tid >> 3) & 7)) << 4;

  auto loadNext = [&](int stageBuf) {
    if (++lKs == kSteps) {
      lKs = 0;
      ++lTile;
      const WorkItem it = args.items[blockIdx.x + lTile * gridDim.x];
      const ExpDesc& ex = args.exps[it.e];
      const int mtBase = it.mBlock * BT;
#pragma unroll
      for (int i = 0; i < BCH; ++i) {
        int j = it.nStart + (tid >> 3) + 32 * i;
        if (j >= ex.n) j = ex.n - 1;
        const long long row = args.tokenRows ? args.tokenRows[ex.tokOff + j] : ex.tokOff + j;
        bPtr[i] = args.B + row * args.ldb + bc * 8;
      }
#pragma unroll
      for (int i = 0; i < ACH; ++i) {
        const int c = tid + i * kWgThreads;
        const int slot = c >> 6;
        const int q = C::SPLIT ? slot >> 2 : 0;
        const int mt = min(mtBase + (C::SPLIT ? slot & 3 : slot), mTiles - 1);
        aPtr[i] = ex.vals[q] + (long long)mt * kSteps * 64 + (c & 63);
      }
      if (tid < kWgMTiles * 8) {
        const int slot = tid >> 3;
        const int q = C::SPLIT ? slot >> 2 : 0;
        const int mt = min(mtBase + (C::SPLIT ? slot & 3 : slot), mTiles - 1);
        mPtr = reinterpret_cast<const uint4*>(ex.meta[q] + (long long)mt * kSteps * 32) + (tid & 7);
      }
      if (tid < kWgMTiles) {
        const int q = C::SPLIT ? tid >> 2 : 0;
        const int mt = min(mtBase + (C::SPLIT ? tid & 3 : tid), mTiles - 1);
        sPtr = ex.sel[q] + (long long)mt * args.chunks;
      }
    }
    const uint32_t st = smemBase + stageBuf * C::STAGE;
    const int ks = lKs;
#pragma unroll
    for (int i = 0; i < BCH; ++i) cpAsync16(st + ((tid >> 3) + 32 * i) * 128 + bSw, bPtr[i] + ks * 64);
#pragma unroll
    for (int i = 0; i < ACH; ++i) cpAsync16(st + C::OFF_VALS + (tid + i * kWgThreads) * 16, aPtr[i] + ks * 64);
    if (tid < kWgMTiles * 8) cpAsync16(st + C::OFF_META + tid * 16, mPtr + ks * 8);
    if (tid < kWgMTiles) cpAsync4(st + C::OFF_SEL + tid * 4, sPtr + (ks >> 1));
  };

  float E[ACC], O[ACC], X[2][ACC];  // even and odd output rows; scratch per chunk parity
#pragma unroll
  for (int i = 0; i < ACC; ++i) X[0][i] = X[1][i] = 0.f;

#pragma unroll 1
  for (int s = 0; s < DIST; ++s) {
    if (s < total) loadNext(s);
    cpAsyncCommit();
  }
  int cBuf = 0, lBuf = DIST % S, step = 0;

  auto syncData = [&]() {
    cpAsyncWait<WAITN>();
    fenceProxyAsync();
    __syncthreads();
  };
  // The load group of global step step+ahead+DIST (an empty group past the end).
  auto issueOne = [&](int ahead) {
    if (step + ahead + DIST < total) loadNext(lBuf);
    cpAsyncCommit();
    if (++lBuf == S) lBuf = 0;
  };
  auto nextStage = [&]() {
    const uint32_t st = smemBase + cBuf * C::STAGE;
    if (++cBuf == S) cBuf = 0;
    return st;
  };

  // A register sets: set 0 for the first step of a chunk, set 1 for the second; a set is rewritten
  // only after the wgmma.wait_group that retired the MMAs reading it.
  uint4 aR[2][2];
  uint32_t mR[2];
  auto loadA = [&](auto parity, uint32_t st) {
    constexpr int PAR = decltype(parity)::value;
#pragma unroll
    for (int j = 0; j < 2; ++j) aR[PAR][j] = ldShared4(st + C::OFF_VALS + mi * 1024 + j * 512 + lane * 16);
    mR[PAR] = ldShared1(st + C::OFF_META + mi * 128 + lane * 4);
  };
  // One k64 step: two k32 MMAs into scratch set XP (scale-d 0 on the first when scale0 == 0).
  auto mmaRun = [&](auto parity, auto xparity, uint32_t st, int scale0, int loads) {
    constexpr int PAR = decltype(parity)::value;
    constexpr int XP = decltype(xparity)::value;
    const uint64_t desc = descSw128(st);
    uint64_t d0 = desc, d1 = desc + 4;
    int sc0 = scale0, one = 1;
    pinReg(d0);
    pinReg(d1);
    pinReg(sc0);
    pinReg(one);
    pinReg(aR[PAR][0]);
    pinReg(aR[PAR][1]);
    pinReg(mR[PAR]);
    wgFence();
    wgSp<N, 0>(X[XP], aR[PAR][0], d0, mR[PAR], sc0);
    wgSp<N, 1>(X[XP], aR[PAR][1], d1, mR[PAR], one);
    wgCommit();
#pragma unroll 1
    for (int i = 0; i < loads; ++i) issueOne(i);
    wgWait<1>();
  };
  // Adds a finished chunk's scratch set into the even or odd rows (select bit 0: even, 1: odd).
  // The fences keep the reads after the wait that retired the chunk and before the MMAs that
  // overwrite the set.
  auto addChunk = [&](auto xparity, uint32_t sel) {
    constexpr int XP = decltype(xparity)::value;
    fenceAcc<ACC>(X[XP]);
    const float o0 = ((sel >> g) & 1u) ? 1.f : 0.f, o1 = ((sel >> (g + 8)) & 1u) ? 1.f : 0.f;
    const float e0 = 1.f - o0, e1 = 1.f - o1;
#pragma unroll
    for (int i = 0; i < ACC; ++i) {
      const bool hi = (i >> 1) & 1;  // element i is row g + 8 * ((i >> 1) & 1)
      E[i] = fmaf(hi ? e1 : e0, X[XP][i], E[i]);
      O[i] = fmaf(hi ? o1 : o0, X[XP][i], O[i]);
    }
    fenceAcc<ACC>(E);
    fenceAcc<ACC>(O);
  };

  using P0 = std::integral_constant<int, 0>;
  using P1 = std::integral_constant<int, 1>;
  uint32_t selw[2] = {0u, 0u};  // select word of the chunk in scratch set 0 / 1
  // One chunk (steps ks0 and ks0+1 if that exists) into scratch set XP. With HASPREV, the chunk
  // before it (scratch set XP^1, same loop iteration) is complete after this chunk's first wait
  // and is added there, while this chunk's MMAs are in flight.
  auto chunk = [&](auto xparity, auto hasPrev, int ks0) {
    constexpr int XP = decltype(xparity)::value;
    const bool two = ks0 + 1 < kSteps;
    syncData();
    const uint32_t st0 = nextStage();
    selw[XP] = ldShared1(st0 + C::OFF_SEL + mi * 4);
    if (!PF || ks0 == 0) loadA(P0{}, st0);
    mmaRun(P0{}, xparity, st0, 0, PF ? 1 : (two ? 2 : 1));
    uint32_t st1 = 0;
    if (PF && two) {
      st1 = nextStage();
      loadA(P1{}, st1);
      issueOne(1);
    }
    if constexpr (decltype(hasPrev)::value) addChunk(std::integral_constant<int, XP ^ 1>{}, selw[XP ^ 1]);
    ++step;
    if (two) {
      if (!PF) {
        st1 = nextStage();
        loadA(P1{}, st1);
      }
      mmaRun(P1{}, xparity, st1, 1, 0);
      ++step;
      if (PF && ks0 + 2 < kSteps) loadA(P0{}, smemBase + cBuf * C::STAGE);
    }
  };
  // The last chunk of a loop iteration: wait for all MMAs, add its scratch set. ptxas serializes
  // every wgmma of the function (C7514) when an accumulator that is in flight at a loop back-edge is
  // read inside the loop, even after a wgmma.wait_group has retired it; so nothing is in flight at
  // the back-edge, and the MMAs are drained once per UNR chunks instead of overlapping there.
  auto drain = [&](auto xparity) {
    constexpr int XP = decltype(xparity)::value;
    wgWait<0>();
    addChunk(xparity, selw[XP]);
  };
  constexpr int UNR = 4;  // chunks per loop iteration
  // Chunk U of the iteration at ks0, then the next one if it exists, else the drain: every path to
  // the back-edge goes through a drain.
  auto body = [&](auto self, auto u, int ks0) -> void {
    constexpr int U = decltype(u)::value;
    chunk(std::integral_constant<int, U & 1>{}, std::integral_constant<bool, (U > 0)>{}, ks0 + 2 * U);
    if constexpr (U + 1 < UNR) {
      if (ks0 + 2 * (U + 1) < kSteps) self(self, std::integral_constant<int, U + 1>{}, ks0);
      else drain(std::integral_constant<int, U & 1>{});
    } else {
      drain(std::integral_constant<int, U & 1>{});
    }
  };

#pragma unroll 1
  for (int tile = 0; tile < myTiles; ++tile) {
#pragma unroll
    for (int i = 0; i < ACC; ++i) E[i] = O[i] = 0.f;
#pragma unroll 1
    for (int ks0 = 0; ks0 < kSteps; ks0 += 2 * UNR) body(body, P0{}, ks0);

    // ---- epilogue of the tile ----
    const WorkItem it = args.items[blockIdx.x + tile * gridDim.x];
    const ExpDesc& ex = args.exps[it.e];
    const int n = ex.n;
    const int mt = it.mBlock * BT + (C::SPLIT ? wq : mi);
    if constexpr (C::SPLIT) {
      // Warpgroup 0 holds gate, 1 up, of the same rows and tokens in the same fragment layout.
      // 0 finishes the first half of the fragment's tokens (i < ACC/2), 1 the second half; each
      // sends the other the half it does not finish: xb[sender][even/odd][i'][thread].
      constexpr int HALF = ACC / 2;
      float* xb = reinterpret_cast<float*>(smemRaw + (smemBase - smemAddr(smemRaw)) + S * C::STAGE);
      const int tw = tid & 127;
      float* mine = xb + wgi * 2 * HALF * 128;
      const float* theirs = xb + (wgi ^ 1) * 2 * HALF * 128;
      if (wgi == 0) {
#pragma unroll
        for (int k = 0; k < HALF; ++k) {
          mine[k * 128 + tw] = E[HALF + k];
          mine[(HALF + k) * 128 + tw] = O[HALF + k];
        }
      } else {
#pragma unroll
        for (int k = 0; k < HALF; ++k) {
          mine[k * 128 + tw] = E[k];
          mine[(HALF + k) * 128 + tw] = O[k];
        }
      }
      __syncthreads();
      auto store = [&](int i, float he, float ho) {
        const int nb = i >> 2, h = (i >> 1) & 1, c = i & 1;
        const int j = it.nStart + nb * 8 + 2 * t + c;
        if (mt < mTiles && j < n) {
          const int srow = 16 * mt + g + 8 * h;
          __nv_bfloat16* hp = args.H + (long long)(ex.tokOff + j) * args.ldh;
          *reinterpret_cast<__nv_bfloat162*>(hp + 2 * srow) = __floats2bfloat162_rn(he, ho);
        }
      };
      if (wgi == 0) {
#pragma unroll
        for (int k = 0; k < HALF; ++k)
          store(k, siluf(E[k]) * theirs[k * 128 + tw], siluf(O[k]) * theirs[(HALF + k) * 128 + tw]);
      } else {
#pragma unroll
        for (int k = 0; k < HALF; ++k)
          store(HALF + k, siluf(theirs[k * 128 + tw]) * E[HALF + k], siluf(theirs[(HALF + k) * 128 + tw]) * O[HALF + k]);
      }
    } else if (mt < mTiles) {
#pragma unroll
      for (int nb = 0; nb < N / 8; ++nb) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int j = it.nStart + nb * 8 + 2 * t + c;
          if (j >= n) continue;
          const int sel = ex.tokOff + j;
          float sc = 1.f;
          long long orow = sel;
          if constexpr (MODE == kModeDown) {
            if (args.scales) sc = args.scales[sel];
            if (args.outRows) orow = args.outRows[sel];
          }
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int i = nb * 4 + 2 * h + c;
            const int srow = 16 * mt + g + 8 * h;
            if constexpr (MODE == kModeDown) {
              *reinterpret_cast<float2*>(args.out + orow * args.ldo + 2 * srow) = make_float2(sc * E[i], sc * O[i]);
            } else {
              __nv_bfloat16* hp = args.H + (long long)sel * args.ldh;
              *reinterpret_cast<__nv_bfloat162*>(hp + 2 * srow) = __floats2bfloat162_rn(geluTanh(E[i]), geluTanh(O[i]));
            }
          }
        }
      }
    }
    fenceAcc<ACC>(E);
    fenceAcc<ACC>(O);
  }
  cpAsyncWait<0>();
#else
  __trap();
#endif
}

}  // namespace gpu
}  // namespace hetmoe
