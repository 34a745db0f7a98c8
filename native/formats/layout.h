// Weight layouts as stored in a hetmoe model (experts/ writes them; native/cpu and native/cuda read
// them). This header is the contract: the reference decoders below define what every byte means,
// and every kernel is verified against them. Little-endian throughout.
//
// A matrix W has `rows` (outputs) x `cols` (inputs); y = W x. cols % 16 == 0 for the sparse formats.
//
// dense   values[rows][cols], row-major, dtype bf16 (uint16 bit pattern, round-to-nearest-even from
//         fp32) or fp32.
//
// 2:4     In every group of 4 consecutive columns (g = c / 4) of every row, at most 2 weights are
//         nonzero. Stored as
//           values [rows][cols/2]   the two kept weights of group g at [2g] and [2g+1], in column order
//           meta   [rows][cols/16]  uint32; word w of a row describes groups 8w..8w+7, group g in the
//                                   nibble at bit 4*(g % 8): bits 0-1 = column-in-group of the first
//                                   kept weight, bits 2-3 = of the second; first < second.
//         (The nibble per group is the order NVIDIA's mma.sp metadata uses for 16-bit operands; the GPU
//         only permutes which thread holds which word.) A group with fewer than 2 nonzeros keeps zeros
//         at unused positions, still with first < second.
//
// 75%     Samoyeds dual-side: rows are paired (2p, 2p+1); the input columns are cut into chunks of
//         128 (the last chunk may be shorter, a multiple of 16). In each chunk one row of each pair is
//         kept and the other is all zero there; the kept row is 2:4 within the chunk. Stored as
//           select [rows/2][nChunks]  uint8; 0 = row 2p kept in chunk k, 1 = row 2p+1
//           values [rows/2][cols/2]   the kept row's 2:4 values, chunk after chunk (as in 2:4)
//           meta   [rows/2][cols/16]  the kept row's 2:4 metadata (as in 2:4)
//         rows % 2 == 0. Density 25%; bytes about 5/16 of dense bf16.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace hetmoe {

constexpr int kChunk75 = 128;  // input columns per row-selection chunk of the 75% format

enum class WeightFormat : int32_t { Dense = 0, Sparse24 = 1, Sparse75 = 2 };
enum class WeightDtype : int32_t { BF16 = 0, FP32 = 1 };

inline float bf16ToFloat(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t floatToBf16(float f) {  // round to nearest even; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline size_t chunks75(size_t cols) { return (cols + kChunk75 - 1) / kChunk75; }

// Pointers to one stored matrix. `values` is bf16 or fp32 per dtype; meta/select as above.
struct MatrixView {
  WeightFormat format = WeightFormat::Dense;
  WeightDtype dtype = WeightDtype::BF16;
  int32_t rows = 0, cols = 0;
  const void* values = nullptr;
  const uint32_t* meta = nullptr;   // 2:4 and 75%
  const uint8_t* select = nullptr;  // 75%
};

inline float loadValue(const MatrixView& m, size_t i) {
  return m.dtype == WeightDtype::BF16 ? bf16ToFloat(static_cast<const uint16_t*>(m.values)[i])
                                      : static_cast<const float*>(m.values)[i];
}

// Reference decoder: writes the dense row `r` (cols floats). Slow and obvious on purpose.
inline void decodeRow(const MatrixView& m, int32_t r, float* out) {
  const size_t cols = static_cast<size_t>(m.cols);
  if (m.format == WeightFormat::Dense) {
    for (size_t c = 0; c < cols; ++c) out[c] = loadValue(m, static_cast<size_t>(r) * cols + c);
    return;
  }
  for (size_t c = 0; c < cols; ++c) out[c] = 0.f;
  size_t srow = static_cast<size_t>(r);  // row of the stored (compressed) arrays
  if (m.format == WeightFormat::Sparse75) srow = static_cast<size_t>(r / 2);
  for (size_t g = 0; g < cols / 4; ++g) {
    if (m.format == WeightFormat::Sparse75) {
      const uint8_t sel = m.select[srow * chunks75(cols) + (4 * g) / kChunk75];
      if (sel != static_cast<uint8_t>(r & 1)) continue;
    }
    const uint32_t word = m.meta[srow * (cols / 16) + g / 8];
    const uint32_t nib = (word >> (4 * (g % 8))) & 0xfu;
    out[4 * g + (nib & 3u)] += loadValue(m, srow * (cols / 2) + 2 * g);
    out[4 * g + (nib >> 2)] += loadValue(m, srow * (cols / 2) + 2 * g + 1);
  }
}

}  // namespace hetmoe
