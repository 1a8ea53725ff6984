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
  ['flow_not_tracked', 'IP packets not tracked (no ports and not a fragment of a known flow)'],
  ['frag_tracked', 'first fragments whose flow was remembered for their later fragments'],
  ['frag_matched', 'non-first fragments attributed to their flow'],
  ['frag_unmatched', 'non-first fragments whose first fragment was never seen (or expired)'],
  ['frag_table_full', 'fragment trains not remembered because the fragment table was full'],
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
