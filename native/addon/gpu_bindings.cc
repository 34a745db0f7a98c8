// GPU backend bindings (native/cuda/). Filled in by the GPU kernel work.
#include "addon/bindings.h"

namespace hetmoe {
void registerGpu(Napi::Env env, Napi::Object exports) {}
}  // namespace hetmoe
