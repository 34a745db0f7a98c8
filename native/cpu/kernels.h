// CPU expert kernels: the per-ISA function tables and the run-time choice between them.
//
// Every level computes the same thing on the weight layouts of native/formats/layout.h, read in
// place from the mapped weights file (no repacking):
//   matmul:  y[yrow(t)][r] = yscale[t] * sum_k W[r][k] * x[xrow(t)][k]   for r in [r0, r1), t < n
// with x and y fp32 (tokens are rows; `xidx`/`yidx` gather/scatter token rows, nullptr = identity).
// Levels: scalar (portable), avx2 (AVX2+FMA+F16C), avx512 (F/BW/VL/DQ), avx512bf16 (dense bf16
// weights through vdpbf16ps with activations rounded to bf16), amx (AMX-BF16 tiles above a token
// crossover, the avx512bf16 kernels below it). Each level lives in its own kernels_<isa>.cc, built
// with that ISA's flags (CMakeLists.txt); nothing compiled for a level runs unless cpuid has it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "formats/layout.h"

namespace hetmoe {
namespace cpu {

enum class Isa : int32_t { Scalar = 0, Avx2 = 1, Avx512 = 2, Avx512Bf16 = 3, Amx = 4 };
constexpr int kIsaCount = 5;

const char* isaName(Isa isa);
// Parses "scalar|avx2|avx512|avx512bf16|amx"; false for anything else.
bool parseIsa(const std::string& text, Isa& out);
// Whether this CPU (and OS) can run `isa`; `why` names what is missing.
bool isaAvailable(Isa isa, std::string* why = nullptr);
// The best level this CPU runs.
Isa bestIsa();
// The level to use: `requested` ("" = the env HETMOE_ISA, else the best). Throws std::runtime_error
// naming the level and the missing features when the CPU lacks it.
Isa resolveIsa(const std::string& requested);

struct MatArgs {
  const MatrixView* w = nullptr;
  int32_t r0 = 0, r1 = 0;  // output rows (of W) to compute
  int32_t n = 0;           // tokens
  const float* x = nullptr;
  int64_t ldx = 0;                  // floats between consecutive x rows
  const int32_t* xidx = nullptr;    // token t reads x row xidx[t] (nullptr: row t)
  float* y = nullptr;
  int64_t ldy = 0;
  const int32_t* yidx = nullptr;    // token t writes y row yidx[t] (nullptr: row t)
  const float* yscale = nullptr;    // multiplies token t's outputs (nullptr: 1)
};

// AMX operands: activations packed as bf16 "VNNI" B tiles.
//   packed[((T * (K/2)) + i) * 32 + tt * 2 + s] = bf16(x[token 16*T + tt][2*i + s])
// i.e. per 16-token tile T, K/2 rows of 64 bytes (one k pair of 16 tokens each); tokens past n are
// zero. The token count is padded to a multiple of 32 (two B tiles per step).
inline int64_t amxPaddedTokens(int64_t n) { return (n + 31) / 32 * 32; }
inline int64_t amxPackedElems(int64_t n, int64_t k) { return amxPaddedTokens(n) * k; }

struct AmxGateUpArgs {
  const MatrixView* gate = nullptr;  // nullptr for GeLU
  const MatrixView* up = nullptr;
  int32_t r0 = 0, r1 = 0;            // rows of F, multiples of 32 (r1 may be F)
  int32_t n = 0;
  const uint16_t* xPacked = nullptr; // [amxPackedElems(n, D)] as above, K = D
  uint16_t* hPacked = nullptr;       // [amxPackedElems(n, F)] written for rows [r0, r1), K = F
};
struct AmxDownArgs {
  const MatrixView* down = nullptr;
  int32_t r0 = 0, r1 = 0;  // rows of D, multiples of 32 (r1 may be D)
  int32_t n = 0;
  const uint16_t* hPacked = nullptr;
  float* out = nullptr;
  int64_t ldo = 0;
  const int32_t* outRows = nullptr;
  const float* scales = nullptr;
};

struct KernelTable {
  Isa isa;
  void (*matmul)(const MatArgs& a);
  // In place over n floats: g = silu(g) * u;  x = gelu_tanh(x).
  void (*swiglu)(float* g, const float* u, size_t n);
  void (*gelu)(float* x, size_t n);
  // AMX only (nullptr elsewhere).
  void (*amxPack)(const float* x, int64_t ldx, const int32_t* xidx, int32_t n, int32_t k, uint16_t* packed);
  void (*amxGateUp)(const AmxGateUpArgs& a, bool swiglu);
  void (*amxDown)(const AmxDownArgs& a);
};

const KernelTable& kernels(Isa isa);

// Tokens per expert from which the amx level runs an expert through tiles rather than through the
// avx512bf16 kernels (measured with bench cpu on the 16-core Xeon: dense is faster on tiles from 8
// tokens; sparse weights, which the tile path decodes to a dense panel first, from 16).
constexpr int32_t kAmxMinTokens = 8;
constexpr int32_t kAmxMinTokensSparse = 16;
// Whether an expert of n tokens with these matrices goes through AMX tiles at level `isa`.
bool useAmx(Isa isa, int32_t n, const MatrixView& up, const MatrixView& down);

// Per-level tables, defined in kernels_<isa>.cc (an unavailable level is never called).
const KernelTable& scalarKernels();
const KernelTable& avx2Kernels();
const KernelTable& avx512Kernels();
const KernelTable& avx512bf16Kernels();
const KernelTable& amxKernels();

}  // namespace cpu
}  // namespace hetmoe
