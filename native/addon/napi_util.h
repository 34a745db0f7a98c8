// Small helpers shared by the binding files: argument checks that name what was wrong.
#pragma once
#include <napi.h>

#include <cstddef>
#include <cstdint>
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

}  // namespace hetmoe
