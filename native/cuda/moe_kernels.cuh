// The sparse-sparse expert kernels and the repack kernels that build their weight layout.
// Included by gpu_backend.cu and gpu_bench.cu only (one translation unit each instantiates what it
// launches; everything here is static/inline so the two do not clash).
//
// Device weight layout ("fragment order"), built from layout.h bytes by the repack kernels:
//   A matrix of R stored rows (R = rows for dense and 2:4, rows/2 for 75%) x K input columns is cut
//   into m16 tiles (16 stored rows) and k64 steps (64 input columns). For tile mt and step ks:
//   dense  vals: 4 mma.m16n8k16 A fragments, [4][32 lanes] x uint4 (8 bf16)          -> 2048 B
//   sparse vals: 2 mma.sp.m16n8k32 A fragments (compressed 16x16), [2][32] x uint4    -> 1024 B
//          meta: [32 lanes] x uint32; lanes with (lane&3) in {0,1} hold the metadata of the first
//                k32 half (sparsity selector 0), lanes 2,3 of the second (selector 1); lane 4g+h
//                holds groups 4h..4h+3 of row g in bits 0-15 and of row g+8 in bits 16-31.
//   75%    sel:  [mTiles][chunks of 128 columns] x uint32, bit i = which row of pair (16*mt + i)
//                is kept in that chunk.
//   Offsets: vals[((mt * kSteps + ks) * P + j) * 32 + lane] with P = 4 (dense) or 2 (sparse);
//            meta[(mt * kSteps + ks) * 32 + lane]; sel[mt * chunks + chunk].
// A warp streams its tile's fragments with one coalesced 16-byte load per lane per fragment: no
// shared memory, no block barriers; the token operand (B) is gathered straight from the hidden
// rows named by the selection array (L1/L2 resident: it is small next to the weights).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cstdint>

namespace hetmoe {
namespace gpu {

enum : int { kFmtDense = 0, kFmt24 = 1, kFmt75 = 2 };
enum : int { kModeSwiGLU = 0, kModeGeLU = 1, kModeDown = 2 };

// Warps per CTA: 4, and 8 for the widest tiles (64 tokens), so a CTA covers more rows of
// the same tokens (B is shared through L1) and reads fewer bytes from L2 per flop.
__host__ __device__ constexpr int warpsFor(int nt) { return nt >= 8 ? 8 : 4; }

// One expert's operands for one launch (device memory, filled per call).
struct ExpDesc {
  const uint4* vals[2];     // up-launch: [0] gate, [1] up (GeLU: [0] up); down-launch: [0] down
  const uint32_t* meta[2];
  const uint32_t* sel[2];
  int tokOff;               // offset of this expert's selections in the concatenated arrays
  int n;                    // tokens routed to it
};

struct WorkItem {
  int e;       // ExpDesc index
  int mBlock;  // block of warpsFor(NT) m16 tiles
  int nStart;  // first token (within the expert) of this n-tile
  int pad;
};

struct LayerArgs {
  const ExpDesc* exps;
  const WorkItem* items;
  int numItems;
  int mTiles;          // m16 tiles of stored rows (per matrix)
  int kSteps;          // input columns / 64
  int chunks;          // 75%: ceil(cols / 128)
  // B operand (tokens): bf16 rows; row index = tokenRows[tokOff + j] (up) or tokOff + j (down)
  const __nv_bfloat16* B;
  long long ldb;
  const int* tokenRows;  // nullptr: rows are tokOff + j
  // up-launch output: H[(tokOff + j) * ldh + row] bf16
  __nv_bfloat16* H;
  long long ldh;
  // down-launch output: out[outRows[tokOff + j] * ldo + row] = scale * acc (fp32)
  float* out;
  long long ldo;
  const int* outRows;
  const float* scales;  // nullptr: 1
};

__device__ __forceinline__ void mmaDense(float (&c)[4], const uint4& a, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
}

template <int SEL>
__device__ __forceinline__ void mmaSparse(float (&c)[4], const uint4& a, uint32_t b0, uint32_t b1, uint32_t b2,
                                          uint32_t b3, uint32_t meta) {
  asm volatile(
      "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
      "{%4,%5,%6,%7}, {%8,%9,%10,%11}, {%0,%1,%2,%3}, %12, %13;\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1), "r"(b2), "r"(b3), "r"(meta), "n"(SEL));
}

__device__ __forceinline__ uint4 ldgStream(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}
__device__ __forceinline__ uint32_t ldgStream32(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.global.nc.L1::no_allocate.u32 %0, [%1];\n" : "=r"(v) : "l"(p));
  return v;
}

__device__ __forceinline__ float siluf(float x) { return x / (1.f + __expf(-x)); }
__device__ __forceinline__ float geluTanh(float x) {
  const float k0 = 0.7978845608028654f, k1 = 0.044715f;
  return 0.5f * x * (1.f + tanhf(k0 * (x + k1 * x * x * x)));
}

// Where logical input column k of a B row (hidden or H) is stored: within each block of 64,
// logical pair P = k/2 (held by lane t = P%4 as register i = P/4 of the mma B fragments) goes to
// pair 8t + i, so each lane's 8 registers of a k64 step are contiguous.
__host__ __device__ __forceinline__ int kPermute(int k) {
  const int p = (k & 63) >> 1;
  return (k & ~63) | ((((p & 3) << 3) | (p >> 2)) << 1) | (k & 1);
}

// A fragments of one k64 step for one matrix.
template <int FMT>
struct AFrag {
  uint4 v[FMT == kFmtDense ? 4 : 2];
  uint32_t m;
};

template <int FMT>
__device__ __forceinline__ void loadA(AFrag<FMT>& f, const uint4* vals, const uint32_t* meta, long long tileStep,
                                      int lane) {
  constexpr int P = FMT == kFmtDense ? 4 : 2;
#pragma unroll
  for (int j = 0; j < P; ++j) f.v[j] = ldgStream(vals + (tileStep * P + j) * 32 + lane);
  if (FMT != kFmtDense) f.m = ldgStream32(meta + tileStep * 32 + lane);
}

template <int FMT, int NT>
__device__ __forceinline__ void mmaStep(float (&acc)[NT][4], const AFrag<FMT>& a, const uint32_t (&b)[NT][8]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    if (FMT == kFmtDense) {
#pragma unroll
      for (int j = 0; j < 4; ++j) mmaDense(acc[nt], a.v[j], b[nt][2 * j], b[nt][2 * j + 1]);
    } else {
      mmaSparse<0>(acc[nt], a.v[0], b[nt][0], b[nt][1], b[nt][2], b[nt][3], a.m);
      mmaSparse<1>(acc[nt], a.v[1], b[nt][4], b[nt][5], b[nt][6], b[nt][7], a.m);
    }
  }
}

// Warps of one CTA that split the K range of one m16 tile between them (KS > 1: decode launches too
// small to fill the GPU; see kSplitFor), and their partial sums' shared-memory bytes.
__host__ __device__ constexpr int ctaWarps(int nt, int ks) { return ks > 1 ? ks : warpsFor(nt); }
__host__ __device__ constexpr int kSplitSmemFloats(int fmt, int nt, int mode, int ks) {
  return ks > 1 ? (ks - 1) * 32 * ((mode == kModeSwiGLU ? 2 : 1) * nt * 4 * (fmt == kFmt75 ? 2 : 1)) : 1;
}

// One launch = one projection for every expert of a group. Each warp owns one m16 tile of stored
// rows and NT*8 tokens of one expert; it walks the whole K range.
// MT m16 tiles per warp share each B fragment (wide tiles only; 75% keeps MT = 1).
// KS > 1 (decode tiles, MT = 1): the CTA's KS warps share one m16 tile instead, each walking 1/KS of
// the K range (whole 128-column chunks, as the 75% select bits are per chunk), and warp 0 adds the
// others' sums in warp order, so every run gives the same bits, then writes the tile.
template <int FMT, int NT, int MODE, int MT = 1, int KS = 1>
static __global__ void __launch_bounds__(ctaWarps(NT, KS) * 32) moeProjKernel(const LayerArgs args) {
  static_assert(FMT != kFmt75 || MT == 1, "75% tiles are one m16 tile per warp");
  static_assert(KS == 1 || (MT == 1 && NT <= 2), "K is split for decode tiles only");
  constexpr int NMAT = MODE == kModeSwiGLU ? 2 : 1;
  constexpr int NQ = NMAT * MT;  // accumulator sets: matrix q, m-tile mi -> q * MT + mi
  constexpr int U = FMT == kFmtDense || NT >= 4 ? 2 : 4;  // k64 steps of A loaded ahead of their math
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const WorkItem item = args.items[blockIdx.x];
  const ExpDesc& ex = args.exps[item.e];
  const int mt = KS > 1 ? item.mBlock : (item.mBlock * warpsFor(NT) + warp) * MT;  // first m16 tile of this warp
  if (mt >= args.mTiles) return;
  const int n = ex.n;
  const int kSteps = args.kSteps;
  // This warp's k64 steps [kBegin, kEnd): slices of whole 2-step chunks.
  const int kChunks = (kSteps + 1) >> 1;
  const int kBegin = KS > 1 ? 2 * (kChunks * warp / KS) : 0;
  const int kEnd = KS > 1 ? min(kSteps, 2 * (kChunks * (warp + 1) / KS)) : kSteps;

  // Token rows this lane reads for B (column g of each n8 tile); tokens past n repeat the last.
  // B rows are stored k-permuted (kPermute): the lane's 8 registers of a k64 step are 32
  // contiguous bytes, two 16-byte loads.
  const uint4* bRow[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    int j = item.nStart + nt * 8 + g;
    if (j >= n) j = n - 1;
    const long long r = args.tokenRows ? args.tokenRows[ex.tokOff + j] : (long long)(ex.tokOff + j);
    bRow[nt] = reinterpret_cast<const uint4*>(args.B + r * args.ldb) + 2 * t;
  }

  float acc[NQ][NT][4];
  float accO[FMT == kFmt75 ? NMAT : 1][FMT == kFmt75 ? NT : 1][4];  // 75%: odd rows of each pair
  float tmp[FMT == kFmt75 ? NMAT : 1][FMT == kFmt75 ? NT : 1][4];   // 75%: current 128-column chunk
#pragma unroll
  for (int q = 0; q < NQ; ++q)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[q][nt][i] = 0.f;
  if constexpr (FMT == kFmt75) {
#pragma unroll
    for (int q = 0; q < NMAT; ++q)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int i = 0; i < 4; ++i) accO[q][nt][i] = tmp[q][nt][i] = 0.f;
  }

  long long tileBase[MT];
#pragma unroll
  for (int mi = 0; mi < MT; ++mi) tileBase[mi] = (long long)min(mt + mi, args.mTiles - 1) * kSteps;
  auto loadAll = [&](int ks, AFrag<FMT> (&aq)[NQ]) {
#pragma unroll
    for (int q = 0; q < NMAT; ++q)
#pragma unroll
      for (int mi = 0; mi < MT; ++mi) loadA<FMT>(aq[q * MT + mi], ex.vals[q], ex.meta[q], tileBase[mi] + ks, lane);
  };
  auto loadB = [&](int ks, uint32_t (&b)[NT][8]) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const uint4 lo = __ldg(bRow[nt] + ks * 8), hi = __ldg(bRow[nt] + ks * 8 + 1);
      b[nt][0] = lo.x, b[nt][1] = lo.y, b[nt][2] = lo.z, b[nt][3] = lo.w;
      b[nt][4] = hi.x, b[nt][5] = hi.y, b[nt][6] = hi.z, b[nt][7] = hi.w;
    }
  };
  auto step = [&](int ks, const AFrag<FMT> (&aq)[NQ], const uint32_t (&b)[NT][8]) {
    if constexpr (FMT == kFmt75) {
#pragma unroll
      for (int q = 0; q < NMAT; ++q) mmaStep<FMT, NT>(tmp[q], aq[q], b);
      // End of a 128-column chunk (or of K): the chunk's sums belong to the even or the odd
      // row of each pair, as the select bits say.
      if ((ks & 1) == 1 || ks + 1 == kSteps) {
#pragma unroll
        for (int q = 0; q < NMAT; ++q) {
          const uint32_t s = __ldg(ex.sel[q] + (long long)mt * args.chunks + (ks >> 1));
          const bool odd0 = (s >> g) & 1u, odd1 = (s >> (g + 8)) & 1u;
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const bool odd = i < 2 ? odd0 : odd1;
              const float v = tmp[q][nt][i];
              acc[q][nt][i] += odd ? 0.f : v;
              accO[q][nt][i] += odd ? v : 0.f;
              tmp[q][nt][i] = 0.f;
            }
          }
        }
      }
    } else {
#pragma unroll
      for (int q = 0; q < NQ; ++q) mmaStep<FMT, NT>(acc[q], aq[q], b);
    }
  };

  if constexpr (NT >= 4) {
    // Wide tiles: B for the next k64 step is in flight while this step's math runs.
    uint32_t bc[NT][8], bn[NT][8];
    loadB(0, bc);
    for (int ks0 = 0; ks0 < kSteps; ks0 += U) {
      AFrag<FMT> a[U][NQ];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (ks0 + u < kSteps) loadAll(ks0 + u, a[u]);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int ks = ks0 + u;
        if (ks < kSteps) {
          if (ks + 1 < kSteps) loadB(ks + 1, bn);
          step(ks, a[u], bc);
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int i = 0; i < 8; ++i) bc[nt][i] = bn[nt][i];
        }
      }
    }
  } else {
    // Decode tiles: A and B of U steps are loaded together, then their math runs.
    for (int ks0 = kBegin; ks0 < kEnd; ks0 += U) {
      AFrag<FMT> a[U][NQ];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (ks0 + u < kEnd) loadAll(ks0 + u, a[u]);
      uint32_t bb[U][NT][8];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (ks0 + u < kEnd) loadB(ks0 + u, bb[u]);
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (ks0 + u < kEnd) step(ks0 + u, a[u], bb[u]);
    }
  }

  if constexpr (KS > 1) {
    // Warps 1..KS-1 leave their sums (and the 75% odd rows') in shared memory; warp 0 adds them in
    // warp order and goes on alone.
    constexpr int V = NQ * NT * 4 * (FMT == kFmt75 ? 2 : 1);
    __shared__ float part[kSplitSmemFloats(FMT, NT, MODE, KS)];
    auto eachSum = [&](auto&& f) {  // f(this lane's v-th sum, v)
      int v = 0;
#pragma unroll
      for (int q = 0; q < NQ; ++q)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
          for (int i = 0; i < 4; ++i) f(acc[q][nt][i], v++);
      if constexpr (FMT == kFmt75) {
#pragma unroll
        for (int q = 0; q < NMAT; ++q)
#pragma unroll
          for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) f(accO[q][nt][i], v++);
      }
    };
    if (warp > 0) {
      float* p = part + (warp - 1) * 32 * V + lane;
      eachSum([&](float& x, int v) { p[32 * v] = x; });
    }
    __syncthreads();
    if (warp > 0) return;
    for (int w = 1; w < KS; ++w) {
      const float* p = part + (w - 1) * 32 * V + lane;
      eachSum([&](float& x, int v) { x += p[32 * v]; });
    }
  }

  // Epilogue. Accumulator i of n8 tile nt: stored row 16*(mt+mi) + g + 8*(i>>1), token 2t + (i&1).
#pragma unroll
  for (int mi = 0; mi < MT; ++mi) {
    if (mt + mi >= args.mTiles) break;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int j = item.nStart + nt * 8 + 2 * t + (i & 1);
        if (j >= n) continue;
        const int srow = 16 * (mt + mi) + g + 8 * (i >> 1);
        const int sel = ex.tokOff + j;
#pragma unroll
        for (int half = 0; half < (FMT == kFmt75 ? 2 : 1); ++half) {
          const int row = FMT == kFmt75 ? 2 * srow + half : srow;
          float x0 = FMT == kFmt75 && half ? accO[0][nt][i] : acc[mi][nt][i];
          if (MODE == kModeDown) {
            const float s = args.scales ? args.scales[sel] : 1.f;
            const long long orow = args.outRows ? args.outRows[sel] : sel;
            args.out[orow * args.ldo + row] = s * x0;
          } else {
            float h;
            if (MODE == kModeSwiGLU) {
              const float x1 = FMT == kFmt75 && half ? accO[NMAT - 1][nt][i] : acc[(NMAT - 1) * MT + mi][nt][i];
              h = siluf(x0) * x1;
            } else {
              h = geluTanh(x0);
            }
            args.H[(long long)sel * args.ldh + kPermute(row)] = __float2bfloat16_rn(h);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Repack: layout.h bytes (already on the device) -> fragment order.

__device__ __forceinline__ float ldValue(const void* p, int dtype, long long i) {
  return dtype == 0 ? __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(p)[i])
                    : reinterpret_cast<const float*>(p)[i];
}
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
__device__ __forceinline__ uint32_t pack2raw(const void* p, int dtype, long long i0, long long i1) {
  if (dtype == 0) {
    const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
    return (uint32_t)h[i0] | ((uint32_t)h[i1] << 16);  // bit exact: no rounding for bf16 input
  }
  return pack2(reinterpret_cast<const float*>(p)[i0], reinterpret_cast<const float*>(p)[i1]);
}

// dense [rows][cols] -> vals; one thread per (mt, ks, j, lane)
static __global__ void repackDenseKernel(const void* src, int dtype, int rows, int cols, uint4* dst) {
  const int kSteps = cols / 64, mTiles = rows / 16;
  const long long total = (long long)mTiles * kSteps * 4 * 32;
  for (long long id = blockIdx.x * (long long)blockDim.x + threadIdx.x; id < total; id += (long long)gridDim.x * blockDim.x) {
    const int lane = id & 31, j = (id >> 5) & 3;
    const long long ts = id >> 7;
    const int ks = ts % kSteps, mt = ts / kSteps;
    const int g = lane >> 2, t = lane & 3;
    const long long r0 = 16LL * mt + g, r1 = r0 + 8;
    const long long k = 64LL * ks + 16 * j + 2 * t;
    uint4 v;
    v.x = pack2raw(src, dtype, r0 * cols + k, r0 * cols + k + 1);
    v.y = pack2raw(src, dtype, r1 * cols + k, r1 * cols + k + 1);
    v.z = pack2raw(src, dtype, r0 * cols + k + 8, r0 * cols + k + 9);
    v.w = pack2raw(src, dtype, r1 * cols + k + 8, r1 * cols + k + 9);
    dst[id] = v;
  }
}

// 2:4 compressed values [srows][cols/2] + meta [srows][cols/16] (layout.h) -> vals + meta.
// metaVariant 0: lane 4g+h holds groups 4h..4h+3 of rows g (bits 0-15) and g+8 (bits 16-31);
// metaVariant 1: lane 4g+0 holds row g, lane 4g+1 row g+8 (all 8 groups). 0 is what the PTX ISA
// documents; 1 exists to test that reading on a new device.
static __global__ void repackSparseKernel(const void* srcVals, int dtype, const uint32_t* srcMeta, int srows, int cols,
                                   uint4* dstVals, uint32_t* dstMeta, int metaVariant) {
  const int kSteps = cols / 64, mTiles = srows / 16;
  const long long half = cols / 2, metaStride = cols / 16;
  const long long total = (long long)mTiles * kSteps * 2 * 32;
  for (long long id = blockIdx.x * (long long)blockDim.x + threadIdx.x; id < total; id += (long long)gridDim.x * blockDim.x) {
    const int lane = id & 31, j = (id >> 5) & 1;
    const long long ts = id >> 6;
    const int ks = ts % kSteps, mt = ts / kSteps;
    const int g = lane >> 2, t = lane & 3;
    const long long r0 = 16LL * mt + g, r1 = r0 + 8;
    const long long c = 32LL * ks + 16 * j + 2 * t;  // compressed column
    uint4 v;
    v.x = pack2raw(srcVals, dtype, r0 * half + c, r0 * half + c + 1);
    v.y = pack2raw(srcVals, dtype, r1 * half + c, r1 * half + c + 1);
    v.z = pack2raw(srcVals, dtype, r0 * half + c + 8, r0 * half + c + 9);
    v.w = pack2raw(srcVals, dtype, r1 * half + c + 8, r1 * half + c + 9);
    dstVals[id] = v;
    if (j == 0) {
      const int jj = t >> 1, h = t & 1;
      const long long w = 2LL * ks + jj;  // layout.h word: groups 8w..8w+7 = columns 32w..32w+31
      const uint32_t m0 = srcMeta[r0 * metaStride + w], m1 = srcMeta[r1 * metaStride + w];
      uint32_t word;
      if (metaVariant == 0) word = ((m0 >> (16 * h)) & 0xffffu) | (((m1 >> (16 * h)) & 0xffffu) << 16);
      else word = h ? m1 : m0;
      dstMeta[ts * 32 + lane] = word;
    }
  }
}

// 75% select bytes [srows][chunks] -> bit masks [mTiles][chunks]
static __global__ void repackSelectKernel(const uint8_t* src, int srows, int chunks, uint32_t* dst) {
  const int mTiles = srows / 16;
  const long long total = (long long)mTiles * chunks;
  for (long long id = blockIdx.x * (long long)blockDim.x + threadIdx.x; id < total; id += (long long)gridDim.x * blockDim.x) {
    const int mt = id / chunks, c = id % chunks;
    uint32_t m = 0;
    for (int i = 0; i < 16; ++i) m |= (uint32_t)(src[(16LL * mt + i) * chunks + c] & 1u) << i;
    dst[id] = m;
  }
}

// fp32 rows -> bf16 rows in the k-permuted layout the mma kernels read (row length D % 64 == 0), and
// optionally also in natural order (what the large-batch wgmma kernel reads).
static __global__ void toBf16Kernel(const float* src, __nv_bfloat16* dst, long long count, int D,
                                    __nv_bfloat16* dstNatural) {
  for (long long i = (blockIdx.x * (long long)blockDim.x + threadIdx.x) * 2; i < count; i += (long long)gridDim.x * blockDim.x * 2) {
    const float2 v = *reinterpret_cast<const float2*>(src + i);
    const long long row = i / D;
    const int k = int(i - row * D);
    const __nv_bfloat162 b = __floats2bfloat162_rn(v.x, v.y);
    *reinterpret_cast<__nv_bfloat162*>(dst + row * D + kPermute(k)) = b;
    if (dstNatural) *reinterpret_cast<__nv_bfloat162*>(dstNatural + i) = b;
  }
}

// bf16 rows (natural order) -> k-permuted rows
static __global__ void permuteBf16Kernel(const __nv_bfloat16* src, __nv_bfloat16* dst, long long count, int D) {
  for (long long i = (blockIdx.x * (long long)blockDim.x + threadIdx.x) * 2; i < count; i += (long long)gridDim.x * blockDim.x * 2) {
    const long long row = i / D;
    const int k = int(i - row * D);
    *reinterpret_cast<__nv_bfloat162*>(dst + row * D + kPermute(k)) = *reinterpret_cast<const __nv_bfloat162*>(src + i);
  }
}

// Copies the listed rows: dst[dstRow(i)] = src[rows[i]], dstRow(i) = rows[i] (same place, e.g. into
// the mapped host arena) or i (compact, for a staging buffer). One block per row.
static __global__ void copyRowsKernel(const float* src, float* dst, const int* rows, int count, int D, int compact) {
  for (int i = blockIdx.x; i < count; i += gridDim.x) {
    const long long r = rows[i];
    const float4* s = reinterpret_cast<const float4*>(src + r * D);
    float4* d = reinterpret_cast<float4*>(dst + (compact ? (long long)i : r) * D);
    for (int c = threadIdx.x; c < D / 4; c += blockDim.x) d[c] = s[c];
  }
}

}  // namespace gpu
}  // namespace hetmoe
