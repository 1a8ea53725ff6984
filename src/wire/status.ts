// Parse statuses: the one list every per-packet parse result is named from.
// The index is the numeric status stored in Meta.status; the name becomes the
// counter `parse_<name>` (see src/counters.ts), so /metrics, the replay
// summary and the benchmarks all say the same thing.
//
// A status names the FIRST problem found. Whatever was parsed before the
// problem stays valid in Meta (for example l3 fields of a packet whose TCP
// header was cut by the snap length).

export const PARSE_STATUS_NAMES = [
  'ok',                      // every header we know was parsed
  'non_ip',                  // valid link layer carrying something else (ARP, LLDP...): not an error
  'unsupported_link',        // link type we do not decode
  'truncated_link',          // captured bytes end inside the Ethernet / SLL / SLL2 / NULL header
  'truncated_vlan',          // captured bytes end inside an 802.1Q / 802.1ad tag
  'vlan_too_deep',           // more stacked tags than MAX_VLAN_DEPTH
  'truncated_ipv4',          // captured bytes end inside the fixed IPv4 header
  'truncated_ipv4_options',  // IHL says options that were not captured
  'bad_ipv4_version',        // version nibble is not 4 where IPv4 was announced
  'bad_ipv4_ihl',            // IHL < 5
  'bad_ipv4_total_length',   // total length < IHL*4
  'truncated_ipv6',          // captured bytes end inside the fixed IPv6 header
  'bad_ipv6_version',        // version nibble is not 6 where IPv6 was announced
  'truncated_ipv6_ext',      // captured bytes end inside an extension header
  'ipv6_ext_chain_too_long', // more than MAX_IPV6_EXT extension headers
  'bad_ipv6_ext',            // extension header that runs past the payload length, or a bad AH length
  'truncated_tcp',           // captured bytes end inside the TCP fixed header (first fragment or whole packet)
  'bad_tcp_data_offset',     // data offset < 5, or past the end of the IP payload
  'truncated_udp',           // captured bytes end inside the UDP header
  'bad_udp_length',          // UDP length < 8, or larger than the IP payload
  'truncated_icmp',          // captured bytes end inside the ICMP / ICMPv6 header
  'truncated_tunnel',        // GRE header cut short, or an inner header of a tunnel cut short
  'bad_gre',                 // GRE version/flags we cannot walk
] as const;

export type ParseStatusName = (typeof PARSE_STATUS_NAMES)[number];

/** Numeric parse statuses (index into PARSE_STATUS_NAMES). */
export const ParseStatus = {
  OK: 0,
  NON_IP: 1,
  UNSUPPORTED_LINK: 2,
  TRUNCATED_LINK: 3,
  TRUNCATED_VLAN: 4,
  VLAN_TOO_DEEP: 5,
  TRUNCATED_IPV4: 6,
  TRUNCATED_IPV4_OPTIONS: 7,
  BAD_IPV4_VERSION: 8,
  BAD_IPV4_IHL: 9,
  BAD_IPV4_TOTAL_LENGTH: 10,
  TRUNCATED_IPV6: 11,
  BAD_IPV6_VERSION: 12,
  TRUNCATED_IPV6_EXT: 13,
  IPV6_EXT_CHAIN_TOO_LONG: 14,
  BAD_IPV6_EXT: 15,
  TRUNCATED_TCP: 16,
  BAD_TCP_DATA_OFFSET: 17,
  TRUNCATED_UDP: 18,
  BAD_UDP_LENGTH: 19,
  TRUNCATED_ICMP: 20,
  TRUNCATED_TUNNEL: 21,
  BAD_GRE: 22,
} as const;
export type ParseStatus = (typeof ParseStatus)[keyof typeof ParseStatus];

export const PARSE_STATUS_COUNT = PARSE_STATUS_NAMES.length;
