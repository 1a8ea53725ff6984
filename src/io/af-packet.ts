// AF_PACKET with a TPACKET_V3 receive ring and sendmmsg() transmit (the
// native addon). recv() copies the frames of every block the kernel has
// retired into the batch arena; send() transmits the FORWARD packets.
//
// Checksums: packets from a local socket over veth (TX checksum offload)
// arrive with a partial L4 checksum. Pass a flags array to recv() and check
// PacketFlag.CSUM_NOT_READY: such a packet must get its checksum completed
// before it is forwarded, or the receiver drops it.
//
// Lifetime: every batch (and flags array) passed to recv()/send() is attached
// to the handle (the addon holds references) until close().

import type { Batch, PacketSink, PacketSource } from './batch.js';
import { loadNative, settle, SlotCache } from './native.js';
import type { AfPacketOptions, NativeAfPacket, ReadableCallback } from './native.js';

export type { AfPacketOptions } from './native.js';
export { PacketFlag, VnetHdr } from './native.js';

export class AfPacket implements PacketSource, PacketSink {
  readonly ifname: string;
  private readonly h: NativeAfPacket;
  private readonly slots = new SlotCache();
  private closed = false;

  constructor(ifname: string, opts: AfPacketOptions = {}) {
    this.ifname = ifname;
    this.h = new (loadNative().AfPacket)(ifname, opts);
  }

  static open(ifname: string, opts: AfPacketOptions = {}): AfPacket {
    return new AfPacket(ifname, opts);
  }

  /**
   * Clears `batch` and copies the frames of the retired ring blocks into it;
   * returns the count. `flags` (a Uint8Array at least batch.capacity long)
   * receives PacketFlag bits per packet.
   */
  recv(batch: Batch, flags?: Uint8Array): number {
    batch.count = 0;
    batch.used = 0;
    return settle(batch, 0, this.h.recvBatch(this.slots.slotFor(this.h, batch, flags), 0, 0));
  }

  /** Transmits every FORWARD packet of `batch`; a full queue drops the rest (stats().tx_full). */
  send(batch: Batch): void {
    this.transmit(batch);
  }

  /** As send(), returning the number of packets the kernel took. */
  transmit(batch: Batch): number {
    if (batch.count === 0) return 0;
    return this.h.sendBatch(this.slots.slotForSend(this.h, batch), 0, batch.count);
  }

  /** Transmits the FORWARD packets of [start, start + count). */
  sendRange(batch: Batch, start: number, count: number): number {
    return this.h.sendBatch(this.slots.slotForSend(this.h, batch), start, count);
  }

  /** tp_packets / tp_drops / tp_freeze_q_cnt (PACKET_STATISTICS, accumulated) plus rx_* / tx_* counters. */
  stats(): Record<string, number> {
    return this.h.stats();
  }

  features(): ReturnType<NativeAfPacket['features']> {
    return this.h.features();
  }

  linkType(): number {
    return this.h.linkType();
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
