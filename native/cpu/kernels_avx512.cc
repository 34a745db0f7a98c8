// The AVX-512 (F/BW/VL/DQ) level: kernels_impl.h over 16-lane vectors, weights converted to fp32.
#include "cpu/simd_avx512.h"
#include "cpu/kernels_impl.h"

namespace hetmoe {
namespace cpu {

const KernelTable& avx512Kernels() {
  static const KernelTable t{Isa::Avx512, matmul<VAvx512>, swigluInPlace<VAvx512>, geluInPlace<VAvx512>, nullptr, nullptr, nullptr};
  return t;
}

}  // namespace cpu
}  // namespace hetmoe
