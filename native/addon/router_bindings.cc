// Router arithmetic (native/cpu/router_math.h) for runtime/route-layer.ts and runtime/combine.ts.
// Typed in runtime/native.ts (NativeRouterApi).
#include <stdexcept>

#include "addon/bindings.h"
#include "addon/napi_util.h"
#include "cpu/parallel_scan.h"
#include "cpu/router_math.h"

namespace hetmoe {
namespace {

int dim(const Napi::Value& v, const char* what) {
  const int64_t n = intArg(v, what);
  if (n < 0 || n > (int64_t(1) << 30)) throw Napi::RangeError::New(v.Env(), std::string(what) + " is out of range");
  return static_cast<int>(n);
}

template <class T>
Span<T> atLeast(Span<T> s, int64_t n, const Napi::Env& env, const char* what) {
  if (int64_t(s.length) < n) throw Napi::RangeError::New(env, std::string(what) + " holds " + std::to_string(s.length) + " values; " + std::to_string(n) + " needed");
  return s;
}

// gateLogits(hidden f32 [T×D], weight f32 [E×D], T, D, E, logits f64 [T×E]) → -1, or the index of
// the first non-finite hidden value, or -3: the hidden states are finite, the gate weights are not.
Napi::Value GateLogits(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  const int T = dim(cb[2], "T"), D = dim(cb[3], "D"), E = dim(cb[4], "E");
  auto x = atLeast(typedSpan<float>(cb[0], napi_float32_array, "hidden"), int64_t(T) * D, env, "hidden");
  auto w = atLeast(typedSpan<float>(cb[1], napi_float32_array, "gate weight"), int64_t(E) * D, env, "gate weight");
  auto out = atLeast(typedSpan<double>(cb[5], napi_float64_array, "logits"), int64_t(T) * E, env, "logits");
  return Napi::Number::New(env, static_cast<double>(cpu::gateLogits(x.data, w.data, T, D, E, out.data)));
}

// firstNonFinite(x f32, n) → index of the first NaN/±Inf among x[0..n), else -1.
Napi::Value FirstNonFinite(const Napi::CallbackInfo& cb) {
  const int64_t n = intArg(cb[1], "n");
  auto x = atLeast(typedSpan<float>(cb[0], napi_float32_array, "values"), n, cb.Env(), "values");
  return Napi::Number::New(cb.Env(), static_cast<double>(cpu::firstNonFiniteParallel(x.data, n)));
}

// scanPoolMinFloats() → the fewest values firstNonFinite shares with its thread pool (0: never).
Napi::Value ScanPoolMinFloats(const Napi::CallbackInfo& cb) {
  return Napi::Number::New(cb.Env(), static_cast<double>(cpu::scanPoolMinFloats()));
}

// combineRows(rows f32 [T·K×D], shared f32 [S·T×D] | null, S, out f32 [T×D], T, K, D, g f32 [T] | null)
Napi::Value CombineRows(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  const int S = dim(cb[2], "S"), T = dim(cb[4], "T"), K = dim(cb[5], "K"), D = dim(cb[6], "D");
  if (K < 1) throw Napi::RangeError::New(env, "K must be >= 1");
  auto rows = atLeast(typedSpan<float>(cb[0], napi_float32_array, "rows"), int64_t(T) * K * D, env, "rows");
  const float* shared = nullptr;
  if (S > 0) shared = atLeast(typedSpan<float>(cb[1], napi_float32_array, "shared"), int64_t(S) * T * D, env, "shared").data;
  auto out = atLeast(typedSpan<float>(cb[3], napi_float32_array, "out"), int64_t(T) * D, env, "out");
  const float* g = nullptr;
  if (cb.Length() > 7 && cb[7].IsTypedArray()) g = atLeast(typedSpan<float>(cb[7], napi_float32_array, "shared scale"), T, env, "shared scale").data;
  cpu::combineRows(rows.data, shared, S, out.data, T, K, D, g);
  return env.Undefined();
}

}  // namespace

void registerRouter(Napi::Env env, Napi::Object exports) {
  exports.Set("gateLogits", Napi::Function::New(env, GateLogits, "gateLogits"));
  exports.Set("firstNonFinite", Napi::Function::New(env, FirstNonFinite, "firstNonFinite"));
  exports.Set("scanPoolMinFloats", Napi::Function::New(env, ScanPoolMinFloats, "scanPoolMinFloats"));
  exports.Set("combineRows", Napi::Function::New(env, CombineRows, "combineRows"));
}

}  // namespace hetmoe
