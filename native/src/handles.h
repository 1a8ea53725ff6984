// The three handle classes exported to JS. Each owns one kernel object (a
// pcap_t, a TUN fd, an AF_PACKET socket + ring), the batch slots it may write
// into and its poller; close() (or the GC) stops the poller first, then drops
// the slot references, then releases the kernel object.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

#include "common.h"

typedef struct pcap pcap_t;

namespace pc {

class PcapLive : public Napi::ObjectWrap<PcapLive> {
 public:
  static Napi::Object Init(Napi::Env env, Napi::Object exports);
  explicit PcapLive(const Napi::CallbackInfo& info);
  ~PcapLive() override;

 private:
  Napi::Value Attach(const Napi::CallbackInfo& info);
  Napi::Value Detach(const Napi::CallbackInfo& info);
  Napi::Value Dispatch(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value LinkType(const Napi::CallbackInfo& info);
  Napi::Value Inject(const Napi::CallbackInfo& info);
  Napi::Value InjectBatch(const Napi::CallbackInfo& info);
  Napi::Value SetNonblock(const Napi::CallbackInfo& info);
  Napi::Value Fd(const Napi::CallbackInfo& info);
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value Stop(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  bool CheckOpen(Napi::Env env, const char* method);
  void CloseNow();

  std::string device_;
  pcap_t* p_ = nullptr;
  int fd_ = -1;
  uint32_t snaplen_ = 0;
  uint16_t linkType_ = 0;
  uint16_t port_ = 0;
  bool nano_ = false;
  Slots slots_;
  Poller poller_;
  uint64_t rxPackets_ = 0, rxBytes_ = 0, rxTruncated_ = 0;
  uint64_t txPackets_ = 0, txBytes_ = 0, txErrors_ = 0, txFull_ = 0;
};

class Tun : public Napi::ObjectWrap<Tun> {
 public:
  static Napi::Object Init(Napi::Env env, Napi::Object exports);
  explicit Tun(const Napi::CallbackInfo& info);
  ~Tun() override;

 private:
  Napi::Value Attach(const Napi::CallbackInfo& info);
  Napi::Value Detach(const Napi::CallbackInfo& info);
  Napi::Value ReadBatch(const Napi::CallbackInfo& info);
  Napi::Value WriteBatch(const Napi::CallbackInfo& info);
  Napi::Value Name(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value Fd(const Napi::CallbackInfo& info);
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value Stop(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  bool CheckOpen(Napi::Env env, const char* method);
  void CloseNow();

  std::string name_;
  int fd_ = -1;
  uint32_t maxPacket_ = 65535;
  uint16_t port_ = 0;
  Slots slots_;
  Poller poller_;
  uint64_t rxPackets_ = 0, rxBytes_ = 0;
  uint64_t txPackets_ = 0, txBytes_ = 0, txErrors_ = 0, txFull_ = 0;
};

class AfPacket : public Napi::ObjectWrap<AfPacket> {
 public:
  static Napi::Object Init(Napi::Env env, Napi::Object exports);
  explicit AfPacket(const Napi::CallbackInfo& info);
  ~AfPacket() override;

 private:
  Napi::Value Attach(const Napi::CallbackInfo& info);
  Napi::Value Detach(const Napi::CallbackInfo& info);
  Napi::Value RecvBatch(const Napi::CallbackInfo& info);
  Napi::Value SendBatch(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value LinkType(const Napi::CallbackInfo& info);
  Napi::Value Features(const Napi::CallbackInfo& info);
  Napi::Value Fd(const Napi::CallbackInfo& info);
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value Stop(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  bool CheckOpen(Napi::Env env, const char* method);
  bool ReadKernelStats(Napi::Env env);
  void CloseNow();

  std::string ifname_;
  int fd_ = -1;
  int ifindex_ = 0;
  uint8_t* ring_ = nullptr;
  size_t ringSize_ = 0;
  uint32_t blockSize_ = 0;
  uint32_t blockNr_ = 0;
  uint32_t snaplen_ = 0;  // the largest frame the ring can hold
  // Reading position: the current block and, when a batch filled up in the
  // middle of a block, the next packet in it (pktLeft_ < 0: block not begun).
  uint32_t blk_ = 0;
  int64_t pktLeft_ = -1;
  uint8_t* pkt_ = nullptr;
  uint16_t linkType_ = 1;
  uint16_t port_ = 0;
  bool ignoreOutgoing_ = false;   // the kernel drops outgoing packets (PACKET_IGNORE_OUTGOING)
  bool skipOutgoing_ = false;     // asked for, but the kernel lacks it: skip them while walking
  bool qdiscBypass_ = false;
  bool fanout_ = false;
  // PACKET_VNET_HDR: every frame in the arena is preceded by its 10-byte
  // struct virtio_net_hdr (off[i] points after it), on receive and transmit.
  bool vnetHdr_ = false;
  Slots slots_;
  Poller poller_;
  uint64_t kPackets_ = 0, kDrops_ = 0, kFreeze_ = 0;
  uint64_t rxPackets_ = 0, rxBytes_ = 0, rxTruncated_ = 0, rxOutgoingSkipped_ = 0, rxGso_ = 0;
  uint64_t txPackets_ = 0, txBytes_ = 0, txErrors_ = 0, txFull_ = 0, txNoVnetRoom_ = 0;
};

}  // namespace pc
