// tshark 4.0 has no GUE dissector (draft-ietf-intarea-gue; `tshark -G
// protocols` lists none, nor FOU). This Lua one (tshark is built with Lua
// 5.2 and runs user scripts as root here) reads the 4-byte variant-0 header
// and hands the payload to the ip.proto table, and hands variant 1 (direct
// IP) to the ip / ipv6 dissectors. Registered on UDP port 6080 and for
// "Decode As" (`-d udp.port==N,gue`).

import fs from 'node:fs';
import path from 'node:path';

const LUA = `-- GUE for tshark: written by test/helpers/gue-dissector.ts
local gue = Proto("gue", "Generic UDP Encapsulation")
local pf_version = ProtoField.uint8("gue.version", "Version", base.DEC, nil, 0xc0)
local pf_c = ProtoField.uint8("gue.c", "Control", base.DEC, nil, 0x20)
local pf_hlen = ProtoField.uint8("gue.hlen", "Hlen", base.DEC, nil, 0x1f)
local pf_proto = ProtoField.uint8("gue.proto", "Proto/ctype", base.DEC)
local pf_flags = ProtoField.uint16("gue.flags", "Flags", base.HEX)
gue.fields = { pf_version, pf_c, pf_hlen, pf_proto, pf_flags }
local ip_proto = DissectorTable.get("ip.proto")
local ipv4 = Dissector.get("ip")
local ipv6 = Dissector.get("ipv6")

function gue.dissector(tvb, pinfo, tree)
  local n = tvb:len()
  if n < 1 then return 0 end
  local b0 = tvb(0, 1):uint()
  local ver = bit32.rshift(b0, 6)
  if ver == 1 then
    local t = tree:add(gue, tvb(0, 1))
    t:add(pf_version, tvb(0, 1))
    pinfo.cols.protocol = "GUE"
    if bit32.band(b0, 0x30) == 0 then ipv4:call(tvb, pinfo, tree) else ipv6:call(tvb, pinfo, tree) end
    return n
  end
  if ver ~= 0 or n < 4 then return 0 end
  local hlen = bit32.band(b0, 0x1f) * 4
  local t = tree:add(gue, tvb(0, 4))
  t:add(pf_version, tvb(0, 1))
  t:add(pf_c, tvb(0, 1))
  t:add(pf_hlen, tvb(0, 1))
  t:add(pf_proto, tvb(1, 1))
  t:add(pf_flags, tvb(2, 2))
  pinfo.cols.protocol = "GUE"
  if bit32.band(b0, 0x20) ~= 0 or n <= 4 + hlen then return n end
  ip_proto:try(tvb(1, 1):uint(), tvb(4 + hlen):tvb(), pinfo, tree)
  return n
end

local udp = DissectorTable.get("udp.port")
udp:add(6080, gue)
udp:add_for_decode_as(gue)
`;

/** Writes the dissector into `dir`; returns tshark arguments that load it. */
export function gueTsharkArgs(dir: string): string[] {
  const file = path.join(dir, 'gue.lua');
  fs.writeFileSync(file, LUA);
  return ['-X', `lua_script:${file}`];
}
