// CPU expert kernels and the per-layer CPU job (native/cpu/). Filled in by the CPU kernels work.
#include "addon/bindings.h"

namespace hetmoe {
void registerCpu(Napi::Env env, Napi::Object exports) {}
}  // namespace hetmoe
