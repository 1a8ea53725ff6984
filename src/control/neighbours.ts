// Next hops and their MAC addresses for the af-packet router mode.
//
// The kernel keeps the interfaces, their addresses and ARP (RFC 826); we only
// read its neighbour table. The control plane (this file's NeighbourWatcher)
// reads `ip -j -4 neigh show dev X` every second, builds a fresh open-
// addressed table (address -> MAC) per side and swaps it in whole (DESIGN.md:
// control plane builds, data plane reads). The data path does a typed-array
// lookup per packet (NextHops.nextHop + NeighbourTable.slotOf) and, for a
// next hop with no MAC yet, drops the packet with a counter and appends the
// address to a small fixed ring the control plane drains: it then sends one
// UDP datagram to that address (rate-limited per address), which makes the
// kernel resolve it with ARP, and reads the table again shortly after.

import { execFileSync, execFile } from 'node:child_process';
import dgram from 'node:dgram';
import { fmix32 } from '../flow/hash.js';
import { formatIpv4 } from '../wire/ipv4.js';

/** Prefixes per interface the data path checks for "on-link". */
const MAX_PREFIXES = 8;
/** Addresses waiting for resolution between two control-plane ticks. */
const WANT_RING = 64;

function parseV4(s: string): number {
  const p = s.split('.').map(Number);
  return ((p[0] << 24) | (p[1] << 16) | (p[2] << 8) | p[3]) | 0;
}


function parseMac(s: string, out: Uint8Array, at: number): boolean {
  const p = s.split(':');
  if (p.length !== 6) return false;
  for (let k = 0; k < 6; k++) {
    const v = parseInt(p[k], 16);
    if (!(v >= 0 && v <= 255)) return false;
    out[at + k] = v;
  }
  return true;
}

/** What the kernel says about one interface: its MAC, its IPv4 addresses and connected prefixes. */
export interface InterfaceInfo {
  ifname: string;
  mac: Uint8Array;
  addrs: number[];
  prefixes: { net: number; mask: number }[];
}

/** Reads an interface's MAC and IPv4 addresses with `ip -j` (control plane, at start). */
export function readInterface(ifname: string): InterfaceInfo {
  let link: { address?: string }[];
  let addr: { addr_info?: { family: string; local: string; prefixlen: number }[] }[];
  try {
    link = JSON.parse(execFileSync('ip', ['-j', 'link', 'show', 'dev', ifname], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }));
    addr = JSON.parse(execFileSync('ip', ['-j', '-4', 'addr', 'show', 'dev', ifname], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }));
  } catch (e) {
    throw new Error(`interface '${ifname}': cannot read it with \`ip -j link/addr show dev ${ifname}\` (${(e as Error).message.split('\n')[0]}); check the name with \`ip link\` in this network namespace`);
  }
  const mac = new Uint8Array(6);
  if (!link[0]?.address || !parseMac(link[0].address, mac, 0)) throw new Error(`interface '${ifname}': no Ethernet address (af-packet mode needs an Ethernet interface)`);
  const addrs: number[] = [];
  const prefixes: { net: number; mask: number }[] = [];
  for (const a of addr[0]?.addr_info ?? []) {
    if (a.family !== 'inet') continue;
    const v = parseV4(a.local);
    const mask = a.prefixlen === 0 ? 0 : (~0 << (32 - a.prefixlen)) | 0;
    addrs.push(v);
    if (prefixes.length < MAX_PREFIXES) prefixes.push({ net: v & mask, mask });
  }
  return { ifname, mac, addrs, prefixes };
}

/**
 * One side's neighbours: address -> MAC, open addressing over typed arrays,
 * built whole by the control plane and never changed after (swapped).
 */
export class NeighbourTable {
  readonly keys: Int32Array;
  readonly used: Uint8Array;
  /** 6 bytes per slot. */
  readonly macs: Uint8Array;
  readonly mask: number;
  size = 0;

  constructor(capacity = 256) {
    let cap = 16;
    while (cap < capacity * 2) cap <<= 1;
    this.keys = new Int32Array(cap);
    this.used = new Uint8Array(cap);
    this.macs = new Uint8Array(cap * 6);
    this.mask = cap - 1;
  }

  /** Control plane: adds or replaces an entry; false when the table is full. */
  set(addr: number, mac: Uint8Array, macOff: number): boolean {
    addr |= 0;
    let s = fmix32(addr) & this.mask;
    for (let k = 0; k <= this.mask; k++) {
      if (this.used[s] === 0 || this.keys[s] === addr) {
        if (this.used[s] === 0) {
          if (this.size * 2 >= this.mask + 1) return false;
          this.size++;
        }
        this.used[s] = 1;
        this.keys[s] = addr;
        for (let j = 0; j < 6; j++) this.macs[s * 6 + j] = mac[macOff + j];
        return true;
      }
      s = (s + 1) & this.mask;
    }
    return false;
  }

  /** Data path: the slot holding `addr`'s MAC (at macs[slot * 6]), or -1. */
  slotOf(addr: number): number {
    const keys = this.keys, used = this.used, mask = this.mask;
    let s = fmix32(addr | 0) & mask;
    for (;;) {
      if (used[s] === 0) return -1;
      if (keys[s] === (addr | 0)) return s;
      s = (s + 1) & mask;
    }
  }
}

/**
 * Routing for the two sides: connected prefixes, the optional gateway, own
 * addresses and MACs (fixed at start) and the neighbour tables (swapped by
 * the watcher). Side 0 is inside, 1 outside.
 */
export class NextHops {
  /** Interface MACs, 6 bytes per side. */
  readonly ifMac = new Uint8Array(12);
  /** Connected prefixes: side * MAX_PREFIXES + k. */
  readonly net = new Int32Array(2 * MAX_PREFIXES);
  readonly mask = new Int32Array(2 * MAX_PREFIXES);
  readonly nPrefix = new Uint8Array(2);
  /** Gateway per side (0: none). */
  readonly gateway = new Int32Array(2);
  /** The appliance host's own addresses on either interface: the kernel answers those. */
  readonly own: Int32Array;
  readonly tables: [NeighbourTable, NeighbourTable] = [new NeighbourTable(), new NeighbourTable()];
  /** Ring of next hops without a MAC (the data path appends, the control plane drains). */
  readonly want = new Int32Array(WANT_RING);
  readonly wantSide = new Uint8Array(WANT_RING);
  wantCount = 0;
  /** Next hops wanted but the ring was full (they are asked for again by the next packet). */
  wantDropped = 0;

  constructor(readonly sides: [InterfaceInfo, InterfaceInfo], gateways: [number, number]) {
    const own: number[] = [];
    for (let s = 0; s < 2; s++) {
      this.ifMac.set(sides[s].mac, s * 6);
      const ps = sides[s].prefixes;
      this.nPrefix[s] = ps.length;
      for (let k = 0; k < ps.length; k++) {
        this.net[s * MAX_PREFIXES + k] = ps[k].net;
        this.mask[s * MAX_PREFIXES + k] = ps[k].mask;
      }
      this.gateway[s] = gateways[s] | 0;
      own.push(...sides[s].addrs);
    }
    this.own = Int32Array.from(own);
  }

  /** The next hop towards `dst` out of `side`: dst itself when on-link, else the side's gateway, else 0 (no route). */
  nextHop(side: number, dst: number): number {
    const base = side * MAX_PREFIXES, n = this.nPrefix[side];
    for (let k = 0; k < n; k++) if ((dst & this.mask[base + k]) === this.net[base + k]) return dst;
    return this.gateway[side];
  }

  /** True when `dst` is one of the host's own addresses. */
  isOwn(dst: number): boolean {
    const own = this.own;
    for (let k = 0; k < own.length; k++) if (own[k] === dst) return true;
    return false;
  }

  /** Data path: asks the control plane to resolve `addr` on `side` (deduplicated against the ring). */
  request(side: number, addr: number): void {
    const n = this.wantCount;
    for (let k = 0; k < n; k++) if (this.want[k] === addr) return;
    if (n >= WANT_RING) {
      this.wantDropped++;
      return;
    }
    this.want[n] = addr;
    this.wantSide[n] = side;
    this.wantCount = n + 1;
  }
}

interface NeighEntry { dst?: string; lladdr?: string; state?: string[] }

/**
 * Control plane: refreshes the neighbour tables every `intervalMs`, and
 * resolves wanted next hops by sending one UDP datagram to each (at most one
 * per address per second), so the kernel sends ARP requests.
 */
export class NeighbourWatcher {
  private timer: NodeJS.Timeout | null = null;
  private probeTimer: NodeJS.Timeout | null = null;
  private sock: dgram.Socket | null = null;
  private readonly lastProbe = new Map<number, number>();
  private refreshing = false;
  refreshes = 0;
  probes = 0;
  errors = 0;
  lastError = '';

  constructor(readonly hops: NextHops, readonly intervalMs = 1000) {}

  /** Reads both tables once (synchronously), then keeps them fresh. */
  start(): void {
    for (let s = 0; s < 2; s++) {
      try {
        this.hops.tables[s] = this.build(JSON.parse(execFileSync('ip', ['-j', '-4', 'neigh', 'show', 'dev', this.hops.sides[s].ifname], { encoding: 'utf8' })) as NeighEntry[]);
      } catch (e) {
        this.errors++;
        this.lastError = (e as Error).message;
      }
    }
    this.sock = dgram.createSocket('udp4');
    this.sock.on('error', (e) => { this.errors++; this.lastError = e.message; });
    this.sock.unref();
    this.timer = setInterval(() => this.refresh(), this.intervalMs);
    this.timer.unref();
    // The data path only writes the ring; look at it often so a new next hop
    // waits about one ARP round trip, not a whole refresh interval.
    this.probeTimer = setInterval(() => this.probeWanted(), 50);
    this.probeTimer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    if (this.probeTimer) clearInterval(this.probeTimer);
    this.timer = this.probeTimer = null;
    try { this.sock?.close(); } catch { /* closed */ }
    this.sock = null;
  }

  private build(entries: NeighEntry[]): NeighbourTable {
    const t = new NeighbourTable(Math.max(256, entries.length));
    const mac = new Uint8Array(6);
    for (const e of entries) {
      if (!e.dst || !e.lladdr || e.dst.includes(':')) continue;
      // INCOMPLETE and FAILED entries have no usable address; STALE ones still name the right host.
      if (e.state && (e.state.includes('FAILED') || e.state.includes('INCOMPLETE'))) continue;
      if (parseMac(e.lladdr, mac, 0)) t.set(parseV4(e.dst), mac, 0);
    }
    return t;
  }

  /** Reads both sides' neighbour tables and swaps them in. */
  refresh(): void {
    if (this.refreshing) return;
    this.refreshing = true;
    let pending = 2;
    for (let s = 0; s < 2; s++) {
      execFile('ip', ['-j', '-4', 'neigh', 'show', 'dev', this.hops.sides[s].ifname], { encoding: 'utf8' }, (err, out) => {
        if (err) {
          this.errors++;
          this.lastError = err.message;
        } else {
          try {
            this.hops.tables[s] = this.build(JSON.parse(out) as NeighEntry[]);
          } catch (e) {
            this.errors++;
            this.lastError = (e as Error).message;
          }
        }
        if (--pending === 0) {
          this.refreshing = false;
          this.refreshes++;
        }
      });
    }
  }

  private probeWanted(): void {
    const h = this.hops;
    const n = h.wantCount;
    if (n === 0 || !this.sock) return;
    const now = Date.now();
    let sent = 0;
    for (let k = 0; k < n; k++) {
      const a = h.want[k];
      if (now - (this.lastProbe.get(a) ?? 0) < 1000) continue;
      this.lastProbe.set(a, now);
      // Any datagram makes the kernel resolve the next hop (RFC 826); port 9 is discard.
      this.sock.send(PROBE, 9, formatIpv4(a));
      sent++;
    }
    h.wantCount = 0;
    if (this.lastProbe.size > 4096) this.lastProbe.clear();
    if (sent > 0) {
      this.probes += sent;
      setTimeout(() => this.refresh(), 20).unref();
      setTimeout(() => this.refresh(), 200).unref();
    }
  }
}

const PROBE = Buffer.from([0]);
