#include "common.h"

#include <net/if.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <ctime>

namespace pc {

// ---------------------------------------------------------------- errors

const char* ErrnoCode(int err) {
  const char* name = strerrorname_np(err);  // glibc >= 2.32
  return name != nullptr ? name : "EUNKNOWN";
}

std::string DefaultHint(int err, const char* capability, const std::string& ifname) {
  switch (err) {
    case EPERM:
    case EACCES:
      return std::string("run as root or with ") + capability;
    case ENODEV:
    case ENXIO:
      return "no interface named '" + ifname + "' in this network namespace (check `ip link`)";
    case ENETDOWN:
      return "bring the interface up first (`ip link set " + ifname + " up`)";
    case ENOMEM:
    case ENOBUFS:
      return "the kernel could not allocate the buffers; use fewer or smaller ring blocks";
    case EMFILE:
    case ENFILE:
      return "too many open files; close unused handles or raise the limit (ulimit -n)";
    default:
      return "";
  }
}

Napi::Error SysError(Napi::Env env, int err, const std::string& what, const char* syscall,
                     const std::string& hint) {
  const char* code = ErrnoCode(err);
  std::string msg = what + ": " + strerror(err) + " (" + code + ")";
  if (!hint.empty()) msg += ": " + hint;
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("errno", Napi::Number::New(env, -err));
  e.Set("code", Napi::String::New(env, code));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

Napi::Value ThrowSys(Napi::Env env, int err, const std::string& what, const char* syscall,
                     const std::string& hint) {
  SysError(env, err, what, syscall, hint).ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value ThrowType(Napi::Env env, const std::string& msg) {
  Napi::TypeError::New(env, msg).ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value ThrowRange(Napi::Env env, const std::string& msg) {
  Napi::RangeError::New(env, msg).ThrowAsJavaScriptException();
  return env.Undefined();
}

// ---------------------------------------------------------------- arguments

static std::string TypeName(const Napi::Value& v) {
  switch (v.Type()) {
    case napi_undefined: return "undefined";
    case napi_null: return "null";
    case napi_boolean: return "a boolean";
    case napi_number: return "a number";
    case napi_string: return "a string";
    case napi_symbol: return "a symbol";
    case napi_function: return "a function";
    case napi_bigint: return "a bigint";
    default: break;
  }
  if (v.IsTypedArray()) {
    switch (v.As<Napi::TypedArray>().TypedArrayType()) {
      case napi_uint8_array: return "a Uint8Array";
      case napi_uint16_array: return "a Uint16Array";
      case napi_uint32_array: return "a Uint32Array";
      case napi_float64_array: return "a Float64Array";
      default: return "another typed array";
    }
  }
  if (v.IsArray()) return "an array";
  return "an object";
}

bool OptObject(Napi::Env env, const Napi::Value& v, const char* ctx, Napi::Object* out) {
  if (v.IsUndefined() || v.IsNull()) {
    *out = Napi::Object::New(env);
    return true;
  }
  if (!v.IsObject() || v.IsArray() || v.IsFunction()) {
    ThrowType(env, std::string(ctx) + ": options must be an object (got " + TypeName(v) + ")");
    return false;
  }
  *out = v.As<Napi::Object>();
  return true;
}

static bool ToUint(Napi::Env env, const Napi::Value& v, const std::string& what, uint32_t min, uint32_t max,
                   uint32_t* out) {
  if (!v.IsNumber()) {
    ThrowType(env, what + " must be an integer (got " + TypeName(v) + ")");
    return false;
  }
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d) || d < min || d > max) {
    ThrowRange(env, what + " must be an integer from " + std::to_string(min) + " to " + std::to_string(max) +
                        " (got " + v.ToString().Utf8Value() + ")");
    return false;
  }
  *out = static_cast<uint32_t>(d);
  return true;
}

bool OptUint(Napi::Env env, const Napi::Object& opts, const char* ctx, const char* key, uint32_t def,
             uint32_t min, uint32_t max, uint32_t* out) {
  Napi::Value v = opts.Get(key);
  if (env.IsExceptionPending()) return false;
  if (v.IsUndefined()) {
    *out = def;
    return true;
  }
  return ToUint(env, v, std::string(ctx) + ": option " + key, min, max, out);
}

bool OptBool(Napi::Env env, const Napi::Object& opts, const char* ctx, const char* key, bool def, bool* out) {
  Napi::Value v = opts.Get(key);
  if (env.IsExceptionPending()) return false;
  if (v.IsUndefined()) {
    *out = def;
    return true;
  }
  if (!v.IsBoolean()) {
    ThrowType(env, std::string(ctx) + ": option " + key + " must be a boolean (got " + TypeName(v) + ")");
    return false;
  }
  *out = v.As<Napi::Boolean>().Value();
  return true;
}

bool OptString(Napi::Env env, const Napi::Object& opts, const char* ctx, const char* key,
               const std::string& def, std::string* out) {
  Napi::Value v = opts.Get(key);
  if (env.IsExceptionPending()) return false;
  if (v.IsUndefined()) {
    *out = def;
    return true;
  }
  if (!v.IsString()) {
    ThrowType(env, std::string(ctx) + ": option " + key + " must be a string (got " + TypeName(v) + ")");
    return false;
  }
  *out = v.As<Napi::String>().Utf8Value();
  return true;
}

bool ArgUint(const Napi::CallbackInfo& info, size_t i, const char* ctx, const char* name, uint32_t min,
             uint32_t max, uint32_t* out) {
  return ToUint(info.Env(), info[i], std::string(ctx) + ": " + name, min, max, out);
}

bool ArgIfName(const Napi::CallbackInfo& info, size_t i, const char* ctx, bool allowEmpty, std::string* out) {
  Napi::Env env = info.Env();
  if (!info[i].IsString()) {
    ThrowType(env, std::string(ctx) + ": interface name must be a string (got " + TypeName(info[i]) + ")");
    return false;
  }
  std::string s = info[i].As<Napi::String>().Utf8Value();
  if ((s.empty() && !allowEmpty) || s.size() >= IFNAMSIZ || s.find('\0') != std::string::npos ||
      s.find('/') != std::string::npos) {
    ThrowRange(env, std::string(ctx) + ": interface name '" + s + "' is invalid (1 to " +
                        std::to_string(IFNAMSIZ - 1) + " characters, no '/')");
    return false;
  }
  *out = s;
  return true;
}

// ---------------------------------------------------------------- batch slots

namespace {
struct Field {
  const char* name;
  napi_typedarray_type type;
  const char* typeName;
};
const Field kFields[] = {
    {"arena", napi_uint8_array, "Buffer or Uint8Array"},
    {"off", napi_uint32_array, "Uint32Array"},
    {"capLen", napi_uint32_array, "Uint32Array"},
    {"origLen", napi_uint32_array, "Uint32Array"},
    {"tsSec", napi_float64_array, "Float64Array"},
    {"tsNsec", napi_uint32_array, "Uint32Array"},
    {"linkType", napi_uint16_array, "Uint16Array"},
    {"port", napi_uint16_array, "Uint16Array"},
    {"verdict", napi_uint8_array, "Uint8Array"},
    {"flags", napi_uint8_array, "Uint8Array"},
};
}  // namespace

Napi::Value Slots::Attach(const Napi::CallbackInfo& info, const char* ctx, size_t minArena, const char* minFix) {
  Napi::Env env = info.Env();
  std::string where = std::string(ctx) + ".attach(batch)";
  if (!info[0].IsObject()) return ThrowType(env, where + ": batch must be an object (got " + TypeName(info[0]) + ")");
  Napi::Object batch = info[0].As<Napi::Object>();
  auto slot = std::make_unique<Slot>();
  uint32_t capacity = UINT32_MAX;
  size_t arenaLen = 0;
  for (int k = 0; k < kRefs; k++) {
    Napi::Value v;
    if (k == kFlags) {
      v = info[1];
      if (v.IsUndefined() || v.IsNull()) continue;
    } else {
      v = batch.Get(kFields[k].name);
      if (env.IsExceptionPending()) return env.Undefined();
    }
    std::string fname = k == kFlags ? std::string("flags") : std::string("batch.") + kFields[k].name;
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != kFields[k].type) {
      return ThrowType(env, where + ": " + fname + " must be a " + kFields[k].typeName + " (got " + TypeName(v) + ")");
    }
    size_t len = v.As<Napi::TypedArray>().ElementLength();
    if (k == kArena) {
      arenaLen = len;
    } else if (k != kFlags) {
      capacity = std::min<size_t>(capacity, len);
    } else if (len < capacity) {
      return ThrowRange(env, where + ": flags holds " + std::to_string(len) + " entries, fewer than the batch capacity " +
                                 std::to_string(capacity));
    }
    slot->refs[k] = Napi::Persistent(v.As<Napi::Object>());
  }
  slot->hasFlags = !slot->refs[kFlags].IsEmpty();
  if (capacity == 0) return ThrowRange(env, where + ": the batch arrays are empty (capacity 0)");
  if (arenaLen < minArena) {
    return ThrowRange(env, where + ": the arena holds " + std::to_string(arenaLen) + " bytes, fewer than one packet of " +
                               std::to_string(minArena) + " bytes; allocate a larger Batch or " + minFix);
  }
  slot->batch = Napi::Persistent(batch);
  for (size_t i = 0; i < slots_.size(); i++) {
    if (!slots_[i]) {
      slots_[i] = std::move(slot);
      return Napi::Number::New(env, static_cast<double>(i));
    }
  }
  if (slots_.size() >= kMaxSlots) {
    return ThrowRange(env, where + ": " + std::to_string(kMaxSlots) + " batches are attached already; detach one first");
  }
  slots_.push_back(std::move(slot));
  return Napi::Number::New(env, static_cast<double>(slots_.size() - 1));
}

Napi::Value Slots::Detach(const Napi::CallbackInfo& info, const char* ctx) {
  uint32_t i;
  if (!ArgUint(info, 0, ctx, "slot", 0, kMaxSlots - 1, &i)) return info.Env().Undefined();
  if (i < slots_.size()) slots_[i].reset();
  return info.Env().Undefined();
}

void Slots::Clear() { slots_.clear(); }

uint32_t Slots::Count() const {
  uint32_t n = 0;
  for (const auto& s : slots_) n += s ? 1 : 0;
  return n;
}

bool Slots::ResolveSlot(Napi::Env env, Slot& s, const char* ctx, Views* v) {
  void* data[kRefs] = {};
  size_t lens[kRefs] = {};
  for (int k = 0; k < kRefs; k++) {
    if (k == kFlags && !s.hasFlags) continue;
    napi_value arr = s.refs[k].Value();
    napi_typedarray_type type;
    napi_value ab;
    size_t byteOffset;
    if (napi_get_typedarray_info(env, arr, &type, &lens[k], &data[k], &ab, &byteOffset) != napi_ok) {
      Napi::Error::New(env, std::string(ctx) + ": could not read attached array").ThrowAsJavaScriptException();
      return false;
    }
  }
  uint32_t capacity = UINT32_MAX;
  for (int k = kOff; k <= kVerdict; k++) capacity = std::min<size_t>(capacity, lens[k]);
  if (lens[kArena] == 0 || data[kArena] == nullptr || capacity == 0 || (s.hasFlags && lens[kFlags] < capacity)) {
    ThrowRange(env, std::string(ctx) + ": an attached array was detached or transferred since attach(); attach the batch again");
    return false;
  }
  v->arena = static_cast<uint8_t*>(data[kArena]);
  v->arenaLen = lens[kArena];
  v->off = static_cast<uint32_t*>(data[kOff]);
  v->capLen = static_cast<uint32_t*>(data[kCapLen]);
  v->origLen = static_cast<uint32_t*>(data[kOrigLen]);
  v->tsSec = static_cast<double*>(data[kTsSec]);
  v->tsNsec = static_cast<uint32_t*>(data[kTsNsec]);
  v->linkType = static_cast<uint16_t*>(data[kLinkType]);
  v->port = static_cast<uint16_t*>(data[kPort]);
  v->verdict = static_cast<uint8_t*>(data[kVerdict]);
  v->flags = s.hasFlags ? static_cast<uint8_t*>(data[kFlags]) : nullptr;
  v->capacity = capacity;
  return true;
}

bool Slots::Resolve(const Napi::CallbackInfo& info, const char* ctx, Views* v) {
  uint32_t i;
  if (!ArgUint(info, 0, ctx, "slot", 0, kMaxSlots - 1, &i)) return false;
  if (i >= slots_.size() || !slots_[i]) {
    ThrowRange(info.Env(), std::string(ctx) + ": slot " + std::to_string(i) + " is not attached (call attach(batch) first)");
    return false;
  }
  return ResolveSlot(info.Env(), *slots_[i], ctx, v);
}

bool RecvArgs(const Napi::CallbackInfo& info, Slots& slots, const char* ctx, Views* v, uint32_t* start,
              uint32_t* used) {
  if (!slots.Resolve(info, ctx, v)) return false;
  if (!ArgUint(info, 1, ctx, "startCount", 0, v->capacity, start)) return false;
  uint32_t maxUsed = v->arenaLen > UINT32_MAX ? UINT32_MAX : static_cast<uint32_t>(v->arenaLen);
  return ArgUint(info, 2, ctx, "startUsed", 0, maxUsed, used);
}

bool SendArgs(const Napi::CallbackInfo& info, Slots& slots, const char* ctx, Views* v, uint32_t* start,
              uint32_t* end) {
  if (!slots.Resolve(info, ctx, v)) return false;
  uint32_t count;
  if (!ArgUint(info, 1, ctx, "start", 0, v->capacity, start)) return false;
  if (!ArgUint(info, 2, ctx, "count", 0, v->capacity - *start, &count)) return false;
  *end = *start + count;
  for (uint32_t i = *start; i < *end; i++) {
    if (v->verdict[i] != 0) continue;
    if (static_cast<uint64_t>(v->off[i]) + v->capLen[i] > v->arenaLen) {
      ThrowRange(info.Env(), std::string(ctx) + ": packet " + std::to_string(i) + " (off " + std::to_string(v->off[i]) +
                                 ", capLen " + std::to_string(v->capLen[i]) + ") lies outside the arena of " +
                                 std::to_string(v->arenaLen) + " bytes; nothing was sent");
      return false;
    }
  }
  return true;
}

// ---------------------------------------------------------------- polling

// Heap state of one uv_poll_t: it must outlive uv_close(), which completes on
// a later loop turn, so it holds nothing but the handle and a back pointer
// that Stop() clears.
struct Poller::State {
  uv_poll_t handle;
  Poller* poller;
};

Poller::~Poller() { Stop(); }

bool Poller::Start(const Napi::CallbackInfo& info, int fd, const char* ctx) {
  Napi::Env env = info.Env();
  if (!info[0].IsFunction()) {
    ThrowType(env, std::string(ctx) + ".start(cb): cb must be a function (got " + TypeName(info[0]) + ")");
    return false;
  }
  Stop();
  uv_loop_t* loop = nullptr;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok || loop == nullptr) {
    Napi::Error::New(env, std::string(ctx) + ".start: no libuv loop").ThrowAsJavaScriptException();
    return false;
  }
  auto* st = new State();
  st->poller = this;
  st->handle.data = st;
  int r = uv_poll_init(loop, &st->handle, fd);
  if (r != 0) {
    delete st;
    ThrowSys(env, -r, std::string(ctx) + ".start: cannot poll fd " + std::to_string(fd), "uv_poll_init", "");
    return false;
  }
  r = uv_poll_start(&st->handle, UV_READABLE, OnPoll);
  if (r != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&st->handle),
             [](uv_handle_t* h) { delete static_cast<State*>(h->data); });
    ThrowSys(env, -r, std::string(ctx) + ".start: cannot poll fd " + std::to_string(fd), "uv_poll_start", "");
    return false;
  }
  env_ = env;
  if (!async_) async_ = std::make_unique<Napi::AsyncContext>(env, "portcullis:poll");
  cb_ = Napi::Persistent(info[0].As<Napi::Function>());
  owner_ = Napi::Persistent(info.This().As<Napi::Object>());
  state_ = st;
  return true;
}

void Poller::Stop() {
  if (state_ == nullptr) return;
  State* st = state_;
  state_ = nullptr;
  st->poller = nullptr;
  uv_poll_stop(&st->handle);
  // Closing (not just stopping) the handle is what lets the process exit.
  uv_close(reinterpret_cast<uv_handle_t*>(&st->handle), [](uv_handle_t* h) { delete static_cast<State*>(h->data); });
  cb_.Reset();
  owner_.Reset();
}

void Poller::OnPoll(uv_poll_t* h, int status, int /*events*/) {
  State* st = static_cast<State*>(h->data);
  Poller* p = st->poller;
  if (p == nullptr) return;
  Napi::Env env(p->env_);
  Napi::HandleScope scope(env);
  // Local handles to the owner and the callback keep both alive for the
  // duration of the call even if the callback stops or closes the handle.
  Napi::Object owner = p->owner_.Value();
  Napi::Function fn = p->cb_.Value();
  std::vector<napi_value> args;
  if (status < 0) {
    args.push_back(SysError(env, -status, "polling the capture fd failed", "uv_poll", "the handle was stopped").Value());
    p->Stop();
  }
  // MakeCallback (not Call): runs the microtask and nextTick queues after the
  // callback, as for any other I/O callback.
  napi_value result;
  napi_async_context actx = *p->async_;
  napi_status s = napi_make_callback(env, actx, owner, fn, args.size(), args.data(), &result);
  if (s == napi_pending_exception || env.IsExceptionPending()) {
    Napi::Error e = env.GetAndClearPendingException();
    napi_fatal_exception(env, e.Value());
  }
}

void Now(double* sec, uint32_t* nsec) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  *sec = static_cast<double>(ts.tv_sec);
  *nsec = static_cast<uint32_t>(ts.tv_nsec);
}

}  // namespace pc
