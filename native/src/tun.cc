// TUN: a layer-3 device whose packets (raw IPv4/IPv6, IFF_NO_PI: no 4-byte
// packet-information prefix) are read and written through a non-blocking fd.
// One read() per packet is the kernel's interface; the batching here is that
// JS crosses into the addon once per batch.
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common.h"
#include "handles.h"

namespace pc {

namespace {
constexpr uint16_t kLinkTypeRaw = 101;  // LINKTYPE_RAW: IPv4 or IPv6 by the first nibble
}

Napi::Object Tun::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(env, "Tun",
                                    {
                                        InstanceMethod<&Tun::Attach>("attach"),
                                        InstanceMethod<&Tun::Detach>("detach"),
                                        InstanceMethod<&Tun::ReadBatch>("readBatch"),
                                        InstanceMethod<&Tun::WriteBatch>("writeBatch"),
                                        InstanceMethod<&Tun::Name>("name"),
                                        InstanceMethod<&Tun::Stats>("stats"),
                                        InstanceMethod<&Tun::Fd>("fd"),
                                        InstanceMethod<&Tun::Start>("start"),
                                        InstanceMethod<&Tun::Stop>("stop"),
                                        InstanceMethod<&Tun::Close>("close"),
                                    });
  exports.Set("Tun", ctor);
  return exports;
}

// new Tun(name, { multiQueue, maxPacket, port }); name '' lets the kernel pick tunN.
Tun::Tun(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Tun>(info) {
  Napi::Env env = info.Env();
  const char* ctx = "Tun";
  if (!ArgIfName(info, 0, ctx, true, &name_)) return;
  Napi::Object opts;
  bool multiQueue;
  uint32_t maxPacket, port;
  if (!OptObject(env, info[1], ctx, &opts) || !OptBool(env, opts, ctx, "multiQueue", false, &multiQueue) ||
      !OptUint(env, opts, ctx, "maxPacket", 65535, 576, 65535, &maxPacket) ||
      !OptUint(env, opts, ctx, "port", 0, 0, 65535, &port))
    return;
  maxPacket_ = maxPacket;
  port_ = static_cast<uint16_t>(port);
  std::string what = "TUN device '" + name_ + "'";
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    std::string hint = err == ENOENT ? "/dev/net/tun is missing: load the tun module, or give the container --device /dev/net/tun"
                                     : DefaultHint(err, "CAP_NET_ADMIN", name_);
    ThrowSys(env, err, what + ": cannot open /dev/net/tun", "open", hint);
    return;
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (multiQueue ? IFF_MULTI_QUEUE : 0);
  memcpy(ifr.ifr_name, name_.data(), name_.size());
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    int err = errno;
    close(fd);
    std::string hint;
    if (err == EBUSY) {
      hint = "'" + name_ + "' is already attached to another file descriptor; open every queue with multiQueue: true to share it";
    } else if (err == EINVAL) {
      hint = "'" + name_ + "' exists but is not a TUN device with these flags (multiQueue must match how it was created)";
    } else {
      hint = DefaultHint(err, "CAP_NET_ADMIN", name_);
    }
    ThrowSys(env, err, what, "ioctl(TUNSETIFF)", hint);
    return;
  }
  name_ = std::string(ifr.ifr_name, strnlen(ifr.ifr_name, IFNAMSIZ));
  fd_ = fd;
}

Tun::~Tun() { CloseNow(); }

void Tun::CloseNow() {
  poller_.Stop();
  slots_.Clear();
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

bool Tun::CheckOpen(Napi::Env env, const char* method) {
  if (fd_ >= 0) return true;
  Napi::Error::New(env, "Tun." + std::string(method) + ": the TUN device '" + name_ + "' is closed")
      .ThrowAsJavaScriptException();
  return false;
}

Napi::Value Tun::Attach(const Napi::CallbackInfo& info) {
  if (!CheckOpen(info.Env(), "attach")) return info.Env().Undefined();
  return slots_.Attach(info, "Tun", maxPacket_, "open with a smaller maxPacket (at least the MTU)");
}

Napi::Value Tun::Detach(const Napi::CallbackInfo& info) { return slots_.Detach(info, "Tun.detach"); }

// readBatch(slot, startCount, startUsed) -> packets added. read() until
// EAGAIN, the arrays are full, or the arena has less than maxPacket bytes
// free (a TUN read into a shorter buffer silently cuts the packet).
Napi::Value Tun::ReadBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckOpen(env, "readBatch")) return env.Undefined();
  Views v;
  uint32_t start, used;
  if (!RecvArgs(info, slots_, "Tun.readBatch", &v, &start, &used)) return env.Undefined();
  double sec;
  uint32_t nsec;
  Now(&sec, &nsec);  // one clock read per batch: the kernel gives TUN readers no timestamp
  uint32_t i = start;
  int err = 0;
  while (i < v.capacity && v.arenaLen - used >= maxPacket_) {
    ssize_t n = read(fd_, v.arena + used, maxPacket_);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN) err = errno;
      break;
    }
    if (n == 0) break;
    uint32_t len = static_cast<uint32_t>(n);
    v.off[i] = used;
    v.capLen[i] = len;
    v.origLen[i] = len;
    v.tsSec[i] = sec;
    v.tsNsec[i] = nsec;
    v.linkType[i] = kLinkTypeRaw;
    v.port[i] = port_;
    v.verdict[i] = 0;
    if (v.flags != nullptr) v.flags[i] = 0;
    used += len;
    rxBytes_ += len;
    i++;
  }
  uint32_t added = i - start;
  rxPackets_ += added;
  // An error after some packets is reported by the next call, which meets it again.
  if (err != 0 && added == 0) {
    std::string hint = err == EBADFD ? "the TUN interface was deleted; open it again" : "";
    return ThrowSys(env, err, "reading TUN device '" + name_ + "'", "read", hint);
  }
  return Napi::Number::New(env, added);
}

// writeBatch(slot, start, count) -> packets written: those whose verdict is
// FORWARD (0). A full queue (EAGAIN/ENOBUFS) ends the batch and the rest
// count as tx_full; a packet the kernel refuses (EINVAL: not IPv4/IPv6)
// counts as tx_errors and the batch goes on.
Napi::Value Tun::WriteBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckOpen(env, "writeBatch")) return env.Undefined();
  Views v;
  uint32_t start, end;
  if (!SendArgs(info, slots_, "Tun.writeBatch", &v, &start, &end)) return env.Undefined();
  uint32_t sent = 0;
  for (uint32_t i = start; i < end; i++) {
    if (v.verdict[i] != 0) continue;
    ssize_t n = write(fd_, v.arena + v.off[i], v.capLen[i]);
    if (n >= 0) {
      sent++;
      txBytes_ += static_cast<uint64_t>(n);
      continue;
    }
    int err = errno;
    if (err == EINTR) {
      i--;
      continue;
    }
    if (err == EAGAIN || err == ENOBUFS) {
      for (uint32_t j = i; j < end; j++) txFull_ += v.verdict[j] == 0 ? 1 : 0;
      break;
    }
    if (err == EBADF || err == EBADFD || err == EFAULT) {
      txPackets_ += sent;
      return ThrowSys(env, err, "writing TUN device '" + name_ + "'", "write",
                      err == EBADFD ? "the TUN interface was deleted; open it again" : "");
    }
    txErrors_++;
  }
  txPackets_ += sent;
  return Napi::Number::New(env, sent);
}

Napi::Value Tun::Name(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), name_); }

Napi::Value Tun::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("rx_packets", static_cast<double>(rxPackets_));
  o.Set("rx_bytes", static_cast<double>(rxBytes_));
  o.Set("tx_packets", static_cast<double>(txPackets_));
  o.Set("tx_bytes", static_cast<double>(txBytes_));
  o.Set("tx_errors", static_cast<double>(txErrors_));
  o.Set("tx_full", static_cast<double>(txFull_));
  return o;
}

Napi::Value Tun::Fd(const Napi::CallbackInfo& info) {
  if (!CheckOpen(info.Env(), "fd")) return info.Env().Undefined();
  return Napi::Number::New(info.Env(), fd_);
}

Napi::Value Tun::Start(const Napi::CallbackInfo& info) {
  if (!CheckOpen(info.Env(), "start")) return info.Env().Undefined();
  poller_.Start(info, fd_, "Tun");
  return info.Env().Undefined();
}

Napi::Value Tun::Stop(const Napi::CallbackInfo& info) {
  poller_.Stop();
  return info.Env().Undefined();
}

Napi::Value Tun::Close(const Napi::CallbackInfo& info) {
  CloseNow();
  return info.Env().Undefined();
}

}  // namespace pc
