// IANA protocol numbers (IPv4 Protocol / IPv6 Next Header) the parser knows.
// https://www.iana.org/assignments/protocol-numbers
export const IpProto = {
  HOPOPT: 0,    // RFC 8200 4.3 hop-by-hop options
  ICMP: 1,
  IPIP: 4,      // RFC 2003 IPv4 in IPv4 / RFC 2473 IPv4 in IPv6
  TCP: 6,
  UDP: 17,
  IPV6: 41,     // RFC 4213 6in4 / RFC 2473 6in6
  ROUTING: 43,  // RFC 8200 4.4
  FRAGMENT: 44, // RFC 8200 4.5
  GRE: 47,      // RFC 2784
  ESP: 50,      // RFC 4303
  AH: 51,       // RFC 4302
  ICMPV6: 58,
  NONE: 59,     // RFC 8200 4.7 no next header
  DSTOPTS: 60,  // RFC 8200 4.6
  MOBILITY: 135, // RFC 6275
  HIP: 139,     // RFC 7401
  SHIM6: 140,   // RFC 5533
} as const;

export const EtherType = {
  IPV4: 0x0800,
  ARP: 0x0806,
  VLAN: 0x8100,      // IEEE 802.1Q
  QINQ: 0x88a8,      // IEEE 802.1ad S-tag
  QINQ_OLD: 0x9100,  // pre-standard QinQ
  IPV6: 0x86dd,
  MPLS: 0x8847,
  MPLS_MC: 0x8848,
  PPPOE_SESSION: 0x8864,
  TEB: 0x6558,       // transparent Ethernet bridging (RFC 1701 protocol type)
  PPP: 0x880b,       // PPTP enhanced GRE payload (RFC 2637 4.1)
  CISCO_META: 0x8909, // Cisco MetaData (SGT) header
} as const;
