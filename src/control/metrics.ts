// /metrics in the Prometheus text exposition format 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/), derived
// from the counter lists (STYLE.md 8): src/counters.ts, src/nat/counters.ts,
// the distributor's DIST_COUNTER_DEFS, the parse statuses of
// src/wire/status.ts and the guard bus's REDIS_BUS_COUNTERS give every name,
// its # HELP text and its # TYPE. No second copy of those lists lives here.
//
// What is described here is what the appliance reports beside those lists:
// table sizes (gauges), its own totals (tx_packets), the native addon's I/O
// statistics, the TLS terminator's counter objects (their field names are the
// list) and the guard's ad-hoc stats. A value with no description anywhere is
// still exported (as a gauge, saying so in its HELP), and the unit test fails
// on it, so a new stat gets a description where it belongs.
//
// Names: `portcullis_` + the counter name; counters end in `_total` (the
// Prometheus convention). Parse statuses are one family with a label:
// portcullis_parse_packets_total{status="truncated_tcp"}. Per-service and
// per-side stats carry `service` and `side` labels.

import { COUNTER_DEFS } from '../counters.js';
import { NAT_COUNTER_DEFS } from '../nat/counters.js';
import { DIST_COUNTER_DEFS } from '../lb/distributor.js';
import { PARSE_STATUS_NAMES } from '../wire/status.js';
import { REDIS_BUS_COUNTERS } from '../guard/redis-bus.js';
import { TlsTerminatorCounters } from '../lb/tls/terminator.js';
import { QueueCounters } from '../lb/queue.js';

export type MetricType = 'counter' | 'gauge';

/** One counter value's place in the exposition. */
export interface MetricDef {
  /** Family name (portcullis_...). */
  family: string;
  type: MetricType;
  help: string;
  /** Labels of this value, already in exposition order. */
  labels: [string, string][];
  /** Counted as a drop or refusal reason (the dashboard's chart). */
  drop: boolean;
  /** False when nothing describes the value (exported as a gauge anyway). */
  described: boolean;
}

export const METRIC_PREFIX = 'portcullis_';

// Help texts that start with "gauge:" (REDIS_BUS_COUNTERS does this) are gauges.
const GAUGE_HELP = /^gauge:\s*/;

/** The counter lists, by name. */
const LISTED = new Map<string, { help: string; type: MetricType }>();
for (const defs of [COUNTER_DEFS, NAT_COUNTER_DEFS, DIST_COUNTER_DEFS] as readonly (readonly (readonly [string, string])[])[]) {
  for (const [name, help] of defs) LISTED.set(name, { help: help.replace(GAUGE_HELP, ''), type: GAUGE_HELP.test(help) ? 'gauge' : 'counter' });
}
const PARSE_STATUSES = new Set<string>(PARSE_STATUS_NAMES);
const BUS = new Map<string, { help: string; type: MetricType }>(REDIS_BUS_COUNTERS.map(([n, h]) => [n, { help: h.replace(GAUGE_HELP, ''), type: GAUGE_HELP.test(h) ? 'gauge' : 'counter' }]));

/**
 * Values reported beside the lists: the appliance's totals and table sizes,
 * the neighbour watcher, the distributor's control plane and the guard's
 * stats() objects (src/guard/guard.ts, sensor.ts, monitor.ts, alerts.ts),
 * which carry no help text of their own.
 */
const OTHER: Record<string, [MetricType, string]> = {
  tx_packets: ['counter', 'packets handed back to the kernel after processing (TUN writes, AF_PACKET transmits, encapsulated copies)'],
  originated_sent: ['counter', 'packets the appliance originated or released (ICMP errors, TCP resets, held fragments) sent by the raw socket'],
  originated_errors: ['counter', 'originated packets the raw socket failed to send'],
  flows: ['gauge', 'flows in the flow table'],
  nat_mappings: ['gauge', 'NAT mappings in the table'],
  neigh_refreshes: ['counter', 'af-packet: neighbour table reloads from the kernel'],
  neigh_probes: ['counter', 'af-packet: neighbour resolutions requested from the kernel for missing next hops'],
  neigh_errors: ['counter', 'af-packet: neighbour table reads that failed'],
  neigh_want_dropped: ['counter', 'af-packet: next hops to resolve not remembered (request list full)'],
  lb_rebuilds: ['counter', 'distributor table rebuilds (health changes, reloads, MACs learned)'],
  lb_health_transitions: ['counter', 'target health state changes (up, down)'],
  guard_flushes: ['counter', 'guard sensor flushes: attempt counts handed to the bus'],
  guard_events: ['counter', 'block and unblock events applied to this node\'s blacklist view'],
  guard_rebuilds: ['counter', 'rebuilds of the enforcement (blocklist) table'],
  guard_publish_errors: ['counter', 'sensor flushes the bus refused'],
  guard_rst_send_errors: ['counter', 'batches of TCP resets to blocked SYNs the raw socket failed to send'],
  guard_blocklist_entries: ['gauge', 'entries in the enforcement (blocklist) table'],
  guard_sensor_addresses: ['gauge', 'source addresses counted by the sensor in the current interval'],
  guard_sensor_frag_trains: ['gauge', 'fragment trains the sensor is assembling'],
  guard_conn_marked: ['gauge', 'connection attempts followed until they complete or close'],
  guard_conn_timed_out: ['counter', 'followed connection attempts that never completed (SYN timeout)'],
  guard_monitor_batches: ['counter', 'monitor: delta batches received from sensors'],
  guard_monitor_deltas: ['counter', 'monitor: per-address deltas applied'],
  guard_monitor_seq_gaps: ['counter', 'monitor: delta batches missing from a node\'s sequence'],
  guard_monitor_blocks: ['counter', 'monitor: addresses blocked (rules and manual)'],
  guard_monitor_unblocks: ['counter', 'monitor: addresses unblocked (expiry and manual)'],
  guard_monitor_table_full: ['counter', 'monitor: addresses not tracked, the address table was full'],
  guard_monitor_evicted: ['counter', 'monitor: idle addresses evicted to make room'],
  guard_monitor_publish_errors: ['counter', 'monitor: block events the bus refused'],
  guard_monitor_bad_deltas: ['counter', 'monitor: delta batches or rows that were not valid'],
  guard_monitor_catchup: ['counter', 'monitor: delta batches of a node\'s held-back backlog (bus outage), counted but not scored'],
  guard_monitor_addresses: ['gauge', 'monitor: addresses tracked'],
  guard_monitor_blacklist: ['gauge', 'monitor: addresses on the blacklist'],
  guard_alerts: ['counter', 'guard alerts raised'],
  guard_alerts_webhook_sent: ['counter', 'guard alerts delivered to the webhook'],
  guard_alerts_webhook_failed: ['counter', 'guard webhook deliveries that failed'],
  guard_alerts_webhook_retried: ['counter', 'guard webhook deliveries retried'],
  guard_alerts_webhook_dropped: ['counter', 'guard alerts not delivered: webhook queue full or retries spent'],
  guard_alerts_webhook_queued: ['gauge', 'guard alerts waiting for the webhook'],
};

/** The native addon's I/O statistics (native/src/tun.cc, af_packet.cc Stats()). */
const IO_STATS: Record<string, [MetricType, string]> = {
  rx_packets: ['counter', 'packets read from the device'],
  rx_bytes: ['counter', 'bytes read from the device'],
  rx_truncated: ['counter', 'packets cut to the slot size on receive'],
  rx_outgoing_skipped: ['counter', 'frames this host sent, skipped on receive'],
  rx_gso: ['counter', 'GSO super-frames received whole (virtio_net_hdr)'],
  tx_packets: ['counter', 'packets written to the device'],
  tx_bytes: ['counter', 'bytes written to the device'],
  tx_errors: ['counter', 'packets the kernel refused on write'],
  tx_full: ['counter', 'packets not written: the device queue was full'],
  tx_no_vnet_room: ['counter', 'packets not sent: no room in front of them for the virtio_net_hdr'],
  tp_packets: ['counter', 'packets the kernel put in the receive ring (PACKET_STATISTICS)'],
  tp_drops: ['counter', 'packets the kernel dropped: receive ring full (PACKET_STATISTICS)'],
  tp_freeze_q_cnt: ['counter', 'times the receive ring froze because it was full (PACKET_STATISTICS)'],
};

const TLS_KEYS = new Set(Object.keys(new TlsTerminatorCounters()));
const QUEUE_KEYS = new Set(Object.keys(new QueueCounters()));

/** handshakeFailures -> handshake_failures */
function snake(s: string): string {
  return s.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}
function words(s: string): string {
  return snake(s).replace(/_/g, ' ');
}
function total(name: string, type: MetricType): string {
  return type === 'counter' ? `${METRIC_PREFIX}${name}_total` : `${METRIC_PREFIX}${name}`;
}

/** A drop or refusal reason: the name or the help says so. Parse statuses are not (the NAT's nat_drop_bad_packet counts those packets). */
function isDrop(name: string, help: string): boolean {
  return /(^|_)drop(ped)?(_|$)/.test(name) || /\b(dropped|refused)\b/.test(help);
}

const cache = new Map<string, MetricDef>();

/** Where a counterValues() key goes in the exposition (memoised: the key set is small and stable). */
export function metricDef(key: string): MetricDef {
  let d = cache.get(key);
  if (d === undefined) {
    d = describe(key);
    if (cache.size < 10_000) cache.set(key, d);
  }
  return d;
}

function describe(key: string): MetricDef {
  const l = LISTED.get(key);
  if (l) return { family: total(key, l.type), type: l.type, help: l.help, labels: [], drop: isDrop(key, l.help), described: true };
  if (key.startsWith('parse_') && PARSE_STATUSES.has(key.slice(6))) {
    return { family: `${METRIC_PREFIX}parse_packets_total`, type: 'counter', help: 'packets by parse status (the first problem the parser found, src/wire/status.ts)', labels: [['status', key.slice(6)]], drop: false, described: true };
  }
  const o = OTHER[key];
  if (o) return { family: total(key, o[0]), type: o[0], help: o[1], labels: [], drop: false, described: true };
  if (key.startsWith('guard_bus_')) {
    const b = BUS.get(key.slice(6));
    if (b) return { family: total(key, b.type), type: b.type, help: `guard bus: ${b.help}`, labels: [], drop: false, described: true };
  }
  let m = /^tun_(.+)$/.exec(key);
  if (m && IO_STATS[m[1]]) {
    const [type, help] = IO_STATS[m[1]];
    return { family: total(`tun_${m[1]}`, type), type, help: `TUN: ${help}`, labels: [], drop: false, described: true };
  }
  m = /^afp_(inside|outside)_(.+)$/.exec(key);
  if (m && IO_STATS[m[2]]) {
    const [type, help] = IO_STATS[m[2]];
    return { family: total(`afpacket_${m[2]}`, type), type, help: `AF_PACKET: ${help}`, labels: [['side', m[1]]], drop: false, described: true };
  }
  // lb_tls_<service>_<field> / lb_queue_<service>_<field> (src/control/lb.ts counterValues): the
  // field names are the lists (TlsTerminatorCounters, QueueCounters); service names may hold '_'.
  m = /^lb_(tls|queue)_(.+)_([A-Za-z]+)$/.exec(key);
  if (m && (m[1] === 'tls' ? TLS_KEYS : QUEUE_KEYS).has(m[3])) {
    const gauge = m[1] === 'tls' && m[3] === 'active';
    const type: MetricType = gauge ? 'gauge' : 'counter';
    const what = m[1] === 'tls' ? 'TLS terminator' : 'TLS target limits';
    return { family: total(`lb_${m[1]}_${snake(m[3])}`, type), type, help: `${what}: ${words(m[3])} (${m[1] === 'tls' ? 'TlsTerminatorCounters' : 'QueueCounters'}.${m[3]})`, labels: [['service', m[2]]], drop: false, described: true };
  }
  const safe = key.replace(/[^a-zA-Z0-9_]/g, '_');
  return { family: `${METRIC_PREFIX}${safe}`, type: 'gauge', help: `${key} (no description yet: add one to src/control/metrics.ts)`, labels: [], drop: false, described: false };
}

/** # HELP text escaping (backslash and newline). */
function escHelp(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}
/** Label value escaping (backslash, double quote, newline). */
function escLabel(s: string): string {
  return s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}
function fmtValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

/** The exposition of `values` (a counterValues() object): families in first-seen order, each with its HELP, TYPE and samples. */
export function renderMetrics(values: Record<string, number>, extra: { name: string; type: MetricType; help: string; labels?: [string, string][]; value: number }[] = []): string {
  const families = new Map<string, { type: MetricType; help: string; lines: string[] }>();
  const add = (family: string, type: MetricType, help: string, labels: [string, string][], v: number) => {
    let f = families.get(family);
    if (!f) {
      f = { type, help, lines: [] };
      families.set(family, f);
    }
    const ls = labels.length === 0 ? '' : `{${labels.map(([k, x]) => `${k}="${escLabel(x)}"`).join(',')}}`;
    f.lines.push(`${family}${ls} ${fmtValue(v)}`);
  };
  for (const key of Object.keys(values)) {
    const v = values[key];
    if (typeof v !== 'number') continue;
    const d = metricDef(key);
    add(d.family, d.type, d.help, d.labels, v);
  }
  for (const e of extra) add(e.name, e.type, e.help, e.labels ?? [], e.value);
  let out = '';
  for (const [name, f] of families) {
    out += `# HELP ${name} ${escHelp(f.help)}\n# TYPE ${name} ${f.type}\n`;
    for (const l of f.lines) out += l + '\n';
  }
  return out;
}

/** Every value's description, for the dashboard (names, help, drop reasons) and GET /counters?meta=1. */
export function describeValues(values: Record<string, number>): { name: string; metric: string; type: MetricType; help: string; drop: boolean }[] {
  return Object.keys(values).map((k) => {
    const d = metricDef(k);
    const ls = d.labels.length === 0 ? '' : `{${d.labels.map(([a, b]) => `${a}="${escLabel(b)}"`).join(',')}}`;
    return { name: k, metric: d.family + ls, type: d.type, help: d.help, drop: d.drop };
  });
}

/** The keys of `values` nothing describes (the unit test wants none). */
export function undescribed(values: Record<string, number>): string[] {
  return Object.keys(values).filter((k) => !metricDef(k).described);
}
