// Router arithmetic (native/cpu/router_math.h) for runtime/route-layer.ts and runtime/combine.ts.
// Typed in runtime/native.ts (NativeRouterApi).
#include <stdexcept>
#include <string>

#include "addon/bindings.h"
#include "addon/napi_util.h"
#include "cpu/gate_job.h"
#include "cpu/gate_select.h"
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

// gateSelect(logits f64 [T×E], T, E, K, normalize, counts i32 [E], offsets i32 [E+1], tokenRows i32 [T·K],
// outRows i32 [T·K], scales f32 [T·K]) → T·K: the top-k selection of finite logits (gate_select.h).
Napi::Value GateSelect(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  const int T = dim(cb[1], "T"), E = dim(cb[2], "E"), K = dim(cb[3], "K");
  if (E < 1 || K < 1 || K > E) throw Napi::RangeError::New(env, "K must be in [1, E]");
  const int64_t rows = int64_t(T) * K;
  auto l = atLeast(typedSpan<double>(cb[0], napi_float64_array, "logits"), int64_t(T) * E, env, "logits");
  auto counts = atLeast(typedSpan<int32_t>(cb[5], napi_int32_array, "counts"), E, env, "counts");
  auto offsets = atLeast(typedSpan<int32_t>(cb[6], napi_int32_array, "offsets"), int64_t(E) + 1, env, "offsets");
  auto tokenRows = atLeast(typedSpan<int32_t>(cb[7], napi_int32_array, "tokenRows"), rows, env, "tokenRows");
  auto outRows = atLeast(typedSpan<int32_t>(cb[8], napi_int32_array, "outRows"), rows, env, "outRows");
  auto scales = atLeast(typedSpan<float>(cb[9], napi_float32_array, "scales"), rows, env, "scales");
  const bool normalize = cb[4].ToBoolean().Value();
  return Napi::Number::New(env, static_cast<double>(cpu::gateSelect(l.data, T, E, K, normalize, counts.data, offsets.data, tokenRows.data, outRows.data, scales.data)));
}

// fdlibmExp(x f64, out f64, isa?): out[i] = exp(x[i]) as gate_select.h computes it, at a kernel level
// (default: HETMOE_ISA or the best); for tests.
Napi::Value FdlibmExp(const Napi::CallbackInfo& cb) {
  auto x = typedSpan<double>(cb[0], napi_float64_array, "x");
  auto out = atLeast(typedSpan<double>(cb[1], napi_float64_array, "out"), int64_t(x.length), cb.Env(), "out");
  const std::string isa = cb.Length() > 2 && cb[2].IsString() ? cb[2].As<Napi::String>().Utf8Value() : "";
  cpu::Isa level;
  try {
    level = cpu::resolveIsa(isa);
  } catch (const std::exception& e) {
    throw Napi::Error::New(cb.Env(), e.what());
  }
  cpu::expShiftedFor(level)(x.data, 0.0, out.data, static_cast<int>(x.length));
  return cb.Env().Undefined();
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

struct CombineArgs {
  const float* rows;
  const float* shared;
  int S;
  float* out;
  int T, K, D;
  const float* g;
};

// (rows f32 [T·K×D], shared f32 [S·T×D] | null, S, out f32 [T×D], T, K, D, g f32 [T] | null) from cb[at..]
CombineArgs combineArgs(const Napi::CallbackInfo& cb, size_t at) {
  Napi::Env env = cb.Env();
  CombineArgs c{};
  c.S = dim(cb[at + 2], "S");
  c.T = dim(cb[at + 4], "T");
  c.K = dim(cb[at + 5], "K");
  c.D = dim(cb[at + 6], "D");
  if (c.K < 1) throw Napi::RangeError::New(env, "K must be >= 1");
  c.rows = atLeast(typedSpan<float>(cb[at], napi_float32_array, "rows"), int64_t(c.T) * c.K * c.D, env, "rows").data;
  if (c.S > 0) c.shared = atLeast(typedSpan<float>(cb[at + 1], napi_float32_array, "shared"), int64_t(c.S) * c.T * c.D, env, "shared").data;
  c.out = atLeast(typedSpan<float>(cb[at + 3], napi_float32_array, "out"), int64_t(c.T) * c.D, env, "out").data;
  if (cb.Length() > at + 7 && cb[at + 7].IsTypedArray())
    c.g = atLeast(typedSpan<float>(cb[at + 7], napi_float32_array, "shared scale"), c.T, env, "shared scale").data;
  return c;
}

// combineRows(rows f32 [T·K×D], shared f32 [S·T×D] | null, S, out f32 [T×D], T, K, D, g f32 [T] | null)
Napi::Value CombineRows(const Napi::CallbackInfo& cb) {
  const CombineArgs c = combineArgs(cb, 0);
  cpu::combineRows(c.rows, c.shared, c.S, c.out, c.T, c.K, c.D, c.g);
  return cb.Env().Undefined();
}

// combineJobRun(arena, board, desc, rows, shared | null, S, out, T, K, D, g | null, tokensPerBlock, dieCount)
// → -1 once `out` holds the sums, computed by this thread and the crew on `board` (native/cpu/gate_job.h);
// -2 when a worker died inside the job (some rows not summed; the board is free).
Napi::Value CombineJobRun(const Napi::CallbackInfo& cb) {
  Span<uint8_t> a = arenaArg(cb[0]);
  const size_t board = offsetArg(cb[1], "board offset"), desc = offsetArg(cb[2], "descriptor offset");
  const CombineArgs c = combineArgs(cb, 3);
  const int tpb = dim(cb[11], "tokens per block");
  const int die = dim(cb[12], "die count");
  const int64_t r = nativeErrors(cb.Env(), [&] {
    return cpu::combineJobRun(a.data, a.length, board, desc, c.rows, c.shared, c.S, c.out, c.T, c.K, c.D, c.g, tpb, die);
  });
  return Napi::Number::New(cb.Env(), static_cast<double>(r));
}

}  // namespace

void registerRouter(Napi::Env env, Napi::Object exports) {
  exports.Set("gateLogits", Napi::Function::New(env, GateLogits, "gateLogits"));
  exports.Set("gateSelect", Napi::Function::New(env, GateSelect, "gateSelect"));
  exports.Set("fdlibmExp", Napi::Function::New(env, FdlibmExp, "fdlibmExp"));
  exports.Set("firstNonFinite", Napi::Function::New(env, FirstNonFinite, "firstNonFinite"));
  exports.Set("scanPoolMinFloats", Napi::Function::New(env, ScanPoolMinFloats, "scanPoolMinFloats"));
  exports.Set("combineRows", Napi::Function::New(env, CombineRows, "combineRows"));
  exports.Set("combineJobRun", Napi::Function::New(env, CombineJobRun, "combineJobRun"));
}

}  // namespace hetmoe
