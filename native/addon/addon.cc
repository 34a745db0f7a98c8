// The addon's entry point. It is context-aware: every Node environment (the main thread and each
// worker thread) runs Init and gets its own exports; nothing here keeps JS handles in statics.
#include <dlfcn.h>

#include <mutex>

#include "addon/bindings.h"

namespace hetmoe {
namespace {

// Node dlclose()s an addon when the last environment that loaded it exits. Worker threads come and
// go, and unloading the CUDA runtime and our thread-local state under a live process is a known
// source of crashes, so the first load takes one extra reference that is never dropped.
void pinLibrary() {
  static std::once_flag once;
  std::call_once(once, [] {
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&pinLibrary), &info) && info.dli_fname)
      dlopen(info.dli_fname, RTLD_NOW | RTLD_NODELETE);
  });
}

}  // namespace
}  // namespace hetmoe

static Napi::Object InitHetmoe(Napi::Env env, Napi::Object exports) {
  hetmoe::pinLibrary();
  hetmoe::registerInfo(env, exports);
  hetmoe::registerWeights(env, exports);
  hetmoe::registerCpu(env, exports);
  hetmoe::registerGpu(env, exports);
  hetmoe::registerRouter(env, exports);
  return exports;
}

NODE_API_MODULE(hetmoe, InitHetmoe)
