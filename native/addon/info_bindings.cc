// info(): what this process can use: the CPU's ISA levels and the CUDA devices.
#include <unistd.h>

#include "addon/bindings.h"
#include "cpu/cpu_features.h"
#include "cuda/gpu_info.h"

namespace hetmoe {

#ifndef HETMOE_HAVE_CUDA
GpuInfo queryGpus() {
  GpuInfo info;
  info.error = "this addon was built without the CUDA backend";
  return info;
}
#endif

namespace {

Napi::Value Info(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  const CpuFeatures& f = cpuFeatures();
  Napi::Object cpu = Napi::Object::New(env);
  cpu.Set("vendor", f.vendor);
  cpu.Set("model", f.model);
  cpu.Set("logicalCores", Napi::Number::New(env, static_cast<double>(sysconf(_SC_NPROCESSORS_ONLN))));
  Napi::Object isa = Napi::Object::New(env);
  isa.Set("avx2", f.avx2);
  isa.Set("fma", f.fma);
  isa.Set("f16c", f.f16c);
  isa.Set("avx512f", f.avx512f);
  isa.Set("avx512bw", f.avx512bw);
  isa.Set("avx512vl", f.avx512vl);
  isa.Set("avx512dq", f.avx512dq);
  isa.Set("avx512bf16", f.avx512bf16);
  isa.Set("amxTile", f.amxTile);
  isa.Set("amxBf16", f.amxBf16);
  isa.Set("amxGranted", f.amxGranted);
  cpu.Set("isa", isa);
  if (!f.amxNote.empty()) cpu.Set("amxNote", f.amxNote);

  const GpuInfo g = queryGpus();
  Napi::Object gpu = Napi::Object::New(env);
  gpu.Set("compiled", g.compiled);
  gpu.Set("runtimeVersion", g.runtimeVersion);
  gpu.Set("driverVersion", g.driverVersion);
  if (!g.error.empty()) gpu.Set("error", g.error);
  Napi::Array devices = Napi::Array::New(env, g.devices.size());
  for (size_t i = 0; i < g.devices.size(); ++i) {
    const GpuDevice& d = g.devices[i];
    Napi::Object o = Napi::Object::New(env);
    o.Set("index", d.index);
    o.Set("name", d.name);
    o.Set("computeCapability", std::to_string(d.major) + "." + std::to_string(d.minor));
    o.Set("totalBytes", static_cast<double>(d.totalBytes));
    o.Set("freeBytes", static_cast<double>(d.freeBytes));
    o.Set("multiprocessors", d.multiprocessors);
    o.Set("l2Bytes", static_cast<double>(d.l2Bytes));
    o.Set("sharedPerBlockOptinBytes", static_cast<double>(d.sharedPerBlockOptin));
    o.Set("sparseTensorCores", d.sparseTensorCores);
    o.Set("wgmmaSparse", d.wgmmaSparse);
    devices[i] = o;
  }
  gpu.Set("devices", devices);

  Napi::Object out = Napi::Object::New(env);
  out.Set("cpu", cpu);
  out.Set("gpu", gpu);
  return out;
}

// The address of a typed array's memory modulo 4096: tells whether the arena is page-aligned.
Napi::Value AddressMod(const Napi::CallbackInfo& cb) {
  void* data = nullptr;
  napi_get_typedarray_info(cb.Env(), cb[0], nullptr, nullptr, &data, nullptr, nullptr);
  const int64_t mod = cb.Length() > 1 ? cb[1].As<Napi::Number>().Int64Value() : 4096;
  return Napi::Number::New(cb.Env(), static_cast<double>(reinterpret_cast<uintptr_t>(data) % mod));
}

}  // namespace

void registerInfo(Napi::Env env, Napi::Object exports) {
  exports.Set("info", Napi::Function::New(env, Info, "info"));
  exports.Set("addressMod", Napi::Function::New(env, AddressMod, "addressMod"));
}

}  // namespace hetmoe
