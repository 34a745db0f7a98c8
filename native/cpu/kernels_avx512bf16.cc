// The AVX512_BF16 level (simd_avx512bf16.h).
#include "cpu/simd_avx512bf16.h"

namespace hetmoe {
namespace cpu {

const KernelTable& avx512bf16Kernels() {
  static const KernelTable t{Isa::Avx512Bf16, matmul<VAvx512Bf16>, swigluInPlace<VAvx512>, geluInPlace<VAvx512>,
                             nullptr, nullptr, nullptr};
  return t;
}

}  // namespace cpu
}  // namespace hetmoe
