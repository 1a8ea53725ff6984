// libpcap live capture: one pcap_dispatch() per batch, writing straight into a
// JS-owned arena (DESIGN.md "native/", STYLE.md 7).
#include <pcap/pcap.h>

#include <cerrno>
#include <cstring>

#include "common.h"
#include "handles.h"

namespace pc {

namespace {

// Most DLT_ values equal their LINKTYPE_ value (the number a pcap file and
// Batch.linkType carry); DLT_RAW is the one that differs on Linux (12 vs 101).
uint16_t LinkTypeOfDlt(int dlt) {
  if (dlt == DLT_RAW) return 101;
  return static_cast<uint16_t>(dlt);
}

// libpcap's negative activate() codes, as errno values and hints.
int ErrnoOfPcap(int code) {
  switch (code) {
    case PCAP_ERROR_NO_SUCH_DEVICE: return ENODEV;
    case PCAP_ERROR_PERM_DENIED:
    case PCAP_ERROR_PROMISC_PERM_DENIED: return EPERM;
    case PCAP_ERROR_IFACE_NOT_UP: return ENETDOWN;
    case PCAP_ERROR_RFMON_NOTSUP:
    default: return EIO;
  }
}

struct DispatchState {
  Views* v;
  pcap_t* p;
  uint32_t i;
  uint32_t used;
  uint32_t snaplen;
  uint16_t linkType;
  uint16_t port;
  bool nano;
  uint64_t bytes;
  uint32_t truncated;
};

void OnPacket(u_char* user, const struct pcap_pkthdr* h, const u_char* bytes) {
  DispatchState* d = reinterpret_cast<DispatchState*>(user);
  Views& v = *d->v;
  uint32_t i = d->i;
  if (i >= v.capacity) return;  // cannot happen: pcap_dispatch's count is the free slots
  uint32_t len = h->caplen;
  size_t free = v.arenaLen - d->used;
  if (len > free) len = static_cast<uint32_t>(free);  // only if the arena shrank below snaplen; never write past it
  memcpy(v.arena + d->used, bytes, len);
  v.off[i] = d->used;
  v.capLen[i] = len;
  v.origLen[i] = h->len;
  v.tsSec[i] = static_cast<double>(h->ts.tv_sec);
  v.tsNsec[i] = static_cast<uint32_t>(d->nano ? h->ts.tv_usec : h->ts.tv_usec * 1000);
  v.linkType[i] = d->linkType;
  v.port[i] = d->port;
  v.verdict[i] = 0;
  if (v.flags != nullptr) v.flags[i] = len < h->len ? kTruncated : 0;
  if (len < h->len) d->truncated++;
  d->used += len;
  d->i = i + 1;
  d->bytes += h->len;
  // A packet libpcap has handed us cannot be given back, so stop before the
  // next one might not fit: it stays in the kernel ring for the next batch.
  if (v.arenaLen - d->used < d->snaplen) pcap_breakloop(d->p);
}

}  // namespace

Napi::Object PcapLive::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(
      env, "PcapLive",
      {
          InstanceMethod<&PcapLive::Attach>("attach"),
          InstanceMethod<&PcapLive::Detach>("detach"),
          InstanceMethod<&PcapLive::Dispatch>("dispatch"),
          InstanceMethod<&PcapLive::Stats>("stats"),
          InstanceMethod<&PcapLive::LinkType>("linkType"),
          InstanceMethod<&PcapLive::Inject>("inject"),
          InstanceMethod<&PcapLive::InjectBatch>("injectBatch"),
          InstanceMethod<&PcapLive::SetNonblock>("setNonblock"),
          InstanceMethod<&PcapLive::Fd>("fd"),
          InstanceMethod<&PcapLive::Start>("start"),
          InstanceMethod<&PcapLive::Stop>("stop"),
          InstanceMethod<&PcapLive::Close>("close"),
      });
  exports.Set("PcapLive", ctor);
  return exports;
}

// new PcapLive(device, { snaplen, promisc, bufferSize, filter, immediate,
//                        timeoutMs, direction, nonblock, port })
PcapLive::PcapLive(const Napi::CallbackInfo& info) : Napi::ObjectWrap<PcapLive>(info) {
  Napi::Env env = info.Env();
  const char* ctx = "PcapLive";
  if (!ArgIfName(info, 0, ctx, false, &device_)) return;
  Napi::Object opts;
  uint32_t snaplen, bufferSize, timeoutMs, port;
  bool promisc, immediate, nonblock;
  std::string filter, direction;
  if (!OptObject(env, info[1], ctx, &opts) || !OptUint(env, opts, ctx, "snaplen", 65535, 64, 262144, &snaplen) ||
      !OptUint(env, opts, ctx, "bufferSize", 4 << 20, 65536, 1u << 30, &bufferSize) ||
      !OptUint(env, opts, ctx, "timeoutMs", 10, 0, 60000, &timeoutMs) ||
      !OptUint(env, opts, ctx, "port", 0, 0, 65535, &port) || !OptBool(env, opts, ctx, "promisc", false, &promisc) ||
      !OptBool(env, opts, ctx, "immediate", true, &immediate) ||
      !OptBool(env, opts, ctx, "nonblock", true, &nonblock) || !OptString(env, opts, ctx, "filter", "", &filter) ||
      !OptString(env, opts, ctx, "direction", "inout", &direction))
    return;
  pcap_direction_t dir;
  if (direction == "inout") {
    dir = PCAP_D_INOUT;
  } else if (direction == "in") {
    dir = PCAP_D_IN;
  } else if (direction == "out") {
    dir = PCAP_D_OUT;
  } else {
    ThrowRange(env, "PcapLive: option direction must be 'in', 'out' or 'inout' (got '" + direction + "')");
    return;
  }
  port_ = static_cast<uint16_t>(port);
  std::string what = "libpcap capture on '" + device_ + "'";

  char errbuf[PCAP_ERRBUF_SIZE] = {0};
  p_ = pcap_create(device_.c_str(), errbuf);
  if (p_ == nullptr) {
    ThrowSys(env, EIO, what, "pcap_create", std::string("libpcap: ") + errbuf);
    return;
  }
  pcap_set_snaplen(p_, static_cast<int>(snaplen));
  pcap_set_promisc(p_, promisc ? 1 : 0);
  pcap_set_buffer_size(p_, static_cast<int>(bufferSize));
  pcap_set_timeout(p_, static_cast<int>(timeoutMs));
  // Immediate mode delivers each packet as it arrives (libpcap then uses
  // TPACKET_V2); without it packets wait until a ring block fills or the
  // timeout expires, which batches better but adds up to timeoutMs latency.
  pcap_set_immediate_mode(p_, immediate ? 1 : 0);
  nano_ = pcap_set_tstamp_precision(p_, PCAP_TSTAMP_PRECISION_NANO) == 0;
  int r = pcap_activate(p_);
  if (r < 0) {
    int err = ErrnoOfPcap(r);
    std::string hint = DefaultHint(err, "CAP_NET_RAW", device_);
    std::string detail = pcap_geterr(p_);
    if (!detail.empty()) hint += (hint.empty() ? "" : " ") + std::string("(libpcap: ") + detail + ")";
    CloseNow();
    ThrowSys(env, err, what, "pcap_activate", hint);
    return;
  }
  nano_ = nano_ && pcap_get_tstamp_precision(p_) == PCAP_TSTAMP_PRECISION_NANO;
  snaplen_ = static_cast<uint32_t>(pcap_snapshot(p_));
  linkType_ = LinkTypeOfDlt(pcap_datalink(p_));
  if (dir != PCAP_D_INOUT && pcap_setdirection(p_, dir) != 0) {
    std::string detail = pcap_geterr(p_);
    CloseNow();
    ThrowSys(env, EOPNOTSUPP, what, "pcap_setdirection", "direction '" + direction + "' is not supported here (libpcap: " + detail + ")");
    return;
  }
  if (!filter.empty()) {
    struct bpf_program prog;
    if (pcap_compile(p_, &prog, filter.c_str(), 1, PCAP_NETMASK_UNKNOWN) != 0) {
      std::string detail = pcap_geterr(p_);
      CloseNow();
      ThrowSys(env, EINVAL, what, "pcap_compile",
               "the BPF filter '" + filter + "' does not compile: " + detail + " (syntax: man 7 pcap-filter)");
      return;
    }
    r = pcap_setfilter(p_, &prog);
    pcap_freecode(&prog);
    if (r != 0) {
      std::string detail = pcap_geterr(p_);
      CloseNow();
      ThrowSys(env, EINVAL, what, "pcap_setfilter", "the kernel refused the BPF filter '" + filter + "': " + detail);
      return;
    }
  }
  if (nonblock && pcap_setnonblock(p_, 1, errbuf) != 0) {
    CloseNow();
    ThrowSys(env, EIO, what, "pcap_setnonblock", std::string("libpcap: ") + errbuf);
    return;
  }
  fd_ = pcap_get_selectable_fd(p_);
}

PcapLive::~PcapLive() { CloseNow(); }

void PcapLive::CloseNow() {
  poller_.Stop();  // before the fd goes away: libuv must not poll a closed fd
  slots_.Clear();
  if (p_ != nullptr) pcap_close(p_);
  p_ = nullptr;
  fd_ = -1;
}

bool PcapLive::CheckOpen(Napi::Env env, const char* method) {
  if (p_ != nullptr) return true;
  Napi::Error::New(env, "PcapLive." + std::string(method) + ": the capture on '" + device_ + "' is closed")
      .ThrowAsJavaScriptException();
  return false;
}

Napi::Value PcapLive::Attach(const Napi::CallbackInfo& info) {
  if (!CheckOpen(info.Env(), "attach")) return info.Env().Undefined();
  return slots_.Attach(info, "PcapLive", snaplen_, "open with a smaller snaplen");
}

Napi::Value PcapLive::Detach(const Napi::CallbackInfo& info) { return slots_.Detach(info, "PcapLive.detach"); }

// dispatch(slot, startCount, startUsed) -> packets added. Exactly one
// pcap_dispatch(): with a non-blocking handle it returns what the kernel
// holds now (possibly 0).
Napi::Value PcapLive::Dispatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckOpen(env, "dispatch")) return env.Undefined();
  Views v;
  uint32_t start, used;
  if (!RecvArgs(info, slots_, "PcapLive.dispatch", &v, &start, &used)) return env.Undefined();
  if (start >= v.capacity || v.arenaLen - used < snaplen_) return Napi::Number::New(env, 0);
  DispatchState d{&v, p_, start, used, snaplen_, linkType_, port_, nano_, 0, 0};
  int r = pcap_dispatch(p_, static_cast<int>(v.capacity - start), OnPacket, reinterpret_cast<u_char*>(&d));
  uint32_t added = d.i - start;
  rxPackets_ += added;
  rxBytes_ += d.bytes;
  rxTruncated_ += d.truncated;
  // PCAP_ERROR_BREAK is our own pcap_breakloop (arena nearly full).
  if (r == PCAP_ERROR && added == 0) {
    return ThrowSys(env, EIO, "libpcap capture on '" + device_ + "'", "pcap_dispatch",
                    std::string("libpcap: ") + pcap_geterr(p_));
  }
  return Napi::Number::New(env, added);
}

Napi::Value PcapLive::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckOpen(env, "stats")) return env.Undefined();
  struct pcap_stat ps;
  if (pcap_stats(p_, &ps) != 0) {
    return ThrowSys(env, EIO, "libpcap statistics of '" + device_ + "'", "pcap_stats", std::string("libpcap: ") + pcap_geterr(p_));
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("ps_recv", static_cast<double>(ps.ps_recv));
  o.Set("ps_drop", static_cast<double>(ps.ps_drop));
  o.Set("ps_ifdrop", static_cast<double>(ps.ps_ifdrop));
  o.Set("rx_packets", static_cast<double>(rxPackets_));
  o.Set("rx_bytes", static_cast<double>(rxBytes_));
  o.Set("rx_truncated", static_cast<double>(rxTruncated_));
  o.Set("tx_packets", static_cast<double>(txPackets_));
  o.Set("tx_bytes", static_cast<double>(txBytes_));
  o.Set("tx_errors", static_cast<double>(txErrors_));
  o.Set("tx_full", static_cast<double>(txFull_));
  return o;
}

Napi::Value PcapLive::LinkType(const Napi::CallbackInfo& info) {
  if (!CheckOpen(info.Env(), "linkType")) return info.Env().Undefined();
  return Napi::Number::New(info.Env(), linkType_);
}

// inject(buf, off, len) -> bytes sent
Napi::Value PcapLive::Inject(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* ctx = "PcapLive.inject";
  if (!CheckOpen(env, "inject")) return env.Undefined();
  if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    return ThrowType(env, std::string(ctx) + ": buf must be a Buffer or Uint8Array");
  }
  Napi::Uint8Array buf = info[0].As<Napi::Uint8Array>();
  size_t blen = buf.ElementLength();
  uint32_t off, len;
  if (!ArgUint(info, 1, ctx, "off", 0, static_cast<uint32_t>(blen), &off)) return env.Undefined();
  if (!ArgUint(info, 2, ctx, "len", 1, static_cast<uint32_t>(blen - off), &len)) return env.Undefined();
  int r = pcap_inject(p_, buf.Data() + off, len);
  if (r < 0) {
    txErrors_++;
    return ThrowSys(env, EIO, "libpcap inject on '" + device_ + "'", "pcap_inject", std::string("libpcap: ") + pcap_geterr(p_));
  }
  txPackets_++;
  txBytes_ += static_cast<uint64_t>(r);
  return Napi::Number::New(env, r);
}

// injectBatch(slot, start, count) -> packets sent. Sends the packets whose
// verdict is FORWARD (0); a full socket buffer ends the batch (the rest
// count as tx_full), other per-packet failures count as tx_errors.
Napi::Value PcapLive::InjectBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckOpen(env, "injectBatch")) return env.Undefined();
  Views v;
  uint32_t start, end;
  if (!SendArgs(info, slots_, "PcapLive.injectBatch", &v, &start, &end)) return env.Undefined();
  uint32_t sent = 0;
  for (uint32_t i = start; i < end; i++) {
    if (v.verdict[i] != 0) continue;
    errno = 0;
    int r = pcap_inject(p_, v.arena + v.off[i], v.capLen[i]);
    if (r >= 0) {
      sent++;
      txBytes_ += static_cast<uint64_t>(r);
      continue;
    }
    if (errno == EAGAIN || errno == ENOBUFS) {
      for (uint32_t j = i; j < end; j++) txFull_ += v.verdict[j] == 0 ? 1 : 0;
      break;
    }
    txErrors_++;
  }
  txPackets_ += sent;
  return Napi::Number::New(env, sent);
}

Napi::Value PcapLive::SetNonblock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckOpen(env, "setNonblock")) return env.Undefined();
  if (!info[0].IsBoolean()) return ThrowType(env, "PcapLive.setNonblock(on): on must be a boolean");
  char errbuf[PCAP_ERRBUF_SIZE] = {0};
  if (pcap_setnonblock(p_, info[0].As<Napi::Boolean>().Value() ? 1 : 0, errbuf) != 0) {
    return ThrowSys(env, EIO, "libpcap capture on '" + device_ + "'", "pcap_setnonblock", std::string("libpcap: ") + errbuf);
  }
  return env.Undefined();
}

Napi::Value PcapLive::Fd(const Napi::CallbackInfo& info) {
  if (!CheckOpen(info.Env(), "fd")) return info.Env().Undefined();
  return Napi::Number::New(info.Env(), fd_);
}

Napi::Value PcapLive::Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckOpen(env, "start")) return env.Undefined();
  if (fd_ < 0) return ThrowSys(env, EOPNOTSUPP, "libpcap capture on '" + device_ + "'", "pcap_get_selectable_fd", "this device has no pollable fd");
  poller_.Start(info, fd_, "PcapLive");
  return env.Undefined();
}

Napi::Value PcapLive::Stop(const Napi::CallbackInfo& info) {
  poller_.Stop();
  return info.Env().Undefined();
}

Napi::Value PcapLive::Close(const Napi::CallbackInfo& info) {
  CloseNow();
  return info.Env().Undefined();
}

}  // namespace pc
