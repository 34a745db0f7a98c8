// GPU backend bindings (native/cuda/gpu_backend.h). The TypeScript view is NativeGpuApi in
// runtime/native.ts, wrapped by runtime/gpu-backend.ts. Without CUDA every function exists and
// throws "built without CUDA" (gpuAvailable() says so without throwing).
#include <optional>
#include <string>
#include <vector>

#include "addon/bindings.h"
#include "addon/napi_util.h"

#ifdef HETMOE_HAVE_CUDA
#include "addon/weights_map.h"
#include "cuda/gpu_backend.h"
#include "cuda/gpu_info.h"
#endif

namespace hetmoe {
namespace {

Napi::Error codedError(Napi::Env env, const std::string& code, const std::string& msg) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

#ifndef HETMOE_HAVE_CUDA

Napi::Value Available(const Napi::CallbackInfo& cb) {
  Napi::Object o = Napi::Object::New(cb.Env());
  o.Set("available", false);
  o.Set("reason", "this addon was built without the CUDA backend");
  return o;
}

Napi::Value NoCuda(const Napi::CallbackInfo& cb) {
  throw codedError(cb.Env(), "GPU_ERROR",
                   "the GPU backend is unavailable: this addon was built without CUDA (rebuild with nvcc on PATH)");
}

#else

template <typename F>
auto guarded(Napi::Env env, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const gpu::GpuError& e) {
    throw codedError(env, e.oom ? "GPU_OOM" : "GPU_ERROR", e.what());
  }
}

int handleArg(const Napi::CallbackInfo& cb) { return static_cast<int>(intArg(cb[0], "handle")); }

std::string strArg(const Napi::Value& v, const char* what) {
  if (!v.IsString()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a string");
  return v.As<Napi::String>().Utf8Value();
}

Napi::Value Available(const Napi::CallbackInfo& cb) {
  Napi::Object o = Napi::Object::New(cb.Env());
  GpuInfo g = queryGpus();
  bool ok = false;
  for (const GpuDevice& d : g.devices) ok = ok || d.sparseTensorCores;
  o.Set("available", ok);
  if (!ok)
    o.Set("reason", !g.error.empty() ? g.error
                    : g.devices.empty() ? std::string("no CUDA device")
                                        : std::string("no device with sparse tensor cores (compute capability 8.0+)"));
  return o;
}

Napi::Value Open(const Napi::CallbackInfo& cb) {
  int dev = cb.Length() > 0 && !cb[0].IsUndefined() ? static_cast<int>(intArg(cb[0], "device")) : 0;
  int64_t budget = cb.Length() > 1 && !cb[1].IsUndefined() ? intArg(cb[1], "budgetBytes") : 0;
  if (budget < 0) throw Napi::RangeError::New(cb.Env(), "budgetBytes must be >= 0");
  return guarded(cb.Env(), [&] { return Napi::Number::New(cb.Env(), gpu::open(dev, static_cast<size_t>(budget))); });
}

Napi::Value Close(const Napi::CallbackInfo& cb) {
  guarded(cb.Env(), [&] {
    gpu::close(handleArg(cb));
    return 0;
  });
  return cb.Env().Undefined();
}

Napi::Value DeviceName(const Napi::CallbackInfo& cb) {
  return guarded(cb.Env(), [&] { return Napi::String::New(cb.Env(), gpu::deviceName(handleArg(cb))); });
}

int formatOf(const Napi::Value& v) {
  std::string s = strArg(v, "matrix.format");
  if (s == "dense") return 0;
  if (s == "2:4") return 1;
  if (s == "75%") return 2;
  throw Napi::TypeError::New(v.Env(), "matrix.format must be 'dense', '2:4' or '75%' (got '" + s + "')");
}

const uint8_t* blobPtr(const Napi::Object& m, const char* field, const MappedWeights& w, size_t* bytes) {
  Napi::Value v = m.Get(field);
  if (v.IsUndefined() || v.IsNull()) {
    *bytes = 0;
    return nullptr;
  }
  if (!v.IsObject()) throw Napi::TypeError::New(m.Env(), std::string("matrix.") + field + " must be {offset, bytes}");
  Napi::Object b = v.As<Napi::Object>();
  int64_t off = intArg(b.Get("offset"), "offset"), len = intArg(b.Get("bytes"), "bytes");
  if (off < 0 || len < 0 || static_cast<size_t>(off + len) > w.bytes)
    throw Napi::RangeError::New(m.Env(), std::string("matrix.") + field + " [" + std::to_string(off) + ", +" +
                                             std::to_string(len) + ") is outside the " + std::to_string(w.bytes) +
                                             "-byte weights file");
  *bytes = static_cast<size_t>(len);
  return w.data + off;
}

gpu::MatrixSrc matrixArg(const Napi::Value& v, const MappedWeights& w, const char* what) {
  if (!v.IsObject()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a MatrixRef object");
  Napi::Object m = v.As<Napi::Object>();
  gpu::MatrixSrc s;
  s.rows = static_cast<int>(intArg(m.Get("rows"), "matrix.rows"));
  s.cols = static_cast<int>(intArg(m.Get("cols"), "matrix.cols"));
  s.format = formatOf(m.Get("format"));
  std::string dt = strArg(m.Get("dtype"), "matrix.dtype");
  if (dt != "bf16" && dt != "fp32") throw Napi::TypeError::New(v.Env(), "matrix.dtype must be 'bf16' or 'fp32'");
  s.dtype = dt == "bf16" ? 0 : 1;
  s.values = blobPtr(m, "values", w, &s.valuesBytes);
  s.meta = blobPtr(m, "meta", w, &s.metaBytes);
  s.select = blobPtr(m, "select", w, &s.selectBytes);
  return s;
}

// The arguments of gpuUpload / gpuUploadAsync, read on the JavaScript thread.
struct UploadArgs {
  int handle = 0, weightsId = -1, ffn = 0;
  std::string key;
  bool hasGate = false;
  gpu::MatrixSrc gate, up, down;
};

UploadArgs uploadArgs(const Napi::CallbackInfo& cb, const char* fn) {
  Napi::Env env = cb.Env();
  UploadArgs a;
  a.handle = handleArg(cb);
  a.key = strArg(cb[1], "key");
  a.weightsId = static_cast<int>(intArg(cb[2], "weightsId"));
  std::string ffnS = strArg(cb[3], "ffn");
  if (ffnS != "swiglu" && ffnS != "gelu") throw Napi::TypeError::New(env, "ffn must be 'swiglu' or 'gelu'");
  if (!cb[4].IsObject()) throw Napi::TypeError::New(env, "expert must be {gate?, up, down}");
  Napi::Object ex = cb[4].As<Napi::Object>();
  MappedWeights w = weightsById(a.weightsId);
  if (!w.data) throw Napi::Error::New(env, std::string(fn) + ": weights id " + std::to_string(a.weightsId) + " is not mapped");
  a.up = matrixArg(ex.Get("up"), w, "expert.up");
  a.down = matrixArg(ex.Get("down"), w, "expert.down");
  a.hasGate = ex.Has("gate") && !ex.Get("gate").IsUndefined() && !ex.Get("gate").IsNull();
  if (a.hasGate) a.gate = matrixArg(ex.Get("gate"), w, "expert.gate");
  a.ffn = ffnS == "swiglu" ? gpu::kSwiGLU : gpu::kGeLU;
  return a;
}

// gpuUpload(handle, key, weightsId, ffn, {gate?, up, down}) -> device bytes
Napi::Value Upload(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  UploadArgs a = uploadArgs(cb, "gpuUpload");
  return guarded(env, [&] {
    return Napi::Number::New(
        env, static_cast<double>(gpu::upload(a.handle, a.key, a.ffn, a.hasGate ? &a.gate : nullptr, a.up, a.down)));
  });
}

// The same upload on a libuv thread. The mapped weights file it reads stays mapped until it is done
// (a reference of its own), and so does the expert object.
// An AsyncWorker's Execute body: runs f and returns what failed, if anything, with `code` set to
// what OnError rejects with (GPU_OOM stays distinct so the runtime can fall back to the CPU).
template <typename F>
std::optional<std::string> coded(std::string& code, F&& f) {
  try {
    f();
    return std::nullopt;
  } catch (const gpu::GpuError& e) {
    code = e.oom ? "GPU_OOM" : "GPU_ERROR";
    return e.what();
  } catch (const std::exception& e) {
    code = "GPU_ERROR";
    return e.what();
  }
}

class UploadWorker : public Napi::AsyncWorker {
 public:
  UploadWorker(Napi::Env env, UploadArgs args)
      : Napi::AsyncWorker(env), a(std::move(args)), deferred(Napi::Promise::Deferred::New(env)) {}
  ~UploadWorker() override {
    if (retained) unmapWeights(a.weightsId);
  }
  void Execute() override {
    if (auto err = coded(code, [&] { bytes = gpu::upload(a.handle, a.key, a.ffn, a.hasGate ? &a.gate : nullptr, a.up, a.down); }))
      SetError(*err);
  }
  void OnOK() override { deferred.Resolve(Napi::Number::New(Env(), static_cast<double>(bytes))); }
  void OnError(const Napi::Error& e) override { deferred.Reject(codedError(Env(), code, e.Message()).Value()); }

  UploadArgs a;
  Napi::Promise::Deferred deferred;
  Napi::ObjectReference expert;
  bool retained = false;
  size_t bytes = 0;
  std::string code = "GPU_ERROR";
};

// gpuUploadAsync(handle, key, weightsId, ffn, {gate?, up, down}) -> Promise<device bytes>
Napi::Value UploadAsync(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  UploadArgs a = uploadArgs(cb, "gpuUploadAsync");
  const int id = a.weightsId;
  if (!retainWeights(id)) throw Napi::Error::New(env, "gpuUploadAsync: weights id " + std::to_string(id) + " is not mapped");
  auto* w = new UploadWorker(env, std::move(a));
  w->retained = true;
  w->expert = Napi::Persistent(cb[4].As<Napi::Object>());
  Napi::Promise p = w->deferred.Promise();
  w->Queue();
  return p;
}

Napi::Value Evict(const Napi::CallbackInfo& cb) {
  return guarded(cb.Env(), [&] { return Napi::Boolean::New(cb.Env(), gpu::evict(handleArg(cb), strArg(cb[1], "key"))); });
}
Napi::Value Resident(const Napi::CallbackInfo& cb) {
  return guarded(cb.Env(), [&] { return Napi::Boolean::New(cb.Env(), gpu::resident(handleArg(cb), strArg(cb[1], "key"))); });
}
Napi::Value BytesUsed(const Napi::CallbackInfo& cb) {
  return guarded(cb.Env(), [&] { return Napi::Number::New(cb.Env(), static_cast<double>(gpu::bytesUsed(handleArg(cb)))); });
}
Napi::Value Budget(const Napi::CallbackInfo& cb) {
  return guarded(cb.Env(), [&] { return Napi::Number::New(cb.Env(), static_cast<double>(gpu::budget(handleArg(cb)))); });
}

// gpuLargeBatchMinTokens(handle) -> tokens of a call's busiest expert from which the large-batch kernel runs; 0: never
Napi::Value LargeBatchMinTokens(const Napi::CallbackInfo& cb) {
  return guarded(cb.Env(), [&] { return Napi::Number::New(cb.Env(), gpu::largeBatchMinTokens(handleArg(cb))); });
}
Napi::Value ResidentExperts(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  return guarded(env, [&] {
    auto v = gpu::residentExperts(handleArg(cb));
    Napi::Array a = Napi::Array::New(env, v.size());
    static const char* fmts[] = {"dense", "2:4", "75%"};
    for (size_t i = 0; i < v.size(); ++i) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("key", v[i].key);
      o.Set("ffn", v[i].ffn == gpu::kSwiGLU ? "swiglu" : "gelu");
      o.Set("format", fmts[v[i].format]);
      o.Set("D", v[i].D);
      o.Set("F", v[i].F);
      o.Set("bytes", static_cast<double>(v[i].bytes));
      a[i] = o;
    }
    return a;
  });
}

Napi::Value RegisterHost(const Napi::CallbackInfo& cb) {
  int h = handleArg(cb);
  Span<uint8_t> s = typedSpan<uint8_t>(cb[1], napi_uint8_array, "view");
  return guarded(cb.Env(), [&] { return Napi::String::New(cb.Env(), gpu::registerHost(h, s.data, s.length)); });
}

Napi::Value UnregisterHost(const Napi::CallbackInfo& cb) {
  int h = handleArg(cb);
  Span<uint8_t> s = typedSpan<uint8_t>(cb[1], napi_uint8_array, "view");
  guarded(cb.Env(), [&] {
    gpu::unregisterHost(h, s.data);
    return 0;
  });
  return cb.Env().Undefined();
}

// A layer call's arguments: experts[{key, tokenRows, outRows, scale?}], hidden, D, out. The pointers
// are into the caller's typed arrays; `keep` is called with each array an asynchronous call must
// keep alive until it is done.
struct LayerArgs {
  std::vector<gpu::LayerExpert> experts;
  const float* hidden = nullptr;
  float* out = nullptr;
  int T = 0, D = 0, outRows = 0;
  bool sleepWait = false;  // gpu::runLayer's
};

template <typename Keep>
LayerArgs layerArgs(const Napi::CallbackInfo& cb, Keep&& keep) {
  Napi::Env env = cb.Env();
  if (!cb[1].IsArray()) throw Napi::TypeError::New(env, "experts must be an array");
  Napi::Array arr = cb[1].As<Napi::Array>();
  int D = static_cast<int>(intArg(cb[3], "D"));
  if (D <= 0) throw Napi::RangeError::New(env, "D must be positive");
  Span<float> hid = typedSpan<float>(cb[2], napi_float32_array, "hidden");
  Span<float> out = typedSpan<float>(cb[4], napi_float32_array, "out");
  if (hid.length % D || out.length % D) throw Napi::RangeError::New(env, "hidden and out lengths must be multiples of D");
  LayerArgs a;
  keep(cb[2]);
  keep(cb[4]);
  for (uint32_t i = 0; i < arr.Length(); ++i) {
    Napi::Value ev = arr.Get(i);
    if (!ev.IsObject()) throw Napi::TypeError::New(env, "experts[i] must be an object");
    Napi::Object e = ev.As<Napi::Object>();
    gpu::LayerExpert le;
    le.key = strArg(e.Get("key"), "experts[i].key");
    Napi::Value trv = e.Get("tokenRows"), orv = e.Get("outRows");
    Span<int32_t> tr = typedSpan<int32_t>(trv, napi_int32_array, "experts[i].tokenRows");
    Span<int32_t> orr = typedSpan<int32_t>(orv, napi_int32_array, "experts[i].outRows");
    if (tr.length != orr.length) throw Napi::RangeError::New(env, "experts[i]: tokenRows and outRows differ in length");
    le.tokenRows = tr.data;
    le.outRows = orr.data;
    le.n = static_cast<int>(tr.length);
    keep(trv);
    keep(orv);
    Napi::Value sv = e.Get("scale");
    if (!sv.IsUndefined() && !sv.IsNull()) {
      Span<float> sc = typedSpan<float>(sv, napi_float32_array, "experts[i].scale");
      if (sc.length != tr.length) throw Napi::RangeError::New(env, "experts[i]: scale and tokenRows differ in length");
      le.scale = sc.data;
      keep(sv);
    }
    a.experts.push_back(le);
  }
  a.hidden = hid.data;
  a.out = out.data;
  a.T = static_cast<int>(hid.length / D);
  a.D = D;
  a.outRows = static_cast<int>(out.length / D);
  return a;
}

Napi::Object timingObject(Napi::Env env, const gpu::LayerTiming& t) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("gpuMs", t.gpuMs);
  o.Set("kernelMs", t.kernelMs);
  o.Set("copyInMs", t.copyInMs);
  o.Set("staged", t.staged);
  o.Set("hostMs", t.hostMs);
  o.Set("prepMs", t.prepMs);
  return o;
}

gpu::LayerTiming runLayerWith(int handle, const LayerArgs& a) {
  return gpu::runLayer(handle, a.experts, a.hidden, a.T, a.D, a.out, a.outRows, a.sleepWait);
}

// The layer call runs on a libuv thread so JavaScript (and the CPU workers) go on meanwhile.
class LayerWorker : public Napi::AsyncWorker {
 public:
  LayerWorker(Napi::Env env, int h) : Napi::AsyncWorker(env), handle(h), deferred(Napi::Promise::Deferred::New(env)) {}
  void Execute() override {
    if (auto err = coded(code, [&] { timing = runLayerWith(handle, args); })) SetError(*err);
  }
  void OnOK() override { deferred.Resolve(timingObject(Env(), timing)); }
  void OnError(const Napi::Error& e) override { deferred.Reject(codedError(Env(), code, e.Message()).Value()); }

  int handle;
  Napi::Promise::Deferred deferred;
  std::vector<Napi::ObjectReference> refs;
  LayerArgs args;
  gpu::LayerTiming timing;
  std::string code = "GPU_ERROR";
};

// gpuRunLayer(handle, experts[{key, tokenRows, outRows, scale?}], hidden, D, out, sleepWait?) -> Promise<timing>
Napi::Value RunLayer(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  auto* w = new LayerWorker(env, handleArg(cb));
  try {
    w->args = layerArgs(cb, [w](const Napi::Value& v) { w->refs.push_back(Napi::Persistent(v.As<Napi::Object>())); });
    w->args.sleepWait = cb.Length() > 5 && cb[5].ToBoolean().Value();
  } catch (...) {
    delete w;
    throw;
  }
  Napi::Promise p = w->deferred.Promise();
  w->Queue();
  return p;
}

// gpuRunLayerSync(same arguments) -> timing: the same call on this thread, which waits for the stream
// (CUDA spins while it waits, with fewer contexts than cores; asleep with sleepWait). For calls with
// nothing else for this thread to do meanwhile: no thread-pool hop and no event-loop wake-up, each of
// which cost a sleeping core of a virtual machine tens of microseconds.
Napi::Value RunLayerSync(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  const int h = handleArg(cb);
  LayerArgs a = layerArgs(cb, [](const Napi::Value&) {});
  a.sleepWait = cb.Length() > 5 && cb[5].ToBoolean().Value();
  return guarded(env, [&] { return timingObject(env, runLayerWith(h, a)); });
}

// gpuBench({preset, E, D, F, topK, tokensPerExpert[], formats[], baselines, minReps, seconds, device}) -> JSON text
Napi::Value Bench(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  gpu::BenchOptions o;
  if (cb.Length() > 0 && cb[0].IsObject()) {
    Napi::Object a = cb[0].As<Napi::Object>();
    if (a.Has("preset")) o.preset = strArg(a.Get("preset"), "preset");
    if (a.Has("E")) o.E = static_cast<int>(intArg(a.Get("E"), "E"));
    if (a.Has("D")) o.D = static_cast<int>(intArg(a.Get("D"), "D"));
    if (a.Has("F")) o.F = static_cast<int>(intArg(a.Get("F"), "F"));
    if (a.Has("topK")) o.topK = static_cast<int>(intArg(a.Get("topK"), "topK"));
    if (a.Has("minReps")) o.minReps = static_cast<int>(intArg(a.Get("minReps"), "minReps"));
    if (a.Has("device")) o.device = static_cast<int>(intArg(a.Get("device"), "device"));
    if (a.Has("baselines")) o.baselines = a.Get("baselines").ToBoolean();
    if (a.Has("seconds")) o.targetSecondsPerPoint = a.Get("seconds").As<Napi::Number>().DoubleValue();
    if (a.Has("tokensPerExpert")) {
      Napi::Array t = a.Get("tokensPerExpert").As<Napi::Array>();
      o.tokensPerExpert.clear();
      for (uint32_t i = 0; i < t.Length(); ++i) o.tokensPerExpert.push_back(static_cast<int>(intArg(t.Get(i), "tokensPerExpert[i]")));
    }
    if (a.Has("formats")) {
      Napi::Array t = a.Get("formats").As<Napi::Array>();
      o.formats.clear();
      for (uint32_t i = 0; i < t.Length(); ++i) o.formats.push_back(strArg(t.Get(i), "formats[i]"));
    }
  }
  return guarded(env, [&] { return Napi::String::New(env, gpu::runBench(o)); });
}

#endif

}  // namespace

void registerGpu(Napi::Env env, Napi::Object exports) {
  exports.Set("gpuAvailable", Napi::Function::New(env, Available, "gpuAvailable"));
#ifndef HETMOE_HAVE_CUDA
  for (const char* name : {"gpuOpen", "gpuClose", "gpuDeviceName", "gpuUpload", "gpuUploadAsync", "gpuEvict", "gpuResident", "gpuBytesUsed",
                           "gpuBudget", "gpuLargeBatchMinTokens", "gpuResidentExperts", "gpuRegisterHost", "gpuUnregisterHost", "gpuRunLayer",
                           "gpuRunLayerSync", "gpuBench"})
    exports.Set(name, Napi::Function::New(env, NoCuda, name));
#else
  exports.Set("gpuOpen", Napi::Function::New(env, Open, "gpuOpen"));
  exports.Set("gpuClose", Napi::Function::New(env, Close, "gpuClose"));
  exports.Set("gpuDeviceName", Napi::Function::New(env, DeviceName, "gpuDeviceName"));
  exports.Set("gpuUpload", Napi::Function::New(env, Upload, "gpuUpload"));
  exports.Set("gpuUploadAsync", Napi::Function::New(env, UploadAsync, "gpuUploadAsync"));
  exports.Set("gpuEvict", Napi::Function::New(env, Evict, "gpuEvict"));
  exports.Set("gpuResident", Napi::Function::New(env, Resident, "gpuResident"));
  exports.Set("gpuBytesUsed", Napi::Function::New(env, BytesUsed, "gpuBytesUsed"));
  exports.Set("gpuBudget", Napi::Function::New(env, Budget, "gpuBudget"));
  exports.Set("gpuLargeBatchMinTokens", Napi::Function::New(env, LargeBatchMinTokens, "gpuLargeBatchMinTokens"));
  exports.Set("gpuResidentExperts", Napi::Function::New(env, ResidentExperts, "gpuResidentExperts"));
  exports.Set("gpuRegisterHost", Napi::Function::New(env, RegisterHost, "gpuRegisterHost"));
  exports.Set("gpuUnregisterHost", Napi::Function::New(env, UnregisterHost, "gpuUnregisterHost"));
  exports.Set("gpuRunLayer", Napi::Function::New(env, RunLayer, "gpuRunLayer"));
  exports.Set("gpuRunLayerSync", Napi::Function::New(env, RunLayerSync, "gpuRunLayerSync"));
  exports.Set("gpuBench", Napi::Function::New(env, Bench, "gpuBench"));
#endif
}

}  // namespace hetmoe
