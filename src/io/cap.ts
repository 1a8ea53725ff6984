// Fallback live source on the npm `cap` package, for when the native addon
// is not built (DESIGN.md "The required packages"). cap calls back once per
// packet with the packet in ONE Buffer it overwrites every time; we copy each
// packet into a staging batch as it arrives, and recv() moves the staged
// packets into the caller's batch. Slower than the addon (a JS call and two
// copies per packet) but the same PacketSource / PacketSink interface.
//
// Buffer lifetime (ENVIRONMENT.md "cap pitfalls"): cap's C++ keeps only a
// raw char* to the Buffer given to open(), with no handle that keeps it
// alive. `capBuffer` is a field of this object for the whole capture and is
// dropped only after cap.close(); never pass cap a temporary Buffer.
//
// What cap does not give: kernel timestamps (we stamp the arrival with the
// wall clock, millisecond resolution) and the original length of a packet cut
// by the buffer (origLen is then the captured length; counted as
// rx_truncated).

import { createRequire } from 'node:module';
import { Batch, Verdict } from './batch.js';
import type { PacketSink, PacketSource } from './batch.js';

export interface CapOptions {
  /** BPF filter (pcap-filter(7)); '' captures everything. */
  filter?: string;
  /** libpcap's kernel buffer in bytes (default 10 MiB). */
  bufferSize?: number;
  /** Size of cap's per-packet buffer: longer packets are cut (default 65535). */
  snaplen?: number;
  /** Packets staged between recv() calls before arrivals are dropped (default 4096). */
  stagingPackets?: number;
  /** Bytes staged between recv() calls (default 4 MiB). */
  stagingBytes?: number;
  port?: number;
}

interface CapInstance {
  open(device: string, filter: string, bufSize: number, buffer: Buffer): string;
  close(): void;
  send(buffer: Buffer, nBytes?: number): void;
  on(event: 'packet', listener: (nbytes: number, truncated: boolean) => void): void;
  removeAllListeners(event?: string): void;
}
interface CapModule {
  Cap: new () => CapInstance;
}

const CAP_LINK_TYPES: Record<string, number> = {
  NULL: 0,
  ETHERNET: 1,
  RAW: 101,
  LINKTYPE_LINUX_SLL: 113,
  IEEE802_11_RADIO: 127,
};

let capModule: CapModule | null = null;
let capError: Error | null = null;

function loadCap(): CapModule {
  if (capModule) return capModule;
  if (capError) throw capError;
  try {
    capModule = createRequire(import.meta.url)('cap') as CapModule;
    return capModule;
  } catch (e) {
    capError = new Error(
      `the cap package does not load (${(e as Error).message}): run \`npm ci\` with libpcap-dev installed, or build the native addon (native/README.md)`,
      { cause: e },
    );
    throw capError;
  }
}

/** Whether the cap package loads (its own native part is built). */
export function capAvailable(): boolean {
  try {
    loadCap();
    return true;
  } catch {
    return false;
  }
}

export class CapSource implements PacketSource, PacketSink {
  readonly device: string;
  /** LINKTYPE_* number of the device. */
  readonly linkTypeNum: number;
  /** cap's name for it ('ETHERNET', 'RAW', ...). */
  readonly linkTypeName: string;
  private cap: CapInstance | null;
  /** The Buffer cap writes every packet into; must stay referenced until close() (see the header). */
  private capBuffer: Buffer | null;
  private readonly staging: Batch;
  /** Index of the first staged packet not yet handed out. */
  private head = 0;
  private readonly port: number;
  private readonly scratch: Buffer;
  private cb: (() => void) | null = null;
  private scheduled = false;
  private readonly fire: () => void;
  private readonly counters = { rx_packets: 0, rx_bytes: 0, rx_truncated: 0, rx_staging_full: 0, tx_packets: 0, tx_bytes: 0, tx_errors: 0 };

  constructor(device: string, opts: CapOptions = {}) {
    const mod = loadCap();
    const snaplen = opts.snaplen ?? 65535;
    if (!Number.isInteger(snaplen) || snaplen < 64 || snaplen > 262144) throw new RangeError(`CapSource: snaplen must be an integer from 64 to 262144 (got ${snaplen})`);
    const stagingPackets = opts.stagingPackets ?? 4096;
    const stagingBytes = Math.max(opts.stagingBytes ?? 4 << 20, snaplen);
    this.device = device;
    this.port = opts.port ?? 0;
    this.staging = new Batch(stagingPackets, stagingBytes);
    this.scratch = Buffer.allocUnsafeSlow(snaplen);
    this.capBuffer = Buffer.allocUnsafeSlow(snaplen);
    this.fire = () => {
      this.scheduled = false;
      if (this.cb !== null && this.head < this.staging.count) this.cb();
    };
    const cap = new mod.Cap();
    let name: string;
    try {
      name = cap.open(device, opts.filter ?? '', opts.bufferSize ?? 10 << 20, this.capBuffer);
    } catch (e) {
      throw new Error(`cap capture on '${device}': ${(e as Error).message} (run as root or with CAP_NET_RAW; check the interface with \`ip link\`)`, { cause: e });
    }
    this.cap = cap;
    this.linkTypeName = name;
    const lt = CAP_LINK_TYPES[name];
    if (lt === undefined) {
      cap.close();
      throw new Error(`cap capture on '${device}': unsupported link type ${name}`);
    }
    this.linkTypeNum = lt;
    cap.on('packet', (nbytes, truncated) => this.stage(nbytes, truncated));
  }

  static open(device: string, opts: CapOptions = {}): CapSource {
    return new CapSource(device, opts);
  }

  // Called by cap once per packet, with the packet in capBuffer[0, nbytes).
  private stage(nbytes: number, truncated: boolean): void {
    const s = this.staging;
    if (s.count >= s.capacity || s.used + nbytes > s.arena.length) {
      if (this.head > 0) this.compact();
      if (s.count >= s.capacity || s.used + nbytes > s.arena.length) {
        this.counters.rx_staging_full++;
        return;
      }
    }
    const ms = Date.now();
    const sec = Math.floor(ms / 1000);
    s.push(this.capBuffer as Buffer, 0, nbytes, nbytes, sec, (ms - sec * 1000) * 1e6, this.linkTypeNum, this.port);
    this.counters.rx_packets++;
    this.counters.rx_bytes += nbytes;
    if (truncated) this.counters.rx_truncated++;
    // One notification per burst: cap delivers a burst inside one poll
    // callback, and setImmediate runs after the poll phase.
    if (this.cb !== null && !this.scheduled) {
      this.scheduled = true;
      setImmediate(this.fire);
    }
  }

  // Moves the staged packets not yet handed out to the front (rare: only
  // when a recv() could not take everything and staging then filled up).
  private compact(): void {
    const s = this.staging;
    const h = this.head;
    const base = s.off[h];
    s.arena.copyWithin(0, base, s.used);
    for (let i = h; i < s.count; i++) {
      const j = i - h;
      s.off[j] = s.off[i] - base;
      s.capLen[j] = s.capLen[i];
      s.origLen[j] = s.origLen[i];
      s.tsSec[j] = s.tsSec[i];
      s.tsNsec[j] = s.tsNsec[i];
      s.linkType[j] = s.linkType[i];
      s.port[j] = s.port[i];
      s.verdict[j] = s.verdict[i];
    }
    s.count -= h;
    s.used -= base;
    this.head = 0;
  }

  /** Clears `batch` and moves the packets staged since the last call into it; returns the count. */
  recv(batch: Batch): number {
    batch.count = 0;
    batch.used = 0;
    const s = this.staging;
    let i = this.head;
    while (i < s.count) {
      const len = s.capLen[i];
      if (!batch.push(s.arena, s.off[i], len, s.origLen[i], s.tsSec[i], s.tsNsec[i], s.linkType[i], s.port[i])) break;
      i++;
    }
    if (i >= s.count) {
      s.clear();
      this.head = 0;
    } else {
      this.head = i;
    }
    return batch.count;
  }

  /** Packets staged and not yet received. */
  pending(): number {
    return this.staging.count - this.head;
  }

  /** Sends every FORWARD packet of `batch` with pcap_sendpacket (one call per packet). */
  send(batch: Batch): void {
    this.transmit(batch);
  }

  transmit(batch: Batch): number {
    const cap = this.cap;
    if (cap === null) throw new Error(`CapSource.send: the capture on '${this.device}' is closed`);
    let sent = 0;
    for (let i = 0; i < batch.count; i++) {
      if (batch.verdict[i] !== Verdict.FORWARD) continue;
      const len = batch.capLen[i];
      if (len > this.scratch.length) {
        this.counters.tx_errors++;
        continue;
      }
      // cap sends from offset 0 of the Buffer it is given: copy, don't slice.
      batch.arena.copy(this.scratch, 0, batch.off[i], batch.off[i] + len);
      try {
        cap.send(this.scratch, len);
        sent++;
        this.counters.tx_bytes += len;
      } catch {
        this.counters.tx_errors++;
      }
    }
    this.counters.tx_packets += sent;
    return sent;
  }

  stats(): Record<string, number> {
    return { ...this.counters };
  }

  linkType(): number {
    return this.linkTypeNum;
  }

  /** Calls `cb` once per burst of arrivals (after cap's poll callback); the callback calls recv(). */
  start(cb: () => void): void {
    this.cb = cb;
    if (this.head < this.staging.count && !this.scheduled) {
      this.scheduled = true;
      setImmediate(this.fire);
    }
  }

  onReadable(cb: () => void): void {
    this.start(cb);
  }

  /** Stops notifications; cap itself keeps capturing (and the process alive) until close(). */
  stop(): void {
    this.cb = null;
  }

  close(): void {
    this.cb = null;
    const cap = this.cap;
    if (cap === null) return;
    this.cap = null;
    cap.removeAllListeners('packet');
    cap.close();
    // Only now may the Buffer go: cap no longer writes into it.
    this.capBuffer = null;
  }
}
