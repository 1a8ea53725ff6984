// The appliance configuration: YAML validated by a schema (zod), with errors
// that name the file, the key path and what was expected (STYLE.md 12).
// Addresses and prefixes are checked with `ip-address` here, on the control
// plane; the data path only ever sees the u32s derived from them.

import fs from 'node:fs';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import { Address4 } from 'ip-address';
import { GuardConfigSchema } from '../guard/config.js';
import { parseListen } from './listen.js';

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

const port = z.number().int().min(1).max(65535);
const mac = z.string().regex(/^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/, { message: 'expected a MAC address such as 02:00:00:00:00:01' });
const pemOrFile = z.string().min(1, { message: 'expected a PEM text or the path of a PEM file' });

/** Health check of a service's targets (HAProxy's check / inter / rise / fall / slowstart). */
const HealthSchema = z.object({
  type: z.enum(['tcp', 'http', 'tls', 'none']).default('tcp'),
  /** Seconds between the end of one check and the start of the next (jittered). */
  interval: seconds(0.05, 3600).default(2),
  timeout: seconds(0.05, 600).default(1),
  rise: z.number().int().min(1).max(100).default(2),
  fall: z.number().int().min(1).max(100).default(3),
  /** http: path and the status range that counts as healthy. */
  path: z.string().startsWith('/').default('/'),
  expectStatus: z.union([z.number().int().min(100).max(599), z.tuple([z.number().int().min(100).max(599), z.number().int().min(100).max(599)])]).default([200, 399]),
  /** tls: the SNI to send and whether to verify the certificate (a CA file or PEM). */
  servername: z.string().optional(),
  ca: pemOrFile.optional(),
  verify: z.boolean().default(true),
  /** Seconds over which a target that came back ramps its weight up (0: at once). */
  slowStart: seconds(0, 3600).default(0),
}).strict();
const HEALTH_DEFAULT = { type: 'tcp' as const, interval: 2, timeout: 1, rise: 2, fall: 3, path: '/', expectStatus: [200, 399] as [number, number], verify: true, slowStart: 0 };

const TargetSchema = z.object({
  address: ipv4,
  port,
  /** Relative share of new flows (Maglev); 0 drains the target: no new flows, established ones finish. */
  weight: z.number().int().min(0).max(65535).default(1),
  /** dsr-l2 / dsr-ipip / dsr-gue: the target's MAC (af-packet mode); read from the kernel's neighbour table when left out. */
  mac: mac.optional(),
  /** Administrative drain (like weight 0, but the health state and the configured weight stay visible). */
  drain: z.boolean().default(false),
  /** TLS and packet-path TCP services: concurrent connections to this target (0: unlimited), queued connections, longest wait. */
  maxconn: z.number().int().min(0).max(1_000_000).default(0),
  maxqueue: z.number().int().min(0).max(1_000_000).default(1024),
  queueTimeout: seconds(0, 3600).default(5),
}).strict();

/** A secure service: TLS terminated here (src/lb/tls/terminator.ts). */
const TlsServiceSchema = z.object({
  certificates: z.array(z.object({
    /** Server names this certificate answers for (exact, or *.example.com); empty: the default certificate. */
    names: z.array(z.string().min(1)).default([]),
    cert: pemOrFile,
    key: pemOrFile,
  }).strict()).min(1, { message: 'give at least one certificate' }),
  alpn: z.array(z.string().min(1)).default(['http/1.1']),
  /** proxy-v2: to the target in clear after a PROXY v2 header with the SSL TLV; tls-to-target: re-encrypted. */
  mode: z.enum(['proxy-v2', 'tls-to-target']).default('proxy-v2'),
  /** tls-to-target: also send the PROXY v2 header (before the target's handshake). */
  proxyProtocol: z.boolean().optional(),
  /** tls-to-target: verify the targets against this CA (file or PEM); without it the system roots. */
  targetCa: pemOrFile.optional(),
  targetVerify: z.boolean().default(true),
  requestClientCert: z.boolean().default(false),
  clientCa: pemOrFile.optional(),
  /** Actions on the limit events: queue, redispatch, backup, reject. */
  onFull: z.enum(['queue', 'redispatch', 'backup', 'reject']).default('queue'),
  onQueueFull: z.enum(['redispatch', 'backup', 'reject']).default('reject'),
  onQueueTimeout: z.enum(['redispatch', 'backup', 'reject']).default('reject'),
  backupTargets: z.array(TargetSchema).default([]),
  handshakeTimeout: seconds(0.1, 600).default(10),
  connectTimeout: seconds(0.1, 600).default(5),
  idleTimeout: seconds(1, 86400).default(300),
  /**
   * Which flows on vip:port are secure. Absent: all of them are TLS.
   * sniff: the first bytes decide (a TLS ClientHello, reassembled across
   * segments, is terminated; anything else goes in clear to the target with
   * a PROXY v2 header without the SSL TLV, so the target can tell). ports:
   * extra ports on the VIP whose flows are always TLS (vip:port itself is
   * then clear unless sniff is on).
   */
  classify: z.object({
    sniff: z.boolean().default(false),
    ports: z.array(port).default([]),
    sniffTimeout: seconds(0.05, 60).default(3),
  }).strict().optional(),
  /** Named target pools chosen by the ClientHello's SNI (sniPools); the service's own targets are the pool 'default'. Pools are not health-checked. */
  pools: z.record(z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/), z.array(TargetSchema).min(1)).default({}),
  /** SNI (exact, or *.example.com for one label) to pool name. */
  sniPools: z.record(z.string().min(1), z.string()).default({}),
  /**
   * tls-to-target: upstream TLS connections per target shared among client
   * connections (one client at a time, reused after it finishes, sessions
   * resumed), requests waiting FIFO or by priority (per SNI or pool name).
   */
  upstreamPool: z.object({
    size: z.number().int().min(1).max(10_000),
    waitTimeout: seconds(0, 600).default(5),
    order: z.enum(['fifo', 'priority']).default('fifo'),
    priorities: z.record(z.string(), z.number().int().min(-1000).max(1000)).default({}),
    idleTimeout: seconds(0.1, 86400).default(60),
    /** Seconds of target silence after a client finished before its connection may serve another client. */
    quiet: seconds(0.001, 60).default(0.1),
  }).strict().optional(),
  /** Session ticket keys (96 hex digits), the same on every appliance so each resumes the others' sessions. */
  ticketKeys: z.string().regex(/^[0-9a-fA-F]{96}$/, { message: 'expected 96 hex digits (48 bytes)' }).optional(),
}).strict().superRefine((t, ctx) => {
  for (const [sni, pool] of Object.entries(t.sniPools)) {
    if (pool !== 'default' && !(pool in t.pools)) ctx.addIssue({ code: 'custom', path: ['sniPools', sni], message: `no pool '${pool}' (have: default${Object.keys(t.pools).map((p) => `, ${p}`).join('')})` });
  }
  if (t.upstreamPool && t.mode !== 'tls-to-target') ctx.addIssue({ code: 'custom', path: ['upstreamPool'], message: 'only with mode tls-to-target (in proxy-v2 mode each client has its own clear connection)' });
});

const ServiceSchema = z.object({
  name: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, { message: 'expected a name of 1 to 64 letters, digits, _ . -' }),
  vip: ipv4,
  port,
  proto: z.enum(['tcp', 'udp']).default('tcp'),
  /**
   * nat: destination rewritten to the target, replies come back through the
   * appliance (targets route the clients' networks via it).
   * dsr-l2: destination MAC rewritten (af-packet mode); targets hold the VIP on
   * a local interface (arp_ignore=1, arp_announce=2) and answer directly.
   * dsr-ipip: IPv4-in-IPv4 (RFC 2003) to the target, which decapsulates.
   * dsr-gue: the packet in UDP + GUE (draft-ietf-intarea-gue) to the target's
   * decapsulator (`portcullis decap`, or Linux fou in gue mode); see `gue`.
   * Ignored for TLS services (terminated here).
   */
  mode: z.enum(['nat', 'dsr-l2', 'dsr-ipip', 'dsr-gue']).default('nat'),
  /**
   * dsr-gue: UDP destination port (default 6080, Katran's), variant 0 (a
   * 4-byte GUE header) or 1 (direct IP, Katran's format), UDP checksum
   * (default off: 0 is legal over IPv4, RFC 768; see src/lb/distributor.ts).
   */
  gue: z.object({
    port: port.default(6080),
    variant: z.union([z.literal(0), z.literal(1)]).default(0),
    checksum: z.boolean().default(false),
  }).strict().optional(),
  targets: z.array(TargetSchema).min(1, { message: 'give at least one target' }),
  health: HealthSchema.default(HEALTH_DEFAULT),
  /** Present: a secure service, TLS terminated by the appliance on vip:port. */
  tls: TlsServiceSchema.optional(),
  /**
   * Packet-path TCP services (not tls, which has its own): what to do when a
   * target is at its maxconn (queue the SYN, redispatch, a backup target,
   * reset), when its queue is full, and when a SYN waited queueTimeout
   * (src/lb/distributor.ts "Limits"). Used when a target has a maxconn.
   */
  limits: z.object({
    onFull: z.enum(['queue', 'redispatch', 'backup', 'reject']).default('queue'),
    onQueueFull: z.enum(['redispatch', 'backup', 'reject']).default('reject'),
    onQueueTimeout: z.enum(['redispatch', 'backup', 'reject']).default('reject'),
  }).strict().optional(),
  /** Packet-path TCP services: targets outside the Maglev table for the 'backup' action (the first with room). */
  backupTargets: z.array(TargetSchema).optional(),
}).strict();

const LbSchema = z.object({
  /** Outer source address of dsr-ipip and dsr-gue packets (default: the outside interface's first address). */
  localAddress: ipv4.optional(),
  /** Flow hash seed: the same on every appliance in front of the same targets. */
  seed: z.number().int().min(0).max(0xffffffff).optional(),
  services: z.array(ServiceSchema).min(1, { message: 'give at least one service' }),
}).strict().superRefine((lb, ctx) => {
  const seen = new Map<string, number>();
  lb.services.forEach((s, i) => {
    const k = `${s.proto}/${s.vip}:${s.port}`;
    const j = seen.get(k);
    if (j !== undefined) ctx.addIssue({ code: 'custom', path: ['services', i], message: `${k} is already services[${j}]` });
    seen.set(k, i);
    if (s.tls && s.proto !== 'tcp') ctx.addIssue({ code: 'custom', path: ['services', i, 'proto'], message: 'a TLS service is TCP' });
    if (s.gue && s.mode !== 'dsr-gue') ctx.addIssue({ code: 'custom', path: ['services', i, 'gue'], message: `only for mode dsr-gue (mode is ${s.mode})` });
    if (!s.tls && s.mode !== 'nat') {
      s.targets.forEach((t, ti) => {
        if (t.port !== s.port) ctx.addIssue({ code: 'custom', path: ['services', i, 'targets', ti, 'port'], message: `must equal the service port ${s.port} in mode ${s.mode} (direct server return does not rewrite ports)` });
      });
    }
    limitIssues(s, (path, message) => ctx.addIssue({ code: 'custom', path: ['services', i, ...path], message }));
  });
});

/** Packet-path limits of one service (src/lb/distributor.ts "Limits"); reports each problem with its key path below the service. */
function limitIssues(s: z.infer<typeof ServiceSchema>, issue: (path: (string | number)[], message: string) => void): void {
  const backups = s.backupTargets ?? [];
  if (s.tls) {
    if (s.limits) issue(['limits'], 'a TLS service takes its actions under tls (tls.onFull, tls.onQueueFull, tls.onQueueTimeout)');
    if (s.backupTargets) issue(['backupTargets'], 'a TLS service takes its backups under tls (tls.backupTargets)');
    return;
  }
  if (s.proto === 'udp') {
    // No handshake to hold a datagram against and no close to end a count (only the idle timeout).
    s.targets.forEach((t, ti) => { if (t.maxconn > 0) issue(['targets', ti, 'maxconn'], 'UDP services are not limited (no handshake to hold, no close to end a count): leave maxconn 0'); });
    if (s.limits) issue(['limits'], 'UDP services are not limited');
    if (s.backupTargets) issue(['backupTargets'], 'UDP services are not limited, so they have no backups');
    return;
  }
  const lim = s.limits;
  if (lim) {
    for (const k of ['onFull', 'onQueueFull', 'onQueueTimeout'] as const) {
      if (lim[k] === 'backup' && backups.length === 0) issue(['limits', k], "'backup' needs backupTargets");
    }
  }
  const targets = new Map(s.targets.map((t, ti) => [`${t.address}:${t.port}`, ti]));
  backups.forEach((t, bi) => {
    const ti = targets.get(`${t.address}:${t.port}`);
    if (ti !== undefined) issue(['backupTargets', bi], `${t.address}:${t.port} is already targets[${ti}]`);
    if (s.mode !== 'nat' && t.port !== s.port) issue(['backupTargets', bi, 'port'], `must equal the service port ${s.port} in mode ${s.mode} (direct server return does not rewrite ports)`);
  });
}
export type LbConfig = z.infer<typeof LbSchema>;
export type LbServiceConfig = z.infer<typeof ServiceSchema>;

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
  lb: LbSchema.optional(),
  /** The connection guard (src/guard/config.ts). Absent: off (why: see the head of that file); `guard: {}` turns it on with its defaults. */
  guard: GuardConfigSchema.optional(),
  flow: z.object({
    capacity: pow2(1024, 1 << 22).default(1 << 16),
  }).strict().default({ capacity: 1 << 16 }),
  admin: z.object({
    /** Unix socket of the admin API (`portcullis nat list` talks to it): no token, its mode (0600, root) guards it. */
    socket: z.string().min(1).default('/run/portcullis/admin.sock'),
    /**
     * The admin API and dashboard over HTTP: host:port with an IPv4 or
     * [IPv6] literal, or 'off'. Every request but the dashboard's page
     * needs `Authorization: Bearer <token>` (src/control/admin.ts).
     */
    listen: z.string().default('127.0.0.1:9180').superRefine((s, ctx) => {
      try { parseListen(s); } catch (e) { ctx.addIssue({ code: 'custom', message: (e as Error).message }); }
    }),
    /** The bearer token (at least 16 printable characters). Absent with tokenFile absent: a random one is written to admin.token next to the socket. */
    token: z.string().regex(/^[\x21-\x7e]{16,1024}$/, { message: 'expected 16 to 1024 printable ASCII characters without spaces' }).optional(),
    /** A file holding the token (first line; mode 0600 recommended). */
    tokenFile: z.string().min(1).optional(),
  }).strict().refine((a) => a.token === undefined || a.tokenFile === undefined, { message: 'give token or tokenFile, not both', path: ['tokenFile'] })
    .default({ socket: '/run/portcullis/admin.sock', listen: '127.0.0.1:9180' }),
  stats: z.object({
    /** Print a statistics line every N seconds (0: never). */
    interval: z.number().min(0).max(3600).default(1),
  }).strict().default({ interval: 1 }),
  log: z.object({
    level: z.enum(['debug', 'info', 'warn', 'error']).default('info'),
  }).strict().default({ level: 'info' }),
}).strict().superRefine((c, ctx) => {
  c.lb?.services.forEach((s, i) => {
    if (!s.tls && s.mode === 'dsr-l2' && c.io.mode !== 'af-packet') {
      ctx.addIssue({ code: 'custom', path: ['lb', 'services', i, 'mode'], message: 'dsr-l2 rewrites MAC addresses: it needs io.mode af-packet' });
    }
    // The encapsulated copies are new frames with no virtio_net_hdr in front, and an inner packet
    // whose checksum is still partial (vnet keeps it so) would reach the target broken.
    if (!s.tls && (s.mode === 'dsr-ipip' || s.mode === 'dsr-gue') && c.io.mode === 'af-packet' && c.io.vnetHdr) {
      ctx.addIssue({ code: 'custom', path: ['io', 'vnetHdr'], message: `${s.mode} (lb.services[${i}]) in af-packet mode needs io.vnetHdr: false (encapsulated copies carry no virtio header and need complete inner checksums)` });
    }
    // Held SYNs leave later as new frames, without their virtio header: a partial checksum would stay partial.
    const limited = !s.tls && s.proto === 'tcp' && [...s.targets, ...(s.backupTargets ?? [])].some((t) => t.maxconn > 0);
    if (limited && (s.limits?.onFull ?? 'queue') === 'queue' && c.io.mode === 'af-packet' && c.io.vnetHdr) {
      ctx.addIssue({ code: 'custom', path: ['lb', 'services', i, 'limits', 'onFull'], message: `queue${s.limits ? '' : ' (the default)'} in af-packet mode needs io.vnetHdr: false (a held SYN is sent later without its virtio header); or use redispatch, backup or reject` });
    }
  });
});

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
