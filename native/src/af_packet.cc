// AF_PACKET with a TPACKET_V3 receive ring (packet(7), Documentation/
// networking/packet_mmap.rst): the kernel writes frames into mmap'ed blocks
// and hands a block over (TP_STATUS_USER) when it is full or its retire
// timeout expires; recvBatch() copies the frames of retired blocks into the
// JS arena and gives each finished block back (TP_STATUS_KERNEL). Transmit is
// sendmmsg() of the FORWARD packets of a batch, up to 64 per system call.
//
// Checksums: a packet sent by a local socket over veth (or any device with
// TX checksum offload) is handed to the ring with CHECKSUM_PARTIAL: its L4
// checksum field holds only the pseudo-header sum and tp_status carries
// TP_STATUS_CSUMNOTREADY. The optional flags array records that
// (kCsumNotReady); whoever forwards such a packet must complete the checksum
// first (RFC 1071 over the L4 segment), or the next hop drops it.
//
// vnetHdr (PACKET_VNET_HDR): each frame in the ring is preceded by a struct
// virtio_net_hdr (10 bytes) describing its offloads: a partial checksum
// (NEEDS_CSUM, csum_start/csum_offset) and GSO (gso_type, gso_size): a TCP
// super-frame of up to 64 KiB that the kernel would otherwise have to
// segment before we saw it. recvBatch() copies the header in front of the
// frame (off[i] points at the frame, the header sits at off[i] - 10);
// sendBatch() sends the 10 bytes in front of each frame as its header, so
// the kernel keeps the offloads (segments the super-frame, completes the
// checksum) on transmit. virtio_net.h fields are little-endian (vio_le()
// in the kernel is true for packet sockets on little-endian hosts).
#include <arpa/inet.h>
#include <net/if_arp.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common.h"
#include "handles.h"

#ifndef ARPHRD_RAWIP
#define ARPHRD_RAWIP 519  // linux/if_arp.h; glibc's net/if_arp.h may lack it
#endif

namespace pc {

namespace {

constexpr uint16_t kLinkTypeEthernet = 1;
constexpr uint16_t kLinkTypeRaw = 101;
constexpr unsigned kMmsgBatch = 64;
// struct virtio_net_hdr of <linux/virtio_net.h>, which C++ cannot include
// (a member is named `class`). Little-endian fields.
struct virtio_net_hdr {
  uint8_t flags;
  uint8_t gso_type;
  uint16_t hdr_len;
  uint16_t gso_size;
  uint16_t csum_start;
  uint16_t csum_offset;
};
constexpr uint8_t VIRTIO_NET_HDR_F_NEEDS_CSUM = 1;
constexpr uint8_t VIRTIO_NET_HDR_GSO_NONE = 0;
constexpr uint32_t kVnetLen = sizeof(struct virtio_net_hdr);  // 10
static_assert(kVnetLen == 10, "virtio_net_hdr is 10 bytes");

struct FanoutMode {
  const char* name;
  int mode;
};
const FanoutMode kFanoutModes[] = {
    {"hash", PACKET_FANOUT_HASH}, {"lb", PACKET_FANOUT_LB},   {"cpu", PACKET_FANOUT_CPU},
    {"rollover", PACKET_FANOUT_ROLLOVER}, {"random", PACKET_FANOUT_RND}, {"qm", PACKET_FANOUT_QM},
};

// True when the copy keeps less than the frame (the arena was too small).
inline bool cap_is_cut(uint32_t need, uint32_t snap, bool vlan) { return need < snap + (vlan ? 4u : 0u); }

inline void PutBe16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}

}  // namespace

Napi::Object AfPacket::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(env, "AfPacket",
                                    {
                                        InstanceMethod<&AfPacket::Attach>("attach"),
                                        InstanceMethod<&AfPacket::Detach>("detach"),
                                        InstanceMethod<&AfPacket::RecvBatch>("recvBatch"),
                                        InstanceMethod<&AfPacket::SendBatch>("sendBatch"),
                                        InstanceMethod<&AfPacket::Stats>("stats"),
                                        InstanceMethod<&AfPacket::LinkType>("linkType"),
                                        InstanceMethod<&AfPacket::Features>("features"),
                                        InstanceMethod<&AfPacket::Fd>("fd"),
                                        InstanceMethod<&AfPacket::Start>("start"),
                                        InstanceMethod<&AfPacket::Stop>("stop"),
                                        InstanceMethod<&AfPacket::Close>("close"),
                                    });
  exports.Set("AfPacket", ctor);
  return exports;
}

// new AfPacket(ifname, { ringBlocks, blockSize, frameSize, blockTimeoutMs,
//   fanoutGroup, fanoutMode, qdiscBypass, ignoreOutgoing, promisc, rx, port })
AfPacket::AfPacket(const Napi::CallbackInfo& info) : Napi::ObjectWrap<AfPacket>(info) {
  Napi::Env env = info.Env();
  const char* ctx = "AfPacket";
  if (!ArgIfName(info, 0, ctx, false, &ifname_)) return;
  Napi::Object opts;
  uint32_t ringBlocks, blockSize, frameSize, blockTimeoutMs, fanoutGroup, port;
  bool qdiscBypass, ignoreOutgoing, promisc, rx, vnetHdr;
  std::string fanoutMode;
  if (!OptObject(env, info[1], ctx, &opts) || !OptUint(env, opts, ctx, "ringBlocks", 16, 1, 65536, &ringBlocks) ||
      !OptUint(env, opts, ctx, "blockSize", 1u << 18, 4096, 1u << 30, &blockSize) ||
      !OptUint(env, opts, ctx, "frameSize", 2048, TPACKET_ALIGNMENT, 1u << 30, &frameSize) ||
      !OptUint(env, opts, ctx, "blockTimeoutMs", 1, 0, 60000, &blockTimeoutMs) ||
      !OptUint(env, opts, ctx, "fanoutGroup", 0, 0, 65535, &fanoutGroup) ||
      !OptUint(env, opts, ctx, "port", 0, 0, 65535, &port) ||
      !OptString(env, opts, ctx, "fanoutMode", "", &fanoutMode) ||
      !OptBool(env, opts, ctx, "qdiscBypass", false, &qdiscBypass) ||
      !OptBool(env, opts, ctx, "ignoreOutgoing", true, &ignoreOutgoing) ||
      !OptBool(env, opts, ctx, "promisc", false, &promisc) || !OptBool(env, opts, ctx, "rx", true, &rx) ||
      !OptBool(env, opts, ctx, "vnetHdr", false, &vnetHdr))
    return;
  long page = sysconf(_SC_PAGESIZE);
  // The kernel allocates each block as 2^n pages (packet_set_ring()).
  if (blockSize % page != 0 || (blockSize & (blockSize - 1)) != 0) {
    ThrowRange(env, "AfPacket: option blockSize must be a power of two and a multiple of the page size " +
                        std::to_string(page) + " (got " + std::to_string(blockSize) + ")");
    return;
  }
  if (frameSize % TPACKET_ALIGNMENT != 0 || frameSize < TPACKET3_HDRLEN || frameSize > blockSize) {
    ThrowRange(env, "AfPacket: option frameSize must be a multiple of " + std::to_string(TPACKET_ALIGNMENT) + " from " +
                        std::to_string(TPACKET3_HDRLEN) + " to blockSize (got " + std::to_string(frameSize) + ")");
    return;
  }
  if (static_cast<uint64_t>(ringBlocks) * blockSize > (1ull << 32)) {
    ThrowRange(env, "AfPacket: ringBlocks * blockSize must not exceed 4 GiB");
    return;
  }
  int fanoutModeNum = -1;
  if (!fanoutMode.empty()) {
    for (const auto& m : kFanoutModes)
      if (fanoutMode == m.name) fanoutModeNum = m.mode;
    if (fanoutModeNum < 0) {
      ThrowRange(env, "AfPacket: option fanoutMode must be one of hash, lb, cpu, rollover, random, qm (got '" + fanoutMode + "')");
      return;
    }
  }
  port_ = static_cast<uint16_t>(port);
  std::string what = "AF_PACKET socket on " + ifname_;

  unsigned idx = if_nametoindex(ifname_.c_str());
  if (idx == 0) {
    int err = errno == 0 ? ENODEV : errno;
    ThrowSys(env, err, what, "if_nametoindex", DefaultHint(err, "CAP_NET_RAW", ifname_));
    return;
  }
  ifindex_ = static_cast<int>(idx);
  // Protocol 0 until bind(): an ETH_P_ALL socket would queue packets of
  // every interface before it is bound and before its ring exists.
  fd_ = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) {
    int err = errno;
    ThrowSys(env, err, what, "socket", DefaultHint(err, "CAP_NET_RAW", ifname_));
    return;
  }
  auto fail = [&](const char* syscall, const std::string& hint) {
    int err = errno;
    CloseNow();
    ThrowSys(env, err, what, syscall, hint.empty() ? DefaultHint(err, "CAP_NET_RAW", ifname_) : hint);
  };

  // Link type from the hardware type: Ethernet-framed or raw IP.
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  memcpy(ifr.ifr_name, ifname_.data(), ifname_.size());
  if (ioctl(fd_, SIOCGIFHWADDR, &ifr) < 0) {
      fail("ioctl(SIOCGIFHWADDR)", "");
      return;
    }
  switch (ifr.ifr_hwaddr.sa_family) {
    case ARPHRD_ETHER:
    case ARPHRD_LOOPBACK: linkType_ = kLinkTypeEthernet; break;
    case ARPHRD_NONE:
    case ARPHRD_RAWIP: linkType_ = kLinkTypeRaw; break;
    default:
      errno = EPROTONOSUPPORT;
      {
      fail("ioctl(SIOCGIFHWADDR)", "hardware type " + std::to_string(ifr.ifr_hwaddr.sa_family) +
                                              " is not supported (Ethernet, loopback and raw-IP devices are)");
      return;
    }
  }

  int version = TPACKET_V3;
  if (setsockopt(fd_, SOL_PACKET, PACKET_VERSION, &version, sizeof version) < 0)
    {
      fail("setsockopt(PACKET_VERSION)", "this kernel lacks TPACKET_V3 (Linux >= 3.2 needed)");
      return;
    }

  if (vnetHdr) {
    // Before the ring: the kernel refuses PACKET_VNET_HDR once a ring exists (EBUSY).
    int one = 1;
    if (setsockopt(fd_, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) < 0) {
      fail("setsockopt(PACKET_VNET_HDR)", "");
      return;
    }
    vnetHdr_ = true;
  }

  if (rx) {
    struct tpacket_req3 req;
    memset(&req, 0, sizeof req);
    req.tp_block_size = blockSize;
    req.tp_block_nr = ringBlocks;
    req.tp_frame_size = frameSize;
    req.tp_frame_nr = static_cast<unsigned>((static_cast<uint64_t>(blockSize) / frameSize) * ringBlocks);
    req.tp_retire_blk_tov = blockTimeoutMs;
    req.tp_sizeof_priv = 0;
    req.tp_feature_req_word = 0;
    if (setsockopt(fd_, SOL_PACKET, PACKET_RX_RING, &req, sizeof req) < 0) {
      fail("setsockopt(PACKET_RX_RING)",
           errno == EINVAL ? "the kernel refused the ring geometry (blockSize " + std::to_string(blockSize) +
                                 ", ringBlocks " + std::to_string(ringBlocks) + ", frameSize " +
                                 std::to_string(frameSize) + "); try a smaller blockSize"
                           : "");
      return;
    }
    ringSize_ = static_cast<size_t>(blockSize) * ringBlocks;
    void* m = mmap(nullptr, ringSize_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, 0);
    if (m == MAP_FAILED) {
      ringSize_ = 0;
      {
      fail("mmap", "");
      return;
    }
    }
    ring_ = static_cast<uint8_t*>(m);
    blockSize_ = blockSize;
    blockNr_ = ringBlocks;
    // V3 frames are variable-sized; one can fill a block less its header.
    snaplen_ = blockSize - 64;
  }

  if (ignoreOutgoing) {
    int one = 1;
    if (setsockopt(fd_, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) == 0) {
      ignoreOutgoing_ = true;
    } else if (errno == ENOPROTOOPT || errno == EINVAL) {
      skipOutgoing_ = true;  // Linux < 4.20: filter while walking the ring
    } else {
      {
      fail("setsockopt(PACKET_IGNORE_OUTGOING)", "");
      return;
    }
    }
  }
  if (qdiscBypass) {
    // Transmit straight to the driver, skipping the qdisc: faster, but a
    // full device queue drops the packet instead of queueing it.
    int one = 1;
    if (setsockopt(fd_, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one) < 0)
      {
      fail("setsockopt(PACKET_QDISC_BYPASS)", "");
      return;
    }
    qdiscBypass_ = true;
  }

  struct sockaddr_ll sll;
  memset(&sll, 0, sizeof sll);
  sll.sll_family = AF_PACKET;
  sll.sll_protocol = rx ? htons(ETH_P_ALL) : 0;  // protocol 0: transmit only, nothing queued
  sll.sll_ifindex = ifindex_;
  if (bind(fd_, reinterpret_cast<struct sockaddr*>(&sll), sizeof sll) < 0) {
      fail("bind", "");
      return;
    }

  if (promisc) {
    struct packet_mreq mr;
    memset(&mr, 0, sizeof mr);
    mr.mr_ifindex = ifindex_;
    mr.mr_type = PACKET_MR_PROMISC;
    if (setsockopt(fd_, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr) < 0)
      {
      fail("setsockopt(PACKET_ADD_MEMBERSHIP)", "");
      return;
    }
  }
  if (fanoutModeNum >= 0) {
    int arg = static_cast<int>(fanoutGroup) | (fanoutModeNum << 16);
    if (setsockopt(fd_, SOL_PACKET, PACKET_FANOUT, &arg, sizeof arg) < 0) {
      {
      fail("setsockopt(PACKET_FANOUT)",
                  errno == EINVAL ? "fanout group " + std::to_string(fanoutGroup) +
                                        " exists with another mode, or this socket has no protocol bound"
                                  : "");
      return;
    }
    }
    fanout_ = true;
  }
}

AfPacket::~AfPacket() { CloseNow(); }

void AfPacket::CloseNow() {
  poller_.Stop();
  slots_.Clear();
  if (ring_ != nullptr) munmap(ring_, ringSize_);
  ring_ = nullptr;
  ringSize_ = 0;
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

bool AfPacket::CheckOpen(Napi::Env env, const char* method) {
  if (fd_ >= 0) return true;
  Napi::Error::New(env, "AfPacket." + std::string(method) + ": the AF_PACKET socket on " + ifname_ + " is closed")
      .ThrowAsJavaScriptException();
  return false;
}

Napi::Value AfPacket::Attach(const Napi::CallbackInfo& info) {
  if (!CheckOpen(info.Env(), "attach")) return info.Env().Undefined();
  // A frame larger than the whole arena is cut to fit (kTruncated), so any
  // arena works; 64 bytes keeps the smallest Ethernet frame whole.
  return slots_.Attach(info, "AfPacket", 64, "attach a batch of at least 64 bytes");
}

Napi::Value AfPacket::Detach(const Napi::CallbackInfo& info) { return slots_.Detach(info, "AfPacket.detach"); }

// recvBatch(slot, startCount, startUsed) -> packets added. Walks the retired
// blocks in ring order; stops when a block still belongs to the kernel or
// when the batch is full, remembering where it stopped inside a block.
Napi::Value AfPacket::RecvBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckOpen(env, "recvBatch")) return env.Undefined();
  if (ring_ == nullptr) return ThrowRange(env, "AfPacket.recvBatch: the socket on " + ifname_ + " was opened with rx: false");
  Views v;
  uint32_t start, used;
  if (!RecvArgs(info, slots_, "AfPacket.recvBatch", &v, &start, &used)) return env.Undefined();
  uint32_t i = start;
  const size_t hdrToSll = TPACKET_ALIGN(sizeof(struct tpacket3_hdr));
  while (i < v.capacity) {
    auto* bd = reinterpret_cast<struct tpacket_block_desc*>(ring_ + static_cast<size_t>(blk_) * blockSize_);
    if (pktLeft_ < 0) {
      uint32_t status = __atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE);
      if ((status & TP_STATUS_USER) == 0) break;
      pktLeft_ = bd->hdr.bh1.num_pkts;
      pkt_ = reinterpret_cast<uint8_t*>(bd) + bd->hdr.bh1.offset_to_first_pkt;
    }
    bool full = false;
    while (pktLeft_ > 0) {
      auto* h = reinterpret_cast<struct tpacket3_hdr*>(pkt_);
      uint32_t snap = h->tp_snaplen;
      uint32_t wire = h->tp_len;
      const uint8_t* frame = pkt_ + h->tp_mac;
      // The kernel never writes past its block; check anyway rather than copy garbage.
      if (static_cast<size_t>(frame - reinterpret_cast<uint8_t*>(bd)) + snap > blockSize_) snap = 0;
      bool skip = false;
      if (skipOutgoing_) {
        auto* sll = reinterpret_cast<const struct sockaddr_ll*>(pkt_ + hdrToSll);
        skip = sll->sll_pkttype == PACKET_OUTGOING;
      }
      if (!skip) {
        // 802.1Q tag the driver or veth moved into metadata: write it back
        // so the frame in the arena is what was on the wire.
        bool vlan = (h->tp_status & TP_STATUS_VLAN_VALID) != 0 && linkType_ == kLinkTypeEthernet && snap >= 12;
        uint32_t need = snap + (vlan ? 4 : 0);
        uint32_t pre = vnetHdr_ ? kVnetLen : 0;
        size_t free = v.arenaLen - used;
        if (need + pre > free) {
          if (used > 0 || free < 64 + pre) {
            full = true;  // leave it in the ring for the next batch
            break;
          }
          need = static_cast<uint32_t>(free - pre);  // larger than a whole empty arena: keep what fits
        }
        bool gso = false;
        if (pre != 0) {
          // The kernel wrote the header just before the frame (tpacket_rcv()).
          struct virtio_net_hdr vh;
          memcpy(&vh, frame - kVnetLen, kVnetLen);
          if (cap_is_cut(need, snap, vlan)) {
            // A cut frame cannot be re-segmented or checksummed by the kernel.
            vh.gso_type = VIRTIO_NET_HDR_GSO_NONE;
            vh.gso_size = 0;
          }
          if (vlan && (vh.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM)) vh.csum_start = static_cast<uint16_t>(vh.csum_start + 4);
          if (vlan && vh.hdr_len != 0) vh.hdr_len = static_cast<uint16_t>(vh.hdr_len + 4);
          gso = vh.gso_type != VIRTIO_NET_HDR_GSO_NONE;
          memcpy(v.arena + used, &vh, kVnetLen);
          used += kVnetLen;
          if (gso) rxGso_++;
        }
        uint8_t* dst = v.arena + used;
        uint32_t cap;
        if (vlan) {
          memcpy(dst, frame, 12);
          uint16_t tpid = (h->tp_status & TP_STATUS_VLAN_TPID_VALID) && h->hv1.tp_vlan_tpid != 0 ? h->hv1.tp_vlan_tpid : ETH_P_8021Q;
          PutBe16(dst + 12, tpid);
          PutBe16(dst + 14, static_cast<uint16_t>(h->hv1.tp_vlan_tci));
          memcpy(dst + 16, frame + 12, need - 16);
          cap = need;
          wire += 4;
        } else {
          memcpy(dst, frame, need);
          cap = need;
        }
        v.off[i] = used;
        v.capLen[i] = cap;
        v.origLen[i] = wire;
        v.tsSec[i] = static_cast<double>(h->tp_sec);
        v.tsNsec[i] = h->tp_nsec;
        v.linkType[i] = linkType_;
        v.port[i] = port_;
        v.verdict[i] = 0;
        if (cap < wire) rxTruncated_++;
        if (v.flags != nullptr) {
          uint8_t f = 0;
          if (h->tp_status & TP_STATUS_CSUMNOTREADY) f |= kCsumNotReady;
          if (h->tp_status & TP_STATUS_CSUM_VALID) f |= kCsumValid;
          if (cap < wire) f |= kTruncated;
          if (vlan) f |= kVlanRestored;
          if (gso) f |= kGso;
          v.flags[i] = f;
        }
        used += cap;
        rxBytes_ += wire;
        i++;
      } else {
        rxOutgoingSkipped_++;
      }
      pkt_ += h->tp_next_offset;
      pktLeft_--;
      if (i >= v.capacity) break;
    }
    if (pktLeft_ == 0) {
      // Give the block back; the release store orders our reads before it.
      __atomic_store_n(&bd->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
      blk_ = (blk_ + 1) % blockNr_;
      pktLeft_ = -1;
      pkt_ = nullptr;
    }
    if (full) break;
  }
  uint32_t added = i - start;
  rxPackets_ += added;
  return Napi::Number::New(env, added);
}

// sendBatch(slot, start, count) -> packets sent: the FORWARD (0) packets of
// the range, through the socket's interface, up to 64 per sendmmsg(). A full
// socket or device queue (EAGAIN/ENOBUFS) ends the batch and the rest count
// as tx_full; a frame the kernel refuses (EMSGSIZE over the MTU, EINVAL)
// counts as tx_errors and the batch goes on.
Napi::Value AfPacket::SendBatch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckOpen(env, "sendBatch")) return env.Undefined();
  Views v;
  uint32_t start, end;
  if (!SendArgs(info, slots_, "AfPacket.sendBatch", &v, &start, &end)) return env.Undefined();
  struct mmsghdr msgs[kMmsgBatch];
  struct iovec iovs[kMmsgBatch];
  uint32_t sent = 0;
  uint32_t i = start;
  bool stop = false;
  while (i < end && !stop) {
    unsigned n = 0;
    while (i < end && n < kMmsgBatch) {
      if (v.verdict[i] == 0) {
        if (vnetHdr_ && v.off[i] < kVnetLen) {
          txNoVnetRoom_++;  // no header in front of this frame: not ours to guess
          txErrors_++;
          i++;
          continue;
        }
        uint32_t pre = vnetHdr_ ? kVnetLen : 0;
        iovs[n].iov_base = v.arena + v.off[i] - pre;
        iovs[n].iov_len = v.capLen[i] + pre;
        memset(&msgs[n].msg_hdr, 0, sizeof msgs[n].msg_hdr);
        msgs[n].msg_hdr.msg_iov = &iovs[n];
        msgs[n].msg_hdr.msg_iovlen = 1;
        msgs[n].msg_len = 0;
        n++;
      }
      i++;
    }
    unsigned k = 0;
    while (k < n) {
      int r = sendmmsg(fd_, msgs + k, n - k, MSG_DONTWAIT);
      if (r > 0) {
        for (int j = 0; j < r; j++) txBytes_ += msgs[k + j].msg_len - (vnetHdr_ ? kVnetLen : 0);
        sent += static_cast<uint32_t>(r);
        k += static_cast<unsigned>(r);
        continue;
      }
      int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == ENOBUFS) {
        txFull_ += n - k;
        for (uint32_t j = i; j < end; j++) txFull_ += v.verdict[j] == 0 ? 1 : 0;
        stop = true;
        break;
      }
      if (err == EBADF || err == ENXIO || err == ENETDOWN || err == ENODEV) {
        txPackets_ += sent;
        return ThrowSys(env, err, "transmitting on " + ifname_, "sendmmsg", DefaultHint(err, "CAP_NET_RAW", ifname_));
      }
      txErrors_++;  // this one frame is refused; go on with the next
      k++;
    }
  }
  txPackets_ += sent;
  return Napi::Number::New(env, sent);
}

bool AfPacket::ReadKernelStats(Napi::Env env) {
  // PACKET_STATISTICS resets the kernel's counters on every read, so they
  // are accumulated here.
  struct tpacket_stats_v3 st;
  socklen_t len = sizeof st;
  memset(&st, 0, sizeof st);
  if (getsockopt(fd_, SOL_PACKET, PACKET_STATISTICS, &st, &len) < 0) {
    ThrowSys(env, errno, "AF_PACKET statistics of " + ifname_, "getsockopt(PACKET_STATISTICS)", "");
    return false;
  }
  kPackets_ += st.tp_packets;
  kDrops_ += st.tp_drops;
  kFreeze_ += st.tp_freeze_q_cnt;
  return true;
}

Napi::Value AfPacket::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckOpen(env, "stats")) return env.Undefined();
  if (!ReadKernelStats(env)) return env.Undefined();
  Napi::Object o = Napi::Object::New(env);
  o.Set("tp_packets", static_cast<double>(kPackets_));
  o.Set("tp_drops", static_cast<double>(kDrops_));
  o.Set("tp_freeze_q_cnt", static_cast<double>(kFreeze_));
  o.Set("rx_packets", static_cast<double>(rxPackets_));
  o.Set("rx_bytes", static_cast<double>(rxBytes_));
  o.Set("rx_truncated", static_cast<double>(rxTruncated_));
  o.Set("rx_outgoing_skipped", static_cast<double>(rxOutgoingSkipped_));
  o.Set("rx_gso", static_cast<double>(rxGso_));
  o.Set("tx_packets", static_cast<double>(txPackets_));
  o.Set("tx_bytes", static_cast<double>(txBytes_));
  o.Set("tx_errors", static_cast<double>(txErrors_));
  o.Set("tx_full", static_cast<double>(txFull_));
  o.Set("tx_no_vnet_room", static_cast<double>(txNoVnetRoom_));
  return o;
}

Napi::Value AfPacket::LinkType(const Napi::CallbackInfo& info) {
  if (!CheckOpen(info.Env(), "linkType")) return info.Env().Undefined();
  return Napi::Number::New(info.Env(), linkType_);
}

Napi::Value AfPacket::Features(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("ignoreOutgoing", ignoreOutgoing_ || skipOutgoing_);
  o.Set("ignoreOutgoingInKernel", ignoreOutgoing_);
  o.Set("qdiscBypass", qdiscBypass_);
  o.Set("fanout", fanout_);
  o.Set("vnetHdr", vnetHdr_);
  o.Set("rx", ring_ != nullptr);
  o.Set("ifindex", ifindex_);
  o.Set("blockSize", blockSize_);
  o.Set("ringBlocks", blockNr_);
  return o;
}

Napi::Value AfPacket::Fd(const Napi::CallbackInfo& info) {
  if (!CheckOpen(info.Env(), "fd")) return info.Env().Undefined();
  return Napi::Number::New(info.Env(), fd_);
}

Napi::Value AfPacket::Start(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckOpen(env, "start")) return env.Undefined();
  if (ring_ == nullptr) return ThrowRange(env, "AfPacket.start: the socket on " + ifname_ + " was opened with rx: false");
  poller_.Start(info, fd_, "AfPacket");
  return env.Undefined();
}

Napi::Value AfPacket::Stop(const Napi::CallbackInfo& info) {
  poller_.Stop();
  return info.Env().Undefined();
}

Napi::Value AfPacket::Close(const Napi::CallbackInfo& info) {
  CloseNow();
  return info.Env().Undefined();
}

}  // namespace pc
