// CPU expert kernels and the per-layer CPU job (native/cpu/): the JS side of kernels.h and
// layer_job.h. Typed in runtime/native.ts (NativeCpuApi).
#include <algorithm>
#include <climits>
#include <cstring>
#include <random>
#include <stdexcept>

#include "addon/bindings.h"
#include "addon/napi_util.h"
#include "cpu/crew.h"
#include "cpu/gate_job.h"
#include "cpu/kernels.h"
#include "cpu/layer_job.h"

namespace hetmoe {
namespace {

// cpuIsa(): { best, levels: [{ name, available, missing? }] }
Napi::Value CpuIsa(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("best", cpu::isaName(cpu::bestIsa()));
  Napi::Array levels = Napi::Array::New(env);
  for (int i = 0; i < cpu::kIsaCount; ++i) {
    std::string why;
    const bool ok = cpu::isaAvailable(static_cast<cpu::Isa>(i), &why);
    Napi::Object l = Napi::Object::New(env);
    l.Set("name", cpu::isaName(static_cast<cpu::Isa>(i)));
    l.Set("available", ok);
    if (!ok) l.Set("missing", why);
    levels.Set(i, l);
  }
  o.Set("levels", levels);
  return o;
}

// cpuResolveIsa(name?): the level a job would use ("" / undefined: HETMOE_ISA, else the best); throws
// naming what the CPU lacks.
Napi::Value CpuResolveIsa(const Napi::CallbackInfo& cb) {
  std::string want = cb.Length() > 0 && cb[0].IsString() ? cb[0].As<Napi::String>().Utf8Value() : "";
  try {
    const cpu::Isa isa = cpu::resolveIsa(want);
    Napi::Object o = Napi::Object::New(cb.Env());
    o.Set("name", cpu::isaName(isa));
    o.Set("index", static_cast<int>(isa));
    return o;
  } catch (const std::runtime_error& e) {
    throw Napi::Error::New(cb.Env(), e.what());
  }
}

Napi::Value CpuLayerRun(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  Span<uint8_t> arena = arenaArg(cb[0]);
  const size_t off = offsetArg(cb[1], "descriptor offset");
  const bool hooks = cb.Length() > 2 && cb[2].ToBoolean();
  try {
    const cpu::JobRunResult r = cpu::runLayerJob(arena.data, arena.length, off, hooks);
    Napi::Object o = Napi::Object::New(env);
    o.Set("status", r.status == cpu::JobStatus::Done ? "done" : r.status == cpu::JobStatus::Aborted ? "aborted" : "die");
    o.Set("blocks", r.blocks);
    return o;
  } catch (const std::runtime_error& e) {
    throw Napi::Error::New(env, e.what());
  }
}

Napi::Value CpuLayerReset(const Napi::CallbackInfo& cb) {
  Span<uint8_t> arena = arenaArg(cb[0]);
  try {
    cpu::resetLayerJob(arena.data, arena.length, offsetArg(cb[1], "descriptor offset"), cb.Length() > 2 && cb[2].ToBoolean());
  } catch (const std::runtime_error& e) {
    throw Napi::Error::New(cb.Env(), e.what());
  }
  return cb.Env().Undefined();
}

// --- the crew (cpu/crew.h) ---------------------------------------------------------------------

const char* waitName(cpu::JobWait w) { return w == cpu::JobWait::Done ? "done" : w == cpu::JobWait::Aborted ? "aborted" : "pending"; }

// crewInit(arena, board, slots)
Napi::Value CrewInit(const Napi::CallbackInfo& cb) {
  Span<uint8_t> a = arenaArg(cb[0]);
  const size_t board = offsetArg(cb[1], "board offset");
  const int slots = static_cast<int>(intArg(cb[2], "slots"));
  nativeErrors(cb.Env(), [&] { cpu::crewInit(a.data, a.length, board, slots); });
  return cb.Env().Undefined();
}

// crewConfigure(arena, board, spinMicros, spinMaxMicros, spinWorkers): idle workers of the first
// `spinWorkers` slots spin `spinMicros` (< 0: adaptive, up to spinMaxMicros) before they sleep.
Napi::Value CrewConfigure(const Napi::CallbackInfo& cb) {
  Span<uint8_t> a = arenaArg(cb[0]);
  const size_t board = offsetArg(cb[1], "board offset");
  const int64_t spin = intArg(cb[2], "spin microseconds"), max = intArg(cb[3], "spin bound microseconds");
  const int64_t spinners = intArg(cb[4], "spinning workers");
  if (spin > INT32_MAX || max < 0 || max > INT32_MAX) throw Napi::RangeError::New(cb.Env(), "spin microseconds out of range");
  if (spinners < 0 || spinners > 64) throw Napi::RangeError::New(cb.Env(), "spinning workers must be in [0, 64]");
  nativeErrors(cb.Env(), [&] {
    cpu::crewConfigure(a.data, a.length, board, static_cast<int32_t>(std::max<int64_t>(spin, -1)), static_cast<int32_t>(max), static_cast<int32_t>(spinners));
  });
  return cb.Env().Undefined();
}

// crewAlert(arena, board, count) → workers woken (0 when none slept): a job is on its way.
Napi::Value CrewAlert(const Napi::CallbackInfo& cb) {
  Span<uint8_t> a = arenaArg(cb[0]);
  const size_t board = offsetArg(cb[1], "board offset");
  const int64_t count = intArg(cb[2], "count");
  return Napi::Number::New(cb.Env(), nativeErrors(cb.Env(), [&] { return cpu::crewAlert(a.data, a.length, board, static_cast<int>(std::min<int64_t>(std::max<int64_t>(count, 0), 64))); }));
}

// crewTrace(on): record the timings of every crewJoin (diagnostics); crewLastJoin(out: Float64Array(12))
// → out: [posted, mainDone, waited, retired] as µs after the call's start, then mainBlocks,
// numBlocks, sleepersAtPost, woken, entered, the number of joins traced so far, and the lazy wake's
// estimates (µs): a woken worker's arrival, the waker's cost per worker.
Napi::Value CrewTrace(const Napi::CallbackInfo& cb) {
  cpu::crewTrace(cb.Length() > 0 && cb[0].ToBoolean());
  return cb.Env().Undefined();
}

Napi::Value CrewLastJoin(const Napi::CallbackInfo& cb) {
  Span<double> o = typedSpan<double>(cb[0], napi_float64_array, "out (a Float64Array of 12)");
  if (o.length < 12) throw Napi::RangeError::New(cb.Env(), "out must hold 12 values");
  const cpu::JoinTrace j = cpu::crewLastJoin();
  const auto us = [&](int64_t t) { return t ? double(t - j.start) / 1000.0 : -1.0; };
  const double v[12] = {us(j.posted), us(j.mainDone), us(j.waited), us(j.retired), double(j.mainBlocks), double(j.numBlocks),
                        double(j.sleepersAtPost), double(j.woken), double(j.entered), double(j.seq), double(j.arrivalMicros), double(j.wakeCostMicros)};
  std::memcpy(o.data, v, sizeof v);
  return cb[0];
}

// crewServe(arena, board, slot, idleMicros, testHooks): blocks this (worker) thread until quit, a
// test-hook death or idleMicros without a job → 'quit' | 'die' | 'idle'.
Napi::Value CrewServe(const Napi::CallbackInfo& cb) {
  Span<uint8_t> a = arenaArg(cb[0]);
  const size_t board = offsetArg(cb[1], "board offset");
  const int slot = static_cast<int>(intArg(cb[2], "slot"));
  const int64_t idle = intArg(cb[3], "idle microseconds");
  const bool hooks = cb.Length() > 4 && cb[4].ToBoolean();
  const cpu::ServeStatus s = nativeErrors(cb.Env(), [&] { return cpu::crewServe(a.data, a.length, board, slot, hooks, idle); });
  return Napi::String::New(cb.Env(), s == cpu::ServeStatus::Quit ? "quit" : s == cpu::ServeStatus::Die ? "die" : "idle");
}

// crewPost(arena, board, desc): validates the descriptor, then opens it to the crew.
Napi::Value CrewPost(const Napi::CallbackInfo& cb) {
  Span<uint8_t> a = arenaArg(cb[0]);
  const size_t board = offsetArg(cb[1], "board offset"), desc = offsetArg(cb[2], "descriptor offset");
  nativeErrors(cb.Env(), [&] { cpu::crewPost(a.data, a.length, board, desc); });
  return cb.Env().Undefined();
}

// crewJoin(arena, board, desc, mode, spinMicros, retireMicros) → 'done' | 'unretired' | 'pending' |
// 'aborted': the layer job run by this thread and the crew; mode 'alone' | 'lazy' | 'wake' (crew.h).
Napi::Value CrewJoin(const Napi::CallbackInfo& cb) {
  Span<uint8_t> a = arenaArg(cb[0]);
  const size_t board = offsetArg(cb[1], "board offset"), desc = offsetArg(cb[2], "descriptor offset");
  const std::string m = cb[3].IsString() ? cb[3].As<Napi::String>().Utf8Value() : "";
  if (m != "alone" && m != "lazy" && m != "wake") throw Napi::TypeError::New(cb.Env(), "mode must be 'alone', 'lazy' or 'wake'");
  const cpu::JoinMode mode = m == "alone" ? cpu::JoinMode::Alone : m == "lazy" ? cpu::JoinMode::WakeLazily : cpu::JoinMode::WakeAtPost;
  const int64_t spin = intArg(cb[4], "spin microseconds"), retire = intArg(cb[5], "retire microseconds");
  if (spin < 0 || retire < 0) throw Napi::RangeError::New(cb.Env(), "spin and retire microseconds must be >= 0");
  const cpu::JoinStatus s = nativeErrors(cb.Env(), [&] { return cpu::crewJoin(a.data, a.length, board, desc, mode, spin, retire); });
  static const char* const names[] = {"done", "aborted", "pending", "unretired"};
  return Napi::String::New(cb.Env(), names[static_cast<int>(s)]);
}

// gateJobRun(arena, board, desc) → -1 once the gate job at `desc` (native/cpu/gate_job.h) is computed
// by this thread and the crew, the index of the first non-finite hidden value, -3 when the gate weights
// are not finite, or -2 when a worker died inside it (logits incomplete; the board is free).
Napi::Value GateJobRun(const Napi::CallbackInfo& cb) {
  Span<uint8_t> a = arenaArg(cb[0]);
  const size_t board = offsetArg(cb[1], "board offset"), desc = offsetArg(cb[2], "descriptor offset");
  return Napi::Number::New(cb.Env(), static_cast<double>(nativeErrors(cb.Env(), [&] { return cpu::gateJobRun(a.data, a.length, board, desc); })));
}

// crewRetire(arena, board, spinMicros) → true when no worker is inside the job.
Napi::Value CrewRetire(const Napi::CallbackInfo& cb) {
  Span<uint8_t> a = arenaArg(cb[0]);
  const size_t board = offsetArg(cb[1], "board offset");
  const int64_t spin = intArg(cb[2], "spin microseconds");
  return Napi::Boolean::New(cb.Env(), nativeErrors(cb.Env(), [&] { return cpu::crewRetire(a.data, a.length, board, spin); }));
}

Napi::Value CrewQuit(const Napi::CallbackInfo& cb) {
  Span<uint8_t> a = arenaArg(cb[0]);
  nativeErrors(cb.Env(), [&] { cpu::crewQuit(a.data, a.length, offsetArg(cb[1], "board offset")); });
  return cb.Env().Undefined();
}

// cpuLayerWaitSpin(arena, desc, micros) → 'done' | 'aborted' | 'pending' (spins on this thread).
Napi::Value CpuLayerWaitSpin(const Napi::CallbackInfo& cb) {
  Span<uint8_t> a = arenaArg(cb[0]);
  const size_t desc = offsetArg(cb[1], "descriptor offset");
  const int64_t micros = intArg(cb[2], "spin microseconds");
  if (micros < 0) throw Napi::RangeError::New(cb.Env(), "spin microseconds must be >= 0");
  return Napi::String::New(cb.Env(), waitName(nativeErrors(cb.Env(), [&] { return cpu::waitLayerJob(a.data, a.length, desc, micros); })));
}

// cpuLayerWait(arena, desc) → Promise<'done' | 'aborted'>: sleeps on a libuv pool thread, so the
// event loop goes on (worker deaths are learned there) while a long job runs.
class LayerWaitWorker : public Napi::AsyncWorker {
 public:
  LayerWaitWorker(Napi::Env env, Napi::Object arenaView, Span<uint8_t> a, size_t desc)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), arena_(a), desc_(desc) {
    view_ = Napi::Persistent(arenaView);  // keeps the arena's memory alive while the wait runs
  }
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    try {
      result_ = cpu::waitLayerJob(arena_.data, arena_.length, desc_, -1);
    } catch (const std::runtime_error& e) {
      SetError(e.what());
    }
  }
  void OnOK() override { deferred_.Resolve(Napi::String::New(Env(), waitName(result_))); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference view_;
  Span<uint8_t> arena_;
  size_t desc_;
  cpu::JobWait result_ = cpu::JobWait::Pending;
};

Napi::Value CpuLayerWait(const Napi::CallbackInfo& cb) {
  Span<uint8_t> a = arenaArg(cb[0]);
  auto* w = new LayerWaitWorker(cb.Env(), cb[0].As<Napi::Object>(), a, offsetArg(cb[1], "descriptor offset"));
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

Napi::Value CpuBenchLayer(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  Span<uint8_t> arena = arenaArg(cb[0]);
  const size_t off = offsetArg(cb[1], "descriptor offset");
  const int threads = static_cast<int>(intArg(cb[2], "threads")), iters = static_cast<int>(intArg(cb[3], "iters"));
  if (threads < 1 || iters < 1) throw Napi::RangeError::New(env, "threads and iters must be >= 1");
  Napi::Float64Array out = Napi::Float64Array::New(env, iters);
  try {
    cpu::benchLayerJob(arena.data, arena.length, off, threads, iters, out.Data());
  } catch (const std::runtime_error& e) {
    throw Napi::Error::New(env, e.what());
  }
  return out;
}

Napi::Value CpuReadBandwidth(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  const int64_t bytes = intArg(cb[0], "bytes");
  const int threads = static_cast<int>(intArg(cb[1], "threads")), iters = static_cast<int>(intArg(cb[2], "iters"));
  if (bytes < (1 << 20) || threads < 1 || iters < 1) throw Napi::RangeError::New(env, "cpuReadBandwidth(bytes >= 1 MiB, threads >= 1, iters >= 1)");
  Napi::Float64Array out = Napi::Float64Array::New(env, iters);
  try {
    cpu::readBandwidth(static_cast<size_t>(bytes), threads, iters, out.Data());
  } catch (const std::runtime_error& e) {
    throw Napi::Error::New(env, e.what());
  }
  return out;
}

// cpuFillRandom(view: Uint8Array, kind, seed): random contents in a layout part, for benches:
//  'bf16': ±[2^-7, 2^-5); 'fp32': uniform in [-0.05, 0.05]; 'meta': valid 2:4 nibbles (first < second);
//  'select': 0/1 bytes. Fast enough for the hundreds of MiB a bench needs.
Napi::Value CpuFillRandom(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  Span<uint8_t> v = typedSpan<uint8_t>(cb[0], napi_uint8_array, "view");
  if (!cb[1].IsString()) throw Napi::TypeError::New(env, "kind must be a string");
  const std::string kind = cb[1].As<Napi::String>().Utf8Value();
  uint64_t s = static_cast<uint64_t>(intArg(cb[2], "seed")) * 0x9E3779B97F4A7C15ull + 1;
  auto next = [&s] {  // xorshift64*
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  };
  if (kind == "bf16") {
    // Bit patterns straight from the generator: random sign and mantissa, exponent 2^-7 or 2^-6
    // (finite, never zero), four weights per draw: fast enough for gigabytes of bench weights.
    const size_t n = v.length / 2;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
      uint64_t r = next();
      for (int u = 0; u < 4; ++u, r >>= 16) {
        const uint16_t h = static_cast<uint16_t>((r & 0x80ffu) | 0x3c00u);
        std::memcpy(v.data + 2 * (i + u), &h, 2);
      }
    }
    for (; i < n; ++i) {
      const uint16_t h = static_cast<uint16_t>((next() & 0x80ffu) | 0x3c00u);
      std::memcpy(v.data + 2 * i, &h, 2);
    }
  } else if (kind == "fp32") {
    const bool bf = kind == "bf16";
    const size_t el = bf ? 2 : 4, n = v.length / el;
    for (size_t i = 0; i < n; ++i) {
      const float f = (static_cast<float>(next() >> 40) / 16777216.f - 0.5f) * 0.1f;
      if (bf) {
        const uint16_t h = floatToBf16(f);
        std::memcpy(v.data + 2 * i, &h, 2);
      } else {
        std::memcpy(v.data + 4 * i, &f, 4);
      }
    }
  } else if (kind == "meta") {
    static const uint8_t nibs[6] = {0x4, 0x8, 0xc, 0x9, 0xd, 0xe};  // (a | b << 2), a < b
    for (size_t i = 0; i + 4 <= v.length; i += 4) {
      uint64_t r = next();
      uint32_t w = 0;
      for (int g = 0; g < 8; ++g, r >>= 8) w |= static_cast<uint32_t>(nibs[(r & 0xff) % 6]) << (4 * g);
      std::memcpy(v.data + i, &w, 4);
    }
  } else if (kind == "select") {
    for (size_t i = 0; i < v.length; ++i) v.data[i] = next() >> 63;
  } else {
    throw Napi::TypeError::New(env, "kind must be bf16, fp32, meta or select");
  }
  return env.Undefined();
}

}  // namespace

void registerCpu(Napi::Env env, Napi::Object exports) {
  exports.Set("cpuIsa", Napi::Function::New(env, CpuIsa, "cpuIsa"));
  exports.Set("cpuResolveIsa", Napi::Function::New(env, CpuResolveIsa, "cpuResolveIsa"));
  exports.Set("cpuLayerRun", Napi::Function::New(env, CpuLayerRun, "cpuLayerRun"));
  exports.Set("cpuLayerReset", Napi::Function::New(env, CpuLayerReset, "cpuLayerReset"));
  exports.Set("cpuLayerWaitSpin", Napi::Function::New(env, CpuLayerWaitSpin, "cpuLayerWaitSpin"));
  exports.Set("cpuLayerWait", Napi::Function::New(env, CpuLayerWait, "cpuLayerWait"));
  exports.Set("crewInit", Napi::Function::New(env, CrewInit, "crewInit"));
  exports.Set("crewServe", Napi::Function::New(env, CrewServe, "crewServe"));
  exports.Set("crewConfigure", Napi::Function::New(env, CrewConfigure, "crewConfigure"));
  exports.Set("crewAlert", Napi::Function::New(env, CrewAlert, "crewAlert"));
  exports.Set("crewTrace", Napi::Function::New(env, CrewTrace, "crewTrace"));
  exports.Set("crewLastJoin", Napi::Function::New(env, CrewLastJoin, "crewLastJoin"));
  exports.Set("crewPost", Napi::Function::New(env, CrewPost, "crewPost"));
  exports.Set("crewJoin", Napi::Function::New(env, CrewJoin, "crewJoin"));
  exports.Set("gateJobRun", Napi::Function::New(env, GateJobRun, "gateJobRun"));
  exports.Set("crewRetire", Napi::Function::New(env, CrewRetire, "crewRetire"));
  exports.Set("crewQuit", Napi::Function::New(env, CrewQuit, "crewQuit"));
  exports.Set("cpuBenchLayer", Napi::Function::New(env, CpuBenchLayer, "cpuBenchLayer"));
  exports.Set("cpuReadBandwidth", Napi::Function::New(env, CpuReadBandwidth, "cpuReadBandwidth"));
  exports.Set("cpuFillRandom", Napi::Function::New(env, CpuFillRandom, "cpuFillRandom"));
}

}  // namespace hetmoe
