// TUN device (the native addon): raw IPv4/IPv6 packets (LINKTYPE_RAW, no
// packet-information prefix) read until EAGAIN or the batch is full, and the
// FORWARD packets of a batch written back. The fd is non-blocking.
//
// Lifetime: every batch passed to recv()/send() is attached to the handle
// (the addon holds references to its arena and arrays) until close().

import type { Batch, PacketSink, PacketSource } from './batch.js';
import { loadNative, settle, SlotCache } from './native.js';
import type { NativeTun, ReadableCallback, TunOptions } from './native.js';

export type { TunOptions } from './native.js';

export class Tun implements PacketSource, PacketSink {
  /** The interface name (the kernel's choice when opened with ''). */
  readonly name: string;
  private readonly h: NativeTun;
  private readonly slots = new SlotCache();
  private closed = false;

  constructor(name: string, opts: TunOptions = {}) {
    this.h = new (loadNative().Tun)(name, opts);
    this.name = this.h.name();
  }

  static open(name: string, opts: TunOptions = {}): Tun {
    return new Tun(name, opts);
  }

  /** Clears `batch` and reads packets until EAGAIN or the batch is full; returns the count. */
  recv(batch: Batch): number {
    batch.count = 0;
    batch.used = 0;
    return settle(batch, 0, this.h.readBatch(this.slots.slotFor(this.h, batch), 0, 0));
  }

  /** Writes every FORWARD packet of `batch`. */
  send(batch: Batch): void {
    this.transmit(batch);
  }

  /** As send(), returning the number of packets the kernel took. */
  transmit(batch: Batch): number {
    if (batch.count === 0) return 0;
    return this.h.writeBatch(this.slots.slotFor(this.h, batch), 0, batch.count);
  }

  /** rx_* / tx_* counters (tx_full: dropped on a full queue, tx_errors: refused by the kernel). */
  stats(): Record<string, number> {
    return this.h.stats();
  }

  linkType(): number {
    return 101;
  }

  fd(): number {
    return this.h.fd();
  }

  start(cb: ReadableCallback): void {
    this.h.start(cb);
  }

  onReadable(cb: ReadableCallback): void {
    this.h.start(cb);
  }

  stop(): void {
    this.h.stop();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.h.close();
    this.slots.clear();
  }
}
