// The appliance configuration: YAML validated by a schema (zod), with errors
// that name the file, the key path and what was expected (STYLE.md 12).
// Addresses and prefixes are checked with `ip-address` here, on the control
// plane; the data path only ever sees the u32s derived from them.

import fs from 'node:fs';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { Address4 } from 'ip-address';

export class ConfigError extends Error {
  readonly problems: string[];
  constructor(file: string, problems: string[]) {
    super(`${file}: invalid configuration:\n  ${problems.join('\n  ')}`);
    this.name = 'ConfigError';
    this.problems = problems;
  }
}

const ipv4 = z.string().refine((s) => Address4.isValid(s) && !s.includes('/'), { message: 'expected an IPv4 address such as 198.19.2.1' });
const prefix4 = z.string().refine((s) => Address4.isValid(s) && s.includes('/'), { message: 'expected an IPv4 prefix such as 198.18.0.0/15' });
const seconds = (min: number, max = 86400 * 7) => z.number().min(min, { message: `must be at least ${min} s` }).max(max);
const pow2 = (min: number, max: number) => z.number().int().min(min).max(max).refine((n) => (n & (n - 1)) === 0, { message: 'must be a power of two' });
const ifname = z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/, { message: 'expected an interface name of 1 to 15 letters, digits, _ . -' });

export const ConfigSchema = z.object({
  /** How packets reach the appliance. */
  io: z.object({
    /**
     * tun: one TUN device; the host routes both directions through it
     * (policy routing), the kernel keeps ARP and the interfaces.
     *
     * af-packet: the appliance is the router. It opens an AF_PACKET socket
     * (TPACKET_V3 receive ring, batched sendmmsg transmit) on `inside` and on
     * `outside`, takes every IPv4 frame addressed to the interface's MAC,
     * translates it and sends it out of the other interface (or back out of
     * the same one for hairpin) with the Ethernet addresses rewritten: source
     * = the egress interface's MAC, destination = the next hop's MAC from the
     * kernel's neighbour table (the destination itself when it is on the
     * interface's connected prefix, else `insideGateway` / `outsideGateway`).
     * The kernel keeps the interfaces, their addresses and ARP, and must NOT
     * forward the same packets a second time: set `net.ipv4.ip_forward=0` in
     * the appliance's network namespace (the kernel then only answers ARP and
     * traffic to its own addresses; with forwarding off it drops the
     * others silently, without ICMP), and `rp_filter=0` on both interfaces.
     * `NatLab.create({ mode: 'af-packet' })` (src/cli/lab.ts) does this.
     */
    mode: z.enum(['tun', 'af-packet']).default('tun'),
    tun: ifname.default('pcl0'),
    /** af-packet: the interface towards the inside networks (ingress port 0). */
    inside: ifname.optional(),
    /** af-packet: the interface towards the outside (ingress port 1). */
    outside: ifname.optional(),
    /** af-packet: next hop for inside destinations that are not on the inside interface's prefixes. */
    insideGateway: ipv4.optional(),
    /** af-packet: next hop for outside destinations that are not on the outside interface's prefixes (the default route). */
    outsideGateway: ipv4.optional(),
    /**
     * af-packet: PACKET_VNET_HDR on both sockets (a virtio_net_hdr before each
     * frame). Offloaded frames stay offloaded: TCP super-frames (GSO, up to
     * 64 KiB) pass whole and the kernel segments them on transmit; partial
     * checksums stay partial (the pseudo-header seed is rewritten for the new
     * addresses). Without it, a TSO/GRO super-frame cannot be sent (larger
     * than the MTU): turn those offloads off on the interfaces
     * (`ethtool -K <if> gro off`, and tso/gso off on local senders), and
     * partial checksums are completed in software.
     */
    vnetHdr: z.boolean().default(true),
    /** af-packet: receive ring blocks per interface (each `ringBlockSize` bytes). */
    ringBlocks: z.number().int().min(2).max(4096).default(64),
    ringBlockSize: pow2(1 << 12, 1 << 24).default(1 << 18),
    /** Packets per batch (one read loop per readable event). */
    batch: z.number().int().min(1).max(4096).default(256),
  }).strict().superRefine((io, ctx) => {
    if (io.mode !== 'af-packet') return;
    if (!io.inside) ctx.addIssue({ code: 'custom', path: ['inside'], message: 'io.mode af-packet needs the inside interface name' });
    if (!io.outside) ctx.addIssue({ code: 'custom', path: ['outside'], message: 'io.mode af-packet needs the outside interface name' });
    if (io.inside && io.inside === io.outside) ctx.addIssue({ code: 'custom', path: ['outside'], message: 'inside and outside must be two different interfaces' });
  }).default({ mode: 'tun', tun: 'pcl0', vnetHdr: true, ringBlocks: 64, ringBlockSize: 1 << 18, batch: 256 }),
  nat: z.object({
    /** Inside networks: packets from them are translated on their way out. */
    inside: z.array(prefix4).min(1, { message: 'name at least one inside prefix' }),
    /** Outside addresses (a list, or one prefix). */
    pool: z.union([z.array(ipv4).min(1), prefix4]),
    filtering: z.enum(['endpoint-independent', 'address-dependent', 'address-and-port-dependent']).default('address-dependent'),
    ports: z.object({ min: z.number().int().min(1024).max(65535), max: z.number().int().min(1024).max(65535) }).strict()
      .refine((p) => p.min <= p.max, { message: 'min must not exceed max' }).default({ min: 1024, max: 65535 }),
    preserveParity: z.boolean().default(true),
    preserveRangeClass: z.boolean().default(true),
    quarantine: seconds(120).default(120),
    maxMappingsPerSubscriber: z.number().int().min(1).max(65535 * 3).default(4096),
    timeouts: z.object({
      udp: seconds(120).default(300),
      tcpEstablished: seconds(7440).default(7440),
      tcpTransitory: seconds(240).default(240),
      icmp: seconds(60).default(60),
    }).strict().default({ udp: 300, tcpEstablished: 7440, tcpTransitory: 240, icmp: 60 }),
    holdUnsolicitedSyn: z.boolean().default(false),
    outsideMtu: z.number().int().min(576).max(65535).default(1500),
    /**
     * Decrement TTL in the appliance. Default: off in TUN mode (the host
     * already does it on each pass), on in af-packet mode (the appliance is
     * the router, RFC 1812 5.3.1).
     */
    decrementTtl: z.boolean().optional(),
    capacity: pow2(1024, 1 << 22).default(65536),
  }).strict(),
  flow: z.object({
    capacity: pow2(1024, 1 << 22).default(1 << 16),
  }).strict().default({ capacity: 1 << 16 }),
  admin: z.object({
    /** Unix socket of the admin API (`portcullis nat list` talks to it). */
    socket: z.string().min(1).default('/run/portcullis/admin.sock'),
  }).strict().default({ socket: '/run/portcullis/admin.sock' }),
  stats: z.object({
    /** Print a statistics line every N seconds (0: never). */
    interval: z.number().min(0).max(3600).default(1),
  }).strict().default({ interval: 1 }),
  log: z.object({
    level: z.enum(['debug', 'info', 'warn', 'error']).default('info'),
  }).strict().default({ level: 'info' }),
}).strict();

export type Config = z.infer<typeof ConfigSchema>;

function pathOf(p: readonly PropertyKey[]): string {
  let s = '';
  for (const k of p) s += typeof k === 'number' ? `[${k}]` : s ? `.${String(k)}` : String(k);
  return s || '(top level)';
}

/** Validates a parsed document; throws ConfigError naming every bad key path. */
export function validateConfig(doc: unknown, file = 'config'): Config {
  const r = ConfigSchema.safeParse(doc ?? {});
  if (r.success) return r.data;
  const problems = r.error.issues.map((i) => {
    if (i.code === 'unrecognized_keys') return `${pathOf(i.path)}: unknown key${i.keys.length > 1 ? 's' : ''} ${i.keys.map((k) => `'${k}'`).join(', ')}`;
    return `${pathOf(i.path)}: ${i.message}`;
  });
  throw new ConfigError(file, problems);
}

/** Reads and validates a YAML file. */
export function loadConfig(file: string): Config {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, [`cannot read the file: ${(err as Error).message}`]);
  }
  const doc = parseDocument(text, { prettyErrors: true });
  if (doc.errors.length) {
    throw new ConfigError(file, doc.errors.map((e) => `YAML syntax: ${e.message.split('\n')[0]}`));
  }
  return validateConfig(doc.toJS(), file);
}
