// Batch: the unit every source fills, every stage walks by index and every
// sink drains (DESIGN.md "Data flow"). One arena Buffer holds the packet bytes
// (back to back, or wherever a source puts them: always go through off[i]);
// typed arrays hold per-packet offsets, lengths, timestamps,
// ingress port and verdict. No object per packet.
//
// Lifetime: the arena is allocated once when the batch is created and lives as
// long as the Batch. A source overwrites it on every recv(); a stage that must
// keep a packet past the next recv() copies its bytes out.

import { ArrayCarver } from '../wire/carve.js';

export const Verdict = {
  FORWARD: 0,
  DROP: 1,
  LOCAL: 2, // for the appliance itself (control traffic)
  HOLD: 3,  // queued by a stage (for example a SYN hold queue)
} as const;
export type Verdict = (typeof Verdict)[keyof typeof Verdict];

export const DEFAULT_BATCH_PACKETS = 256;
export const DEFAULT_ARENA_BYTES = 256 * 2048;

export class Batch {
  readonly capacity: number;
  readonly arena: Buffer;
  /** Byte offset of packet i in arena. */
  readonly off: Uint32Array;
  /** Captured length of packet i (bytes present in arena). */
  readonly capLen: Uint32Array;
  /** Original (on-the-wire) length of packet i. */
  readonly origLen: Uint32Array;
  /** Timestamp seconds, as recorded (signed: some captures carry negative values). */
  readonly tsSec: Float64Array;
  /** Timestamp fraction in nanoseconds, as recorded (not normalised: a bad capture may hold >= 1e9). */
  readonly tsNsec: Uint32Array;
  /** Link type (LINKTYPE_*) of packet i; pcapng may mix interfaces of different types. */
  readonly linkType: Uint16Array;
  /** Ingress port (live) or interface id (pcapng). */
  readonly port: Uint16Array;
  readonly verdict: Uint8Array;
  /** Packets in the batch. */
  count = 0;
  /** Bytes of arena in use. */
  used = 0;

  /**
   * `carver` (optional) places the arena and arrays in a SharedArrayBuffer so
   * one thread can fill the batch and another walk it (src/pipeline/).
   */
  constructor(capacity = DEFAULT_BATCH_PACKETS, arenaBytes = DEFAULT_ARENA_BYTES, carver: ArrayCarver = new ArrayCarver()) {
    const c = carver;
    this.capacity = capacity;
    this.off = c.u32(capacity);
    this.capLen = c.u32(capacity);
    this.origLen = c.u32(capacity);
    this.tsSec = c.f64(capacity);
    this.tsNsec = c.u32(capacity);
    this.linkType = c.u16(capacity);
    this.port = c.u16(capacity);
    this.verdict = c.u8(capacity);
    this.arena = c.bytes(arenaBytes);
  }

  /** Bytes a batch takes in a shared region. */
  static byteLength(capacity = DEFAULT_BATCH_PACKETS, arenaBytes = DEFAULT_ARENA_BYTES): number {
    const c = new ArrayCarver();
    new Batch(capacity, 0, c);
    return ((c.offset + 7) & ~7) + arenaBytes + 8;
  }

  clear(): void {
    this.count = 0;
    this.used = 0;
  }

  /** Bytes still free in the arena. */
  free(): number {
    return this.arena.length - this.used;
  }

  /**
   * Appends one packet by copying `len` bytes of `src` from `srcOff`; returns
   * false (and copies nothing) when the batch or its arena is full. For
   * sources that cannot write into the arena directly; the file reader and
   * the native addon write in place instead.
   */
  push(src: Buffer, srcOff: number, len: number, origLen: number, tsSec: number, tsNsec: number, linkType: number, port = 0): boolean {
    const i = this.count;
    if (i >= this.capacity || this.used + len > this.arena.length) return false;
    const at = this.used;
    src.copy(this.arena, at, srcOff, srcOff + len);
    this.off[i] = at;
    this.capLen[i] = len;
    this.origLen[i] = origLen;
    this.tsSec[i] = tsSec;
    this.tsNsec[i] = tsNsec;
    this.linkType[i] = linkType;
    this.port[i] = port;
    this.verdict[i] = Verdict.FORWARD;
    this.used = at + len;
    this.count = i + 1;
    return true;
  }
}

/** The interface every packet source implements. */
export interface PacketSource {
  /** Fills `batch` (clearing it first); resolves with the number of packets, 0 at end of input. */
  recv(batch: Batch): Promise<number> | number;
  stats(): Record<string, number>;
  close(): void | Promise<void>;
}

/** The interface every packet sink implements. */
export interface PacketSink {
  /** Sends every packet of `batch` whose verdict is FORWARD. */
  send(batch: Batch): Promise<void> | void;
  stats(): Record<string, number>;
  close(): void | Promise<void>;
}
