// Entry point of the portcullis addon: exports the three handle classes, the
// libpcap version and the packet flag bits.
#include <napi.h>
#include <pcap/pcap.h>

#include "common.h"
#include "handles.h"

namespace {

Napi::Value LibpcapVersion(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), pcap_lib_version());
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  pc::PcapLive::Init(env, exports);
  pc::Tun::Init(env, exports);
  pc::AfPacket::Init(env, exports);
  exports.Set("libpcapVersion", Napi::Function::New<LibpcapVersion>(env, "libpcapVersion"));
  Napi::Object flags = Napi::Object::New(env);
  flags.Set("CSUM_NOT_READY", static_cast<double>(pc::kCsumNotReady));
  flags.Set("CSUM_VALID", static_cast<double>(pc::kCsumValid));
  flags.Set("TRUNCATED", static_cast<double>(pc::kTruncated));
  flags.Set("VLAN_RESTORED", static_cast<double>(pc::kVlanRestored));
  flags.Set("GSO", static_cast<double>(pc::kGso));
  flags.Freeze();
  exports.Set("PacketFlag", flags);
  return exports;
}

}  // namespace

NODE_API_MODULE(portcullis, Init)
