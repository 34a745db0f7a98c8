// Each binding file adds its functions to the addon's exports. One file per area, so the CPU and GPU
// backends can grow without touching each other. The TypeScript view of all of them is runtime/native.ts.
#pragma once
#include <napi.h>

namespace hetmoe {
void registerInfo(Napi::Env env, Napi::Object exports);     // info_bindings.cc
void registerWeights(Napi::Env env, Napi::Object exports);  // weights_bindings.cc
void registerCpu(Napi::Env env, Napi::Object exports);      // cpu_bindings.cc
void registerGpu(Napi::Env env, Napi::Object exports);      // gpu_bindings.cc
void registerRouter(Napi::Env env, Napi::Object exports);   // router_bindings.cc
}  // namespace hetmoe
