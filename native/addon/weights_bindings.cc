// mapWeights / unmapWeights / weightsView: the JS side of weights_map.h.
#include <cstring>
#include <stdexcept>

#include "addon/bindings.h"
#include "addon/napi_util.h"
#include "addon/weights_map.h"

namespace hetmoe {
namespace {

Napi::Value MapWeights(const Napi::CallbackInfo& cb) {
  if (!cb[0].IsString()) throw Napi::TypeError::New(cb.Env(), "mapWeights(path): path must be a string");
  bool populate = cb.Length() > 1 && cb[1].ToBoolean();
  try {
    int id = mapWeights(cb[0].As<Napi::String>().Utf8Value(), populate);
    Napi::Object o = Napi::Object::New(cb.Env());
    o.Set("id", id);
    o.Set("bytes", static_cast<double>(weightsById(id).bytes));
    return o;
  } catch (const std::runtime_error& e) {
    throw Napi::Error::New(cb.Env(), e.what());
  }
}

Napi::Value UnmapWeights(const Napi::CallbackInfo& cb) {
  unmapWeights(static_cast<int>(intArg(cb[0], "id")));
  return cb.Env().Undefined();
}

// A view of mapped bytes without copying (an external ArrayBuffer). Node allows these; embedders
// that refuse external buffers get a copy instead, which is still correct, only slower.
Napi::Value WeightsView(const Napi::CallbackInfo& cb) {
  Napi::Env env = cb.Env();
  int id = static_cast<int>(intArg(cb[0], "id"));
  int64_t offset = intArg(cb[1], "offset"), length = intArg(cb[2], "length");
  MappedWeights w = weightsById(id);
  if (!w.data) throw Napi::Error::New(env, "weightsView: weights id " + std::to_string(id) + " is not mapped");
  if (offset < 0 || length < 0 || static_cast<size_t>(offset + length) > w.bytes)
    throw Napi::RangeError::New(env, "weightsView: range [" + std::to_string(offset) + ", +" + std::to_string(length) +
                                         ") is outside the " + std::to_string(w.bytes) + "-byte file");
  void* p = const_cast<uint8_t*>(w.data + offset);
  napi_value ab;
  napi_status s = napi_create_external_arraybuffer(env, p, static_cast<size_t>(length), nullptr, nullptr, &ab);
  if (s == napi_ok) return Napi::Value(env, ab);
  Napi::ArrayBuffer copy = Napi::ArrayBuffer::New(env, static_cast<size_t>(length));
  std::memcpy(copy.Data(), p, static_cast<size_t>(length));
  return copy;
}

}  // namespace

void registerWeights(Napi::Env env, Napi::Object exports) {
  exports.Set("mapWeights", Napi::Function::New(env, MapWeights, "mapWeights"));
  exports.Set("unmapWeights", Napi::Function::New(env, UnmapWeights, "unmapWeights"));
  exports.Set("weightsView", Napi::Function::New(env, WeightsView, "weightsView"));
}

}  // namespace hetmoe
