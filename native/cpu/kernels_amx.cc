// The AMX-BF16 level. Experts with at least kAmxMinTokens tokens (and bf16 weights, D and F
// multiples of 32) run through tiles; everything else through the avx512bf16 kernels.
//
// Tile roles (one configuration: 8 tiles of 16 rows x 64 bytes):
//   A (tmm4, tmm5): 16 weight rows x 32 k, bf16, read in place from the row-major weights (dense
//                   bf16) or from a 16-row panel decoded to dense bf16 (2:4, 75%), row stride K*2;
//   B (tmm6, tmm7): 32 k x 16 tokens of activations in VNNI pairs (kernels.h: amx packed layout),
//                   packed once per expert and read by every row block;
//   C (tmm0..3):    16 rows x 16 tokens fp32, i.e. the output transposed; 2 A x 2 B per k step,
//                   K in chunks of kKc so the A chunk stays in L1 (see tilesRowPair).
// Gate/up writes its activation straight into the packed (B) layout of the down projection's input,
// so the hidden [n x F] never exists in fp32 on this path. Bounded by tdpbf16ps throughput (16 rows
// x 16 tokens x 32 k per instruction) and, at few tokens, by reading A.
#include "cpu/simd_avx512bf16.h"

namespace hetmoe {
namespace cpu {
namespace {

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t startRow = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

void configureTiles() {
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) {
    cfg.colsb[i] = 64;
    cfg.rows[i] = 16;
  }
  _tile_loadconfig(&cfg);
}

void amxPack(const float* x, int64_t ldx, const int32_t* xidx, int32_t n, int32_t K, uint16_t* packed) {
  const int64_t np = amxPaddedTokens(n), half = K / 2;
  uint16_t* row = static_cast<uint16_t*>(threadScratch(4, sizeof(uint16_t) * K + 64));
  const uint32_t* rw = reinterpret_cast<const uint32_t*>(row);
  uint32_t* P = reinterpret_cast<uint32_t*>(packed);
  for (int64_t t = 0; t < np; ++t) {
    if (t < n) toBf16Row(x + (xidx ? xidx[t] : t) * ldx, K, row);
    else std::memset(row, 0, sizeof(uint16_t) * K);
    uint32_t* dst = P + (t / 16) * half * 16 + (t % 16);
    for (int64_t i = 0; i < half; ++i) dst[i * 16] = rw[i];
  }
}

// Dense bf16 row r of a bf16 matrix of any format.
void decodeRowBf16(const MatrixView& m, int32_t r, uint16_t* out) {
  const int64_t K = m.cols;
  const uint16_t* v = static_cast<const uint16_t*>(m.values);
  std::memset(out, 0, sizeof(uint16_t) * K);
  int64_t s = r;
  const uint8_t* sel = nullptr;
  if (m.format == WeightFormat::Sparse75) {
    s = r / 2;
    sel = m.select + s * nChunks75(K);
  }
  const uint32_t* meta = m.meta + s * (K / 16);
  v += s * (K / 2);
  for (int64_t g = 0; g < K / 4; ++g) {
    if (sel && sel[(4 * g) / kChunk75] != static_cast<uint8_t>(r & 1)) continue;
    const uint32_t nib = (meta[g >> 3] >> (4 * (g & 7))) & 0xfu;
    out[4 * g + (nib & 3u)] = v[2 * g];
    out[4 * g + (nib >> 2)] = v[2 * g + 1];
  }
}

// 16 rows of W as dense bf16 with row stride K: the weights themselves, or a decoded panel.
const uint16_t* rowsBf16(const MatrixView& m, int32_t r, int slot) {
  const int64_t K = m.cols;
  if (m.format == WeightFormat::Dense) return static_cast<const uint16_t*>(m.values) + r * K;
  uint16_t* buf = static_cast<uint16_t*>(threadScratch(slot, sizeof(uint16_t) * 16 * K));
  for (int i = 0; i < 16; ++i) decodeRowBf16(m, r + i, buf + i * K);
  return buf;
}

// Two fp32 rows (16 tokens each) as 16 bf16 pairs: dword t = bf16(e[t]) | bf16(o[t]) << 16.
inline __m512i pairBf16(__m512 e, __m512 o) {
  const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(e));
  const __m512i hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(o));
  return _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
}

// K is walked in chunks of kKc: a chunk of the two A tiles (2 x 16 rows x kKc bf16 = 16 KB) stays in
// L1 while every token-tile pair uses it, so only B streams from L2 (without chunking both A and B
// came from L2 at every step: 4 KB per 4 tdpbf16ps, about what L2 delivers, which halved the rate).
// The C tiles of each token-tile pair are kept in `cbuf` between chunks.
constexpr int64_t kKc = 256;

// cbuf[P][q] (16 x 16 fp32 each) = A(q / 2) x B(2P + q % 2) over all K, for every token-tile pair P.
// A0, A1: 16 weight rows each, row stride K. packed: the B operand (kernels.h layout).
void tilesRowPair(const uint16_t* A0, const uint16_t* A1, const uint16_t* packed, int64_t K, int64_t np, float* cbuf) {
  const int64_t half = K / 2, pairs = np / 32, lda = K * 2;
  for (int64_t k0 = 0; k0 < K; k0 += kKc) {
    const int64_t k1 = k0 + kKc < K ? k0 + kKc : K;
    for (int64_t P = 0; P < pairs; ++P) {
      float* c = cbuf + P * 1024;
      if (k0 == 0) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      } else {
        _tile_loadd(0, c, 64);
        _tile_loadd(1, c + 256, 64);
        _tile_loadd(2, c + 512, 64);
        _tile_loadd(3, c + 768, 64);
      }
      const uint16_t* B0 = packed + (2 * P) * half * 32;
      const uint16_t* B1 = packed + (2 * P + 1) * half * 32;
      for (int64_t kb = k0 / 32; kb < k1 / 32; ++kb) {
        _tile_loadd(4, A0 + kb * 32, lda);
        _tile_loadd(5, A1 + kb * 32, lda);
        _tile_loadd(6, B0 + kb * 16 * 32, 64);
        _tile_loadd(7, B1 + kb * 16 * 32, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, c, 64);
      _tile_stored(1, c + 256, 64);
      _tile_stored(2, c + 512, 64);
      _tile_stored(3, c + 768, 64);
    }
  }
}

using Tiles = float (*)[16][16];  // 4 C tiles of one token-tile pair

void amxGateUp(const AmxGateUpArgs& a, bool swiglu) {
  configureTiles();
  const int64_t K = a.up->cols, F = a.up->rows, np = amxPaddedTokens(a.n);
  float* cbuf = static_cast<float*>(threadScratch(8, sizeof(float) * 32 * np));
  auto packRows = [&](int64_t T, int32_t row, const float (*h)[16]) {  // 16 rows `row..` of token tile T
    for (int r = 0; r < 16; r += 2)
      _mm512_storeu_si512(a.hPacked + ((T * (F / 2)) + (row + r) / 2) * 32,
                          pairBf16(_mm512_load_ps(h[r]), _mm512_load_ps(h[r + 1])));
  };
  if (swiglu) {
    for (int32_t rb = a.r0; rb < a.r1; rb += 16) {
      tilesRowPair(rowsBf16(*a.gate, rb, 5), rowsBf16(*a.up, rb, 6), a.xPacked, K, np, cbuf);
      for (int64_t P = 0; P < np / 32; ++P) {
        Tiles c = reinterpret_cast<Tiles>(cbuf + P * 1024);
        for (int h = 0; h < 2; ++h) {  // c[h]: gate x tile 2P+h, c[2+h]: up x tile 2P+h
          for (int r = 0; r < 16; ++r)
            _mm512_store_ps(c[h][r], vswiglu<VAvx512>(_mm512_load_ps(c[h][r]), _mm512_load_ps(c[2 + h][r])));
          packRows(2 * P + h, rb, c[h]);
        }
      }
    }
  } else {
    for (int32_t rb = a.r0; rb < a.r1; rb += 32) {
      tilesRowPair(rowsBf16(*a.up, rb, 5), rowsBf16(*a.up, rb + 16, 6), a.xPacked, K, np, cbuf);
      for (int64_t P = 0; P < np / 32; ++P) {
        Tiles c = reinterpret_cast<Tiles>(cbuf + P * 1024);
        for (int q = 0; q < 4; ++q) {
          for (int r = 0; r < 16; ++r) _mm512_store_ps(c[q][r], vgelu<VAvx512>(_mm512_load_ps(c[q][r])));
          packRows(2 * P + (q & 1), rb + 16 * (q >> 1), c[q]);
        }
      }
    }
  }
  _tile_release();
}

void amxDown(const AmxDownArgs& a) {
  configureTiles();
  const int64_t K = a.down->cols, np = amxPaddedTokens(a.n);
  float* cbuf = static_cast<float*>(threadScratch(8, sizeof(float) * 32 * np));
  for (int32_t rb = a.r0; rb < a.r1; rb += 32) {
    tilesRowPair(rowsBf16(*a.down, rb, 5), rowsBf16(*a.down, rb + 16, 6), a.hPacked, K, np, cbuf);
    for (int64_t P = 0; P < np / 32; ++P) {
      Tiles c = reinterpret_cast<Tiles>(cbuf + P * 1024);
      for (int q = 0; q < 4; ++q) {
        const int64_t t0 = (2 * P + (q & 1)) * 16;
        const int32_t row = rb + 16 * (q >> 1);
        for (int tt = 0; tt < 16 && t0 + tt < a.n; ++tt) {
          const int64_t t = t0 + tt;
          float* o = a.out + a.outRows[t] * a.ldo + row;
          const float s = a.scales ? a.scales[t] : 1.f;
          for (int r = 0; r < 16; ++r) o[r] = s * c[q][r][tt];
        }
      }
    }
  }
  _tile_release();
}

}  // namespace

const KernelTable& amxKernels() {
  static const KernelTable t{Isa::Amx, matmul<VAvx512Bf16>, swigluInPlace<VAvx512>, geluInPlace<VAvx512>,
                             amxPack, amxGateUp, amxDown};
  return t;
}

}  // namespace cpu
}  // namespace hetmoe
