// The guard's configuration (the `guard` key of the appliance's YAML, also
// read alone by `portcullis replay --guard --config FILE`). Validated by zod;
// errors name the key path (src/control/config.ts formats them).
//
// Default: OFF. The appliance runs no guard unless the configuration has a
// `guard` key. An appliance that blocks by default must be sure it cannot
// block legitimate traffic, and no per-address threshold can promise that on
// a NAT: one inside address may be a proxy or a whole office behind another
// NAT, and an outside address may be a carrier-grade NAT. So the operator
// turns it on (`guard: {}` is enough) and the defaults below are then chosen
// to leave ordinary clients alone: 100 new connections per second with a
// burst of 200, 6000 per minute, 512 concurrent, 64 SYNs not (yet)
// completed, and a score that must reach 100 points. Suspicious fragments score high (25 each) because no
// conforming stack sends them: tiny first fragments and fragments at offset
// 1 exist only to evade filters (RFC 1858 3.1-3.2, RFC 3128).

import fs from 'node:fs';
import os from 'node:os';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { parsePrefix } from './addr.js';

const addrOrPrefix = z.string().refine((s) => parsePrefix(s) !== null, {
  message: 'expected an IPv4 or IPv6 address or prefix such as 198.18.0.0/15, 198.18.1.2 or fd00::/8',
});
const pow2 = (min: number, max: number) => z.number().int().min(min).max(max).refine((n) => (n & (n - 1)) === 0, { message: 'must be a power of two' });
const positive = (max: number) => z.number().positive({ message: 'must be greater than 0' }).max(max);

const RateSchema = z.object({
  /** Connection attempts per second (token bucket refill). */
  rate: positive(1e9),
  /** Bucket depth: attempts allowed at once after a quiet spell (default twice the rate). */
  burst: positive(1e9).optional(),
}).strict().transform((r) => ({ rate: r.rate, burst: r.burst ?? r.rate * 2 }));

const TotalSchema = z.object({
  /** Connection attempts allowed within `window` seconds (sliding window). */
  max: positive(1e12),
  window: positive(86400),
}).strict();

/** Per-address thresholds; every field may be overridden per prefix. */
const ThresholdsSchema = z.object({
  rate: RateSchema.prefault({ rate: 100, burst: 200 }),
  total: TotalSchema.prefault({ max: 6000, window: 60 }),
  /** Established connections open at once (handshake completed, not yet closed; closes come from the flow table). */
  concurrent: z.number().int().min(1).max(1e9).default(512),
  /** SYNs allowed to stay without a completed handshake (a decaying balance) before the `incomplete` rule scores. */
  incomplete: z.number().int().min(0).max(1e9).default(64),
}).strict();

const PrefixThresholdsSchema = z.object({
  prefix: addrOrPrefix,
  rate: RateSchema.optional(),
  total: TotalSchema.optional(),
  concurrent: z.number().int().min(1).max(1e9).optional(),
  incomplete: z.number().int().min(0).max(1e9).optional(),
}).strict();

export const GuardConfigSchema = z.object({
  /** `guard: {}` turns the guard on; `enabled: false` keeps the section but turns it off. */
  enabled: z.boolean().default(true),
  /** Name of this node in delta batches and alerts (default: the host name). */
  node: z.string().min(1).max(64).regex(/^[A-Za-z0-9_.:-]+$/, { message: 'expected letters, digits and _ . : -' }).default(() => os.hostname()),
  /** 'embedded' (monitor in this process) or a Redis URL (redis://host:port, or unix:///path/to/redis.sock) shared by several nodes. */
  bus: z.string().refine((s) => s === 'embedded' || /^(rediss?:\/\/|unix:\/\/\/)[^\s]+$/.test(s), { message: "expected 'embedded' or a redis://host:port URL (or unix:///path/to/redis.sock)" }).default('embedded'),
  /** Run the monitor in this process (with a Redis bus, exactly one node should). */
  monitor: z.boolean().default(true),
  /** Seconds between sensor flushes and monitor decisions; a block reaches the data path within one interval. */
  interval: z.number().min(0.05, { message: 'must be at least 0.05 s' }).max(60).default(1),
  /** Drop tiny first TCP fragments and TCP fragments at offset 1 (RFC 1858 3.2, RFC 3128): no conforming stack sends them. */
  dropSuspiciousFragments: z.boolean().default(true),
  /** Answer SYNs from blocked IPv4 addresses with a TCP reset (RFC 9293 3.10.7.1) instead of dropping them silently. */
  rst: z.boolean().default(false),
  /** Resets sent per second at most (the rest are dropped silently and counted). */
  rstRate: z.number().int().min(1).max(1e6).default(100),
  /** Seconds a connection may stay without a completed handshake before it counts as never completed. */
  synTimeout: z.number().min(0.1).max(600).default(5),
  sensor: z.object({
    /** Originating addresses counted per interval (power of two); more are refused with guard_table_full. */
    capacity: pow2(256, 1 << 22).default(1 << 16),
    /** Fragment trains whose first TCP bytes are assembled (power of two). */
    fragCapacity: pow2(16, 1 << 20).default(1024),
    /** Seconds a fragment train is remembered (RFC 791 suggests a 15 s reassembly timer). */
    fragTimeout: z.number().min(0.1).max(120).default(15),
  }).strict().prefault({}),
  thresholds: ThresholdsSchema.prefault({}),
  /** Per-prefix overrides of `thresholds`, longest prefix wins. */
  prefixes: z.array(PrefixThresholdsSchema).max(10000).default([]),
  score: z.object({
    /** Score at which an address is blocked. */
    threshold: positive(1e12).default(100),
    /** Seconds for a score to halve. */
    halfLife: positive(86400).default(60),
    /**
     * Points per unit over a threshold: per attempt over the rate or the
     * window total, per connection over `concurrent` at each evaluation, per
     * SYN over the `incomplete` allowance, per suspicious fragment. (A SYN
     * flood whose SYNs never complete scores on both `rate` and `incomplete`;
     * the block names the rule that added more.)
     */
    weights: z.object({
      rate: z.number().min(0).max(1e6).default(1),
      total: z.number().min(0).max(1e6).default(1),
      concurrent: z.number().min(0).max(1e6).default(1),
      incomplete: z.number().min(0).max(1e6).default(1),
      suspicious: z.number().min(0).max(1e6).default(25),
    }).strict().prefault({}),
  }).strict().prefault({}),
  ban: z.object({
    /** Seconds of the first block. */
    time: positive(86400 * 365).default(600),
    /** Each repeat offence multiplies the block time (fail2ban's bantime.increment): time * factor^(offences-1). */
    factor: z.number().min(1).max(100).default(2),
    /** Longest block, seconds. */
    max: positive(86400 * 365).default(86400 * 7),
    /** Seconds after which past offences are forgotten. */
    forget: positive(86400 * 365).default(86400),
  }).strict().prefault({}),
  /** Addresses and prefixes never blocked (not by the rules, not by hand, not inside a blocked prefix). */
  allow: z.array(addrOrPrefix).max(100000).default([]),
  /** Addresses tracked by the monitor at once (oldest idle ones are forgotten first). */
  capacity: z.number().int().min(16).max(1 << 24).default(1 << 16),
  alerts: z.object({
    /** POST every alert as JSON to this URL (optional). */
    webhook: z.string().url({ message: 'expected an http(s) URL' }).refine((u) => /^https?:/.test(u), { message: 'expected an http(s) URL' }).optional(),
    /** Seconds before a webhook request is abandoned. */
    timeout: positive(60).default(2),
    /** Attempts after the first, with doubling back-off. */
    retries: z.number().int().min(0).max(10).default(3),
    /** Alerts waiting for the webhook at most (the oldest are dropped and counted). */
    queue: z.number().int().min(1).max(100000).default(1000),
    /** Alerts kept for the admin API. */
    keep: z.number().int().min(1).max(100000).default(1000),
  }).strict().prefault({}),
}).strict().superRefine((g, ctx) => {
  if (g.bus === 'embedded' && !g.monitor) {
    ctx.addIssue({ code: 'custom', path: ['monitor'], message: 'false needs a shared bus (guard.bus: redis://host:port) and a monitor elsewhere; with the embedded bus nothing would decide' });
  }
});

export type GuardConfig = z.infer<typeof GuardConfigSchema>;
export type Thresholds = z.infer<typeof ThresholdsSchema>;

export class GuardConfigError extends Error {
  readonly problems: string[];
  constructor(file: string, problems: string[]) {
    super(`${file}: invalid guard configuration:\n  ${problems.join('\n  ')}`);
    this.name = 'GuardConfigError';
    this.problems = problems;
  }
}

function pathOf(prefix: string, p: readonly PropertyKey[]): string {
  let s = prefix;
  for (const k of p) s += typeof k === 'number' ? `[${k}]` : s ? `.${String(k)}` : String(k);
  return s || '(top level)';
}

/** Validates a guard section; `at` is the key path it sits under ('guard'). */
export function validateGuardConfig(doc: unknown, file = 'config', at = 'guard'): GuardConfig {
  const r = GuardConfigSchema.safeParse(doc ?? {});
  if (r.success) return r.data;
  throw new GuardConfigError(file, r.error.issues.map((i) => {
    if (i.code === 'unrecognized_keys') return `${pathOf(at, i.path)}: unknown key${i.keys.length > 1 ? 's' : ''} ${i.keys.map((k) => `'${k}'`).join(', ')}`;
    return `${pathOf(at, i.path)}: ${i.message}`;
  }));
}

/**
 * Reads the guard section of a YAML file for the offline replay: the file is
 * either an appliance configuration (its `guard` key is used, the rest is
 * not checked) or a guard section on its own.
 */
export function loadGuardConfig(file: string): GuardConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new GuardConfigError(file, [`cannot read the file: ${(err as Error).message}`]);
  }
  const doc = parseDocument(text, { prettyErrors: true });
  if (doc.errors.length) throw new GuardConfigError(file, doc.errors.map((e) => `YAML syntax: ${e.message.split('\n')[0]}`));
  const js = (doc.toJS() ?? {}) as Record<string, unknown>;
  if (js && typeof js === 'object' && !Array.isArray(js) && 'guard' in js) return validateGuardConfig(js.guard, file, 'guard');
  return validateGuardConfig(js, file, '');
}

/** The defaults (what `guard: {}` gives). */
export function defaultGuardConfig(overrides: Record<string, unknown> = {}): GuardConfig {
  return validateGuardConfig(overrides, 'defaults');
}
