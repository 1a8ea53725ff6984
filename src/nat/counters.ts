// NAT counters: one list, declared once (STYLE.md 8), in the same shape as
// src/counters.ts. Kept apart from COUNTER_DEFS so the NAT can be built and
// tested on its own; control/ and the metrics exporter concatenate the two
// lists (names are prefixed `nat_`, so they cannot collide).
//
// Every refusal on the data path has a counter (DESIGN.md "Rules of the
// house"): each drop reason is its own `nat_drop_*` line.

export const NAT_COUNTER_DEFS = [
  // ---- translated ----
  ['nat_out_translated', 'packets from inside translated towards outside (source rewritten)'],
  ['nat_in_translated', 'packets from outside translated towards inside (destination rewritten)'],
  ['nat_hairpinned', 'packets from inside to a pool address translated both ways and sent back inside (RFC 4787 REQ-9)'],
  ['nat_icmp_error_translated', 'ICMP errors translated with their quoted packet (RFC 5508 REQ-3/REQ-4)'],
  ['nat_passthrough_not_ipv4', 'packets left untouched because they are not IPv4 (NAT44 only)'],
  // ---- state ----
  ['nat_mapping_created', 'mappings created (inside endpoint -> outside address:port)'],
  ['nat_mapping_expired', 'mappings removed because their last session expired'],
  ['nat_session_created', 'sessions created (mapping + remote endpoint)'],
  ['nat_session_expired', 'sessions removed (idle timeout reached)'],
  ['nat_port_quarantine_overflow', 'ports released from quarantine early because the quarantine ring was full'],
  // ---- drops ----
  ['nat_drop_bad_packet', 'packets dropped because the parser reported an error (cut or lying headers)'],
  ['nat_drop_unsupported_proto', 'IPv4 packets dropped: protocol not translated (only TCP, UDP, ICMP)'],
  ['nat_drop_no_ports', 'packets dropped: transport header not captured (tiny first fragment, RFC 1858)'],
  ['nat_drop_not_inside', 'packets from the inside side whose source is not in insidePrefixes (spoofed)'],
  ['nat_drop_not_pool', 'packets from the outside side whose destination is not a pool address'],
  ['nat_drop_no_mapping', 'inbound packets with no mapping for their destination address:port'],
  ['nat_drop_filtered', 'inbound packets refused by the mapping filter (RFC 4787 REQ-8)'],
  ['nat_drop_pool_empty', 'new mappings refused: no free port on the subscriber\'s pool address (RFC 6888)'],
  ['nat_drop_subscriber_limit', 'new mappings refused: the inside address reached maxMappingsPerSubscriber (RFC 6888 REQ-4)'],
  ['nat_drop_session_limit', 'new sessions refused: the mapping reached maxSessionsPerMapping (RFC 6888 REQ-5)'],
  ['nat_drop_mapping_table_full', 'new mappings refused: mapping table or its index full'],
  ['nat_drop_session_table_full', 'new sessions refused: session table or its index full'],
  ['nat_drop_ttl_expired', 'packets dropped because their TTL would reach zero (RFC 1812 5.3.1)'],
  ['nat_drop_frag_needed', 'packets with DF set larger than outsideMtu (ICMP fragmentation needed sent, RFC 1191)'],
  ['nat_drop_too_big', 'packets without DF larger than outsideMtu (this NAT does not fragment)'],
  ['nat_drop_hairpin_no_mapping', 'hairpin packets to a pool address:port that no mapping holds'],
  ['nat_drop_no_outbound_mapping', 'outbound replies/errors that need an existing mapping and have none'],
  // ---- unsolicited SYN (RFC 5382 REQ-4) ----
  ['nat_syn_dropped', 'unsolicited inbound SYNs dropped silently (REQ-4a, or a duplicate of a held one)'],
  ['nat_syn_held', 'unsolicited inbound SYNs held for the 6 s window'],
  ['nat_syn_hold_full', 'unsolicited inbound SYNs dropped because the hold queue was full'],
  ['nat_syn_hold_superseded', 'held SYNs dropped silently because an outbound SYN for the connection was translated'],
  ['nat_syn_hold_expired', 'held SYNs whose 6 s window ended (answered with ICMP port unreachable unless disabled)'],
  // ---- ICMP errors ----
  ['nat_icmp_error_no_mapping', 'ICMP errors dropped silently: the quoted packet matches no session (RFC 5508 REQ-3/4)'],
  ['nat_icmp_error_bad_checksum', 'ICMP errors dropped silently: ICMP checksum does not verify (RFC 5508 REQ-8)'],
  ['nat_icmp_error_bad_quote', 'ICMP errors dropped: quoted packet too short, not IPv4, a non-first fragment or an error'],
  // ---- fragments (RFC 4787 REQ-14) ----
  ['nat_frag_first_tracked', 'first fragments whose translation was remembered for their train'],
  ['nat_frag_translated', 'non-first fragments translated through their train'],
  ['nat_frag_held', 'non-first fragments held (copied) until their first fragment arrives'],
  ['nat_frag_released', 'held fragments translated and released when their first fragment arrived'],
  ['nat_frag_hold_full', 'non-first fragments dropped: hold arena, per-train limit or slot size exceeded'],
  ['nat_frag_timeout', 'held fragments dropped because their first fragment never came'],
  ['nat_frag_table_full', 'fragment trains not remembered: train table full'],
  ['nat_frag_dropped', 'non-first fragments dropped because their first fragment was dropped'],
  ['nat_frag_bad', 'fragments dropped as hostile (TCP fragment offset 1, RFC 1858)'],
  // ---- packets the NAT originates ----
  ['nat_icmp_originated', 'ICMP errors originated (time exceeded, fragmentation needed, unreachable)'],
  ['nat_icmp_rate_limited', 'ICMP errors not originated because of the rate limit (RFC 1812 4.3.2.8)'],
  ['nat_originated_no_room', 'packets to originate or release lost: no side-output batch or it was full'],
] as const;

export type NatCounterName = (typeof NAT_COUNTER_DEFS)[number][0];

export const NatCounter = Object.fromEntries(NAT_COUNTER_DEFS.map((d, i) => [d[0], i])) as { readonly [K in NatCounterName]: number };

/** A set of NAT counters in one Float64Array (exact up to 2^53). */
export class NatCounters {
  readonly values = new Float64Array(NAT_COUNTER_DEFS.length);
  get(name: NatCounterName): number {
    return this.values[NatCounter[name]];
  }
  toObject(): Record<string, number> {
    const o: Record<string, number> = {};
    for (let i = 0; i < NAT_COUNTER_DEFS.length; i++) o[NAT_COUNTER_DEFS[i][0]] = this.values[i];
    return o;
  }
}
