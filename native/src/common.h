// Shared pieces of the portcullis addon: errors a user can act on, option
// readers that check types and ranges, the batch slots (persistent references
// to the JS-owned arenas a handle may write into) and the libuv poller.
//
// Rule of the addon (DESIGN.md "native/"): it moves bytes between the kernel
// and JS-owned arenas, nothing more. Every entry point validates its
// arguments and throws TypeError / RangeError instead of touching memory it
// was not given.
#pragma once

#include <napi.h>
#include <uv.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace pc {

// ---------------------------------------------------------------- errors

// The errno name ("EPERM"); "EUNKNOWN" when libc does not know it.
const char* ErrnoCode(int err);

// A hint for the common errno values of opening a device: EPERM/EACCES name
// the capability to grant, ENODEV names the interface, ENOMEM/ENOBUFS say to
// shrink the ring. Empty when there is nothing useful to add.
std::string DefaultHint(int err, const char* capability, const std::string& ifname);

// Error with .errno (negative, like Node's own system errors: -1 for EPERM),
// .code ("EPERM"), .syscall, and the message
//   "<what>: <strerror> (<CODE>): <hint>".
Napi::Error SysError(Napi::Env env, int err, const std::string& what, const char* syscall,
                     const std::string& hint);
// Throws SysError and returns undefined, for `return ThrowSys(...)`.
Napi::Value ThrowSys(Napi::Env env, int err, const std::string& what, const char* syscall,
                     const std::string& hint);
Napi::Value ThrowType(Napi::Env env, const std::string& msg);
Napi::Value ThrowRange(Napi::Env env, const std::string& msg);

// ---------------------------------------------------------------- arguments

// Options object: undefined/null means "all defaults"; anything else but a
// plain object is a TypeError. Returns false with an exception pending.
bool OptObject(Napi::Env env, const Napi::Value& v, const char* ctx, Napi::Object* out);
// opts[key] as an integer in [min, max], `def` when absent.
bool OptUint(Napi::Env env, const Napi::Object& opts, const char* ctx, const char* key, uint32_t def,
             uint32_t min, uint32_t max, uint32_t* out);
bool OptBool(Napi::Env env, const Napi::Object& opts, const char* ctx, const char* key, bool def, bool* out);
bool OptString(Napi::Env env, const Napi::Object& opts, const char* ctx, const char* key,
               const std::string& def, std::string* out);
// info[i] as an integer in [min, max].
bool ArgUint(const Napi::CallbackInfo& info, size_t i, const char* ctx, const char* name, uint32_t min,
             uint32_t max, uint32_t* out);
// info[i] as a non-empty interface name shorter than IFNAMSIZ (allowEmpty for TUN).
bool ArgIfName(const Napi::CallbackInfo& info, size_t i, const char* ctx, bool allowEmpty, std::string* out);

// ---------------------------------------------------------------- batch slots

// Raw views of one attached batch, resolved again at every call so that an
// ArrayBuffer detached or transferred since attach() is noticed instead of
// written through a stale pointer.
struct Views {
  uint8_t* arena;
  size_t arenaLen;
  uint32_t* off;
  uint32_t* capLen;
  uint32_t* origLen;
  double* tsSec;
  uint32_t* tsNsec;
  uint16_t* linkType;
  uint16_t* port;
  uint8_t* verdict;
  uint8_t* flags;  // nullptr when not attached with one
  uint32_t capacity;
};

// The batches a handle may write into. attach() takes persistent references
// (napi_ref, count 1) to the batch object and to each of its typed arrays and
// keeps them until detach() or close(), so the GC can never free an arena the
// addon writes into (the bug of the `cap` package, which keeps a raw pointer).
class Slots {
 public:
  static constexpr uint32_t kMaxSlots = 64;
  // attach(batch, flags?) -> slot number. `minArena` is the smallest arena
  // that can hold one packet of this handle; `minFix` says how to lower it.
  Napi::Value Attach(const Napi::CallbackInfo& info, const char* ctx, size_t minArena, const char* minFix);
  Napi::Value Detach(const Napi::CallbackInfo& info, const char* ctx);
  // Resolves info[0] (slot) into views; false with an exception pending.
  bool Resolve(const Napi::CallbackInfo& info, const char* ctx, Views* v);
  void Clear();
  uint32_t Count() const;

 private:
  enum { kArena, kOff, kCapLen, kOrigLen, kTsSec, kTsNsec, kLinkType, kPort, kVerdict, kFlags, kRefs };
  struct Slot {
    Napi::ObjectReference batch;
    Napi::ObjectReference refs[kRefs];
    bool hasFlags = false;
  };
  bool ResolveSlot(Napi::Env env, Slot& s, const char* ctx, Views* v);
  std::vector<std::unique_ptr<Slot>> slots_;
};

// recv-style arguments: (slot, startCount, startUsed). Checks that the start
// lies inside the arrays and the arena.
bool RecvArgs(const Napi::CallbackInfo& info, Slots& slots, const char* ctx, Views* v, uint32_t* start,
              uint32_t* used);
// send-style arguments: (slot, start, count). Checks that the range lies inside
// the arrays and that every FORWARD packet in it lies inside the arena, before
// anything is sent.
bool SendArgs(const Napi::CallbackInfo& info, Slots& slots, const char* ctx, Views* v, uint32_t* start,
              uint32_t* end);

// ---------------------------------------------------------------- polling

// One uv_poll_t on a handle's fd. The JS callback runs once per readable
// event (the callback then drains a batch synchronously), never per packet.
// While polling, the owner JS object is strongly referenced so a running
// capture is not collected; stop() closes the uv handle, so a stopped handle
// never keeps the process alive.
class Poller {
 public:
  Poller() = default;
  ~Poller();
  Poller(const Poller&) = delete;
  Poller& operator=(const Poller&) = delete;
  // start(cb): false with an exception pending.
  bool Start(const Napi::CallbackInfo& info, int fd, const char* ctx);
  void Stop();
  bool Active() const { return state_ != nullptr; }

 private:
  struct State;
  static void OnPoll(uv_poll_t* h, int status, int events);
  State* state_ = nullptr;
  napi_env env_ = nullptr;
  Napi::FunctionReference cb_;
  Napi::ObjectReference owner_;
  std::unique_ptr<Napi::AsyncContext> async_;
};

// Packet flags written into the optional `flags` array (AF_PACKET).
enum PacketFlag : uint8_t {
  kCsumNotReady = 1,  // TP_STATUS_CSUMNOTREADY: L4 checksum is partial (only the pseudo-header sum)
  kCsumValid = 2,     // TP_STATUS_CSUM_VALID: the checksum was verified by the device
  kTruncated = 4,     // captured length < original length
  kVlanRestored = 8,  // an offloaded 802.1Q tag was written back into the frame
  kGso = 16,          // vnetHdr: a GSO super-frame (virtio_net_hdr gso_type != NONE), longer than the MTU
};

// Wall clock as seconds + nanoseconds.
void Now(double* sec, uint32_t* nsec);

}  // namespace pc
