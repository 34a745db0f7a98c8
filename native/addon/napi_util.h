// Small helpers shared by the binding files: argument checks that name what was wrong.
#pragma once
#include <napi.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace hetmoe {

template <typename T>
struct Span {
  T* data = nullptr;
  size_t length = 0;  // elements
};

// The memory behind a typed array (over an ArrayBuffer or a SharedArrayBuffer). Node-API cannot
// take a SharedArrayBuffer itself on Node 20, but it can take a typed-array view of one.
template <typename T>
Span<T> typedSpan(const Napi::Value& v, napi_typedarray_type type, const char* what) {
  if (!v.IsTypedArray()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a typed array");
  auto ta = v.As<Napi::TypedArray>();
  if (ta.TypedArrayType() != type)
    throw Napi::TypeError::New(v.Env(), std::string(what) + " has the wrong element type");
  void* data = nullptr;
  size_t length = 0;
  napi_status s = napi_get_typedarray_info(v.Env(), v, nullptr, &length, &data, nullptr, nullptr);
  if (s != napi_ok) throw Napi::Error::New(v.Env(), std::string("cannot read ") + what);
  return {static_cast<T*>(data), length};
}

inline int64_t intArg(const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (d != static_cast<double>(static_cast<int64_t>(d)))
    throw Napi::RangeError::New(v.Env(), std::string(what) + " must be an integer");
  return static_cast<int64_t>(d);
}

inline Span<uint8_t> arenaArg(const Napi::Value& v) { return typedSpan<uint8_t>(v, napi_uint8_array, "arena (a Uint8Array over the whole arena)"); }

inline size_t offsetArg(const Napi::Value& v, const char* what) {
  const int64_t o = intArg(v, what);
  if (o < 0) throw Napi::RangeError::New(v.Env(), std::string(what) + " must be >= 0");
  return static_cast<size_t>(o);
}

// Runs f, turning the native side's std::runtime_error (a bad descriptor, a missing ISA) into a JS Error.
template <class F>
auto nativeErrors(Napi::Env env, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::runtime_error& e) {
    throw Napi::Error::New(env, e.what());
  }
}

}  // namespace hetmoe
