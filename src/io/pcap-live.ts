// Live capture through libpcap (the native addon): one pcap_dispatch() per
// recv(), writing straight into the batch arena. Also a sink: send() injects
// the FORWARD packets of a batch on the same device.
//
// Lifetime: every batch passed to recv()/send() is attached to the handle
// (the addon holds references to its arena and arrays) until close().

import type { Batch, PacketSink, PacketSource } from './batch.js';
import { loadNative, settle, SlotCache } from './native.js';
import type { NativePcapLive, PcapLiveOptions, ReadableCallback } from './native.js';

export type { PcapLiveOptions } from './native.js';

export class PcapLive implements PacketSource, PacketSink {
  readonly device: string;
  private readonly h: NativePcapLive;
  private readonly slots = new SlotCache();
  private closed = false;

  constructor(device: string, opts: PcapLiveOptions = {}) {
    this.device = device;
    this.h = new (loadNative().PcapLive)(device, opts);
  }

  static open(device: string, opts: PcapLiveOptions = {}): PcapLive {
    return new PcapLive(device, opts);
  }

  /** Clears `batch` and fills it with what the kernel holds now (one pcap_dispatch); returns the count (0: nothing pending). */
  recv(batch: Batch): number {
    batch.count = 0;
    batch.used = 0;
    return settle(batch, 0, this.h.dispatch(this.slots.slotFor(this.h, batch), 0, 0));
  }

  /** Appends to a partly filled batch; returns packets added. */
  recvAppend(batch: Batch): number {
    const start = batch.count;
    return settle(batch, start, this.h.dispatch(this.slots.slotFor(this.h, batch), start, batch.used));
  }

  /** Injects every FORWARD packet of `batch`; a full socket buffer drops the rest (stats().tx_full). */
  send(batch: Batch): void {
    this.transmit(batch);
  }

  /** As send(), returning the number of packets the kernel took. */
  transmit(batch: Batch): number {
    if (batch.count === 0) return 0;
    return this.h.injectBatch(this.slots.slotFor(this.h, batch), 0, batch.count);
  }

  inject(buf: Uint8Array, off = 0, len = buf.length - off): number {
    return this.h.inject(buf, off, len);
  }

  /** ps_recv / ps_drop / ps_ifdrop from pcap_stats() plus rx_* / tx_* counted by the addon. */
  stats(): Record<string, number> {
    return this.h.stats();
  }

  /** LINKTYPE_* of the device (1 Ethernet, 101 raw IP, 113 Linux cooked). */
  linkType(): number {
    return this.h.linkType();
  }

  fd(): number {
    return this.h.fd();
  }

  setNonblock(on: boolean): void {
    this.h.setNonblock(on);
  }

  /** Calls `cb` once per readable event; the callback calls recv() itself. */
  start(cb: ReadableCallback): void {
    this.h.start(cb);
  }

  onReadable(cb: ReadableCallback): void {
    this.h.start(cb);
  }

  /** Stops polling; a stopped handle does not keep the process alive. */
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
