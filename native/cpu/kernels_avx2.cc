// The AVX2+FMA level: kernels_impl.h over 8-lane vectors.
#include "cpu/simd_avx2.h"
#include "cpu/kernels_impl.h"

namespace hetmoe {
namespace cpu {

const KernelTable& avx2Kernels() {
  static const KernelTable t{Isa::Avx2, matmul<VAvx2>, swigluInPlace<VAvx2>, geluInPlace<VAvx2>, nullptr, nullptr, nullptr};
  return t;
}

}  // namespace cpu
}  // namespace hetmoe
