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

template <int FMT, int MODE, int N>
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
    cpAsyncWait<DIST - G>();
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

  auto mmaStep = [&](auto parity, int ks, int loads) {
    constexpr int PAR = decltype(parity)::value;
    const uint32_t st = smemBase + cBuf * C::STAGE;
    if (++cBuf == S) cBuf = 0;
    const uint64_t desc = descSw128(st);
    const int scale0 = ks > 0 ? 1 : 0;
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
    ++step;
  };

#pragma unroll 1
  for (int tile = 0; tile < myTiles; ++tile) {
#pragma unroll 1
    for (int ks = 0; ks < kSteps; ks += 2) {
      const bool two = ks + 1 < kSteps;
      syncData();
      mmaStep(std::integral_constant<int, 0>{}, ks, G == 2 && two ? 2 : 1);
      if (two) {
        if constexpr (G == 1) syncData();
        mmaStep(std::integral_constant<int, 1>{}, ks + 1, G == 2 ? 0 : 1);
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

}  // namespace gpu
}  // namespace hetmoe
