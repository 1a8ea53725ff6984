// The one list of counters (STYLE.md 8, after VPP's error X-macros). Every
// counter the data path bumps is declared here once, with its help text;
// /metrics, the replay summary, the dashboard and the benchmarks derive their
// names from this list. Parse statuses are declared in wire/status.ts and
// appear as `parse_<status>`.

import { PARSE_STATUS_NAMES } from './wire/status.js';

export const COUNTER_DEFS = [
  ['rx_packets', 'packets received from a source'],
  ['rx_bytes', 'bytes received (original wire length)'],
  ['rx_truncated', 'packets whose captured length is shorter than their wire length'],
  ['flow_created', 'flows inserted into the flow table'],
  ['flow_expired', 'flows removed by their idle timeout'],
  ['flow_evicted', 'flows evicted to make room (oldest first)'],
  ['flow_table_full', 'new flows refused: probe limit reached and nothing evictable'],
  ['flow_flood_guard', 'new flows refused by the flood guard (insert rate over budget while the table is nearly full)'],
  ['flow_reused', 'closed TCP flows restarted in place by a new SYN on the same 5-tuple'],
  ['flow_alias_refused', 'reply aliases (NAT reply tuples) refused: the tuple is another live flow\'s key, or its probe window is full'],
  ['flow_not_tracked', 'IP packets not tracked (no ports and not a fragment of a known flow)'],
  ['frag_tracked', 'first fragments whose flow was remembered for their later fragments'],
  ['frag_matched', 'non-first fragments attributed to their flow'],
  ['frag_unmatched', 'non-first fragments whose first fragment was never seen (or expired)'],
  ['frag_table_full', 'fragment trains not remembered because the fragment table was full'],
  // af-packet router mode (src/control/appliance.ts)
  ['route_not_for_us', 'frames not addressed to the ingress interface MAC (broadcast, multicast, other hosts): left to the kernel'],
  ['route_not_ipv4', 'frames that are not IPv4 (ARP, IPv6): left to the kernel, not routed'],
  ['route_local', 'IPv4 packets for the host itself (its own addresses, broadcast, multicast): left to the kernel'],
  ['route_no_route', 'packets dropped: destination not on the egress interface prefixes and no gateway configured for that side'],
  ['route_no_neighbour', 'packets dropped: next hop MAC not in the neighbour table yet (resolution requested)'],
  ['route_csum_completed', 'partial checksums (CHECKSUM_PARTIAL from a local sender) completed in software before translation'],
  ['route_csum_seeded', 'partial checksums kept partial (vnetHdr) with the pseudo-header seed rewritten after translation'],
  ['route_gso', 'GSO super-frames forwarded whole (vnetHdr; the kernel segments them on transmit)'],
  ['route_hairpin', 'packets sent back out of the interface they came in on'],
  ['route_tx_dropped', 'forwarded packets the kernel refused or had no room for on transmit'],
  // connection guard (src/guard/)
  ['guard_attempts', 'connection attempts counted by the guard sensor: TCP SYN without ACK in a first fragment or an unfragmented packet'],
  ['guard_assembled_syn', 'connection attempts whose SYN was found by assembling the first bytes of a TCP header split over fragments'],
  ['guard_suspicious', 'suspicious fragments: a first TCP fragment too short to hold the flags, or a TCP fragment at offset 1 (RFC 1858, RFC 3128)'],
  ['guard_suspicious_drop', 'suspicious fragments dropped (guard.dropSuspiciousFragments)'],
  ['guard_frag_overlap', 'TCP header bytes written twice with different values by overlapping fragments (RFC 5722, RFC 3128)'],
  ['guard_frag_table_full', 'fragment trains not assembled (oldest replaced): guard fragment window full'],
  ['guard_table_full', 'attempts or suspicious fragments not counted: the per-interval address table of the sensor was full'],
  ['guard_blocked_drop', 'packets dropped because their source address is blocked by the guard'],
  ['guard_blocked_rst', 'TCP resets sent in answer to blocked SYNs (guard.rst)'],
  ['guard_rst_limited', 'TCP resets not sent to blocked SYNs: over guard.rstRate, IPv6, or no room'],
  ['guard_allow_exempt', 'packets inside a blocked prefix that passed because their source is on the guard allow list'],
] as const;

export type CounterName = (typeof COUNTER_DEFS)[number][0];

export const Counter = Object.fromEntries(COUNTER_DEFS.map((d, i) => [d[0], i])) as { readonly [K in CounterName]: number };

/** Parse-status counters are named after the statuses. */
export const PARSE_COUNTER_NAMES = PARSE_STATUS_NAMES.map((n) => `parse_${n}`);

/** A set of counters in one Float64Array (exact up to 2^53). */
export class Counters {
  readonly values = new Float64Array(COUNTER_DEFS.length);
  get(name: CounterName): number {
    return this.values[Counter[name]];
  }
  toObject(): Record<string, number> {
    const o: Record<string, number> = {};
    for (let i = 0; i < COUNTER_DEFS.length; i++) o[COUNTER_DEFS[i][0]] = this.values[i];
    return o;
  }
}
