// Loader and types of the native addon (native/, DESIGN.md "native/"). The
// addon moves bytes between the kernel and the arenas of JS-owned batches;
// everything else is TypeScript. This module only loads it and describes
// its API; the classes in pcap-live.ts, tun.ts and af-packet.ts wrap it
// behind PacketSource / PacketSink.
//
// Buffer lifetime (native/README.md): a handle's attach(batch) takes
// persistent references to the batch and its arrays and keeps them until
// detach(slot) or close(). The addon writes into an arena only inside a call
// (dispatch / readBatch / recvBatch), never in the background.

import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import type { Batch } from './batch.js';

/** The arrays a native call reads or writes: a Batch satisfies it. */
export type NativeBatch = Pick<Batch, 'arena' | 'off' | 'capLen' | 'origLen' | 'tsSec' | 'tsNsec' | 'linkType' | 'port' | 'verdict'>;

/** Called once per readable event of the handle's fd (per batch, not per packet); `err` only when polling failed (polling has then stopped). */
export type ReadableCallback = (err?: Error) => void;

interface NativeHandle {
  /** Registers a batch (and an optional per-packet flags array) the handle may write into; returns its slot. */
  attach(batch: NativeBatch, flags?: Uint8Array): number;
  detach(slot: number): void;
  fd(): number;
  start(cb: ReadableCallback): void;
  stop(): void;
  close(): void;
}

export interface PcapLiveOptions {
  /** Bytes kept of each packet (64..262144, default 65535). An attached arena must hold at least one. */
  snaplen?: number;
  promisc?: boolean;
  /** Kernel capture buffer in bytes (default 4 MiB). */
  bufferSize?: number;
  /** BPF filter expression (pcap-filter(7)). */
  filter?: string;
  /** Deliver packets as they arrive (default true); false batches by timeoutMs. */
  immediate?: boolean;
  timeoutMs?: number;
  direction?: 'in' | 'out' | 'inout';
  /** Non-blocking dispatch (default true; required with start()). */
  nonblock?: boolean;
  /** Ingress port id written into Batch.port. */
  port?: number;
}

export interface NativePcapLive extends NativeHandle {
  /** One pcap_dispatch(): appends packets at index startCount / arena byte startUsed; returns packets added. */
  dispatch(slot: number, startCount: number, startUsed: number): number;
  stats(): { ps_recv: number; ps_drop: number; ps_ifdrop: number } & Record<string, number>;
  linkType(): number;
  inject(buf: Uint8Array, off: number, len: number): number;
  /** Injects the FORWARD packets of [start, start + count); returns packets sent. */
  injectBatch(slot: number, start: number, count: number): number;
  setNonblock(on: boolean): void;
}

export interface TunOptions {
  multiQueue?: boolean;
  /** Largest packet read (default 65535); readBatch stops when the arena has less free. */
  maxPacket?: number;
  port?: number;
}

export interface NativeTun extends NativeHandle {
  readBatch(slot: number, startCount: number, startUsed: number): number;
  writeBatch(slot: number, start: number, count: number): number;
  name(): string;
  stats(): Record<string, number>;
}

export interface AfPacketOptions {
  /** Blocks in the TPACKET_V3 receive ring (default 16). */
  ringBlocks?: number;
  /** Bytes per block: a power of two, a multiple of the page size (default 256 KiB). */
  blockSize?: number;
  /** Nominal frame size (default 2048); V3 frames are variable, this only sizes tp_frame_nr. */
  frameSize?: number;
  /** A block is handed over when full or after this many ms (default 1). */
  blockTimeoutMs?: number;
  /** PACKET_FANOUT group id, with fanoutMode. */
  fanoutGroup?: number;
  fanoutMode?: 'hash' | 'lb' | 'cpu' | 'rollover' | 'random' | 'qm';
  /** PACKET_QDISC_BYPASS: transmit straight to the driver (a full queue drops). */
  qdiscBypass?: boolean;
  /** Do not receive packets leaving the interface (default true). */
  ignoreOutgoing?: boolean;
  promisc?: boolean;
  /** Set up the receive ring (default true); false for a transmit-only socket. */
  rx?: boolean;
  /**
   * PACKET_VNET_HDR (default false): each frame in the arena is preceded by
   * its 10-byte virtio_net_hdr (little-endian: flags, gso_type, hdr_len,
   * gso_size, csum_start, csum_offset); off[i] points after it. recvBatch
   * writes it; sendBatch sends the 10 bytes before each frame as its header,
   * so GSO super-frames (PacketFlag.GSO) and partial checksums keep their
   * offload and the kernel segments / completes them on transmit.
   */
  vnetHdr?: boolean;
  port?: number;
}

/** Bytes of the virtio_net_hdr in front of each frame with vnetHdr, and its fields (offsets from the header start). */
export const VnetHdr = { LEN: 10, FLAGS: 0, GSO_TYPE: 1, HDR_LEN: 2, GSO_SIZE: 4, CSUM_START: 6, CSUM_OFFSET: 8, F_NEEDS_CSUM: 1 } as const;

export interface NativeAfPacket extends NativeHandle {
  recvBatch(slot: number, startCount: number, startUsed: number): number;
  sendBatch(slot: number, start: number, count: number): number;
  /** tp_* are PACKET_STATISTICS accumulated since open (the kernel resets them on each read). */
  stats(): { tp_packets: number; tp_drops: number; tp_freeze_q_cnt: number } & Record<string, number>;
  linkType(): number;
  features(): { ignoreOutgoing: boolean; ignoreOutgoingInKernel: boolean; qdiscBypass: boolean; fanout: boolean; vnetHdr: boolean; rx: boolean; ifindex: number; blockSize: number; ringBlocks: number };
}

/** Bits of the optional per-packet flags array (AF_PACKET). */
export const PacketFlag = {
  /** TP_STATUS_CSUMNOTREADY: the L4 checksum holds only the pseudo-header sum (checksum offload, e.g. veth); complete it before forwarding. */
  CSUM_NOT_READY: 1,
  /** TP_STATUS_CSUM_VALID: the device verified the checksum. */
  CSUM_VALID: 2,
  /** capLen < origLen. */
  TRUNCATED: 4,
  /** An offloaded 802.1Q tag was written back into the frame. */
  VLAN_RESTORED: 8,
  /** vnetHdr: a GSO super-frame (longer than the MTU); the kernel segments it on transmit. */
  GSO: 16,
} as const;

export interface NativeAddon {
  PcapLive: new (device: string, opts?: PcapLiveOptions) => NativePcapLive;
  Tun: new (name: string, opts?: TunOptions) => NativeTun;
  AfPacket: new (ifname: string, opts?: AfPacketOptions) => NativeAfPacket;
  libpcapVersion(): string;
  PacketFlag: typeof PacketFlag;
}

/** The addon's path relative to the repository root. */
export const ADDON_RELATIVE = 'native/build/Release/portcullis.node';
export const BUILD_COMMAND = 'cd native && ../node_modules/.bin/node-gyp rebuild --nodedir=/usr';

// src/io/native.ts and dist/io/native.js both sit two levels below the root.
const here = path.dirname(fileURLToPath(import.meta.url));
export const ADDON_PATH = path.resolve(here, '../..', ADDON_RELATIVE);

let cached: NativeAddon | null = null;
let loadError: Error | null = null;

/** Loads the addon once; throws an Error saying how to build it when it is missing or broken. */
export function loadNative(): NativeAddon {
  if (cached) return cached;
  if (loadError) throw loadError;
  if (!existsSync(ADDON_PATH)) {
    loadError = new Error(
      `the native addon is not built (${ADDON_PATH} is missing): build it with \`${BUILD_COMMAND}\` ` +
        '(needs the Debian packages libpcap-dev and build-essential); live capture can fall back to the cap package (src/io/cap.ts)',
    );
    (loadError as NodeJS.ErrnoException).code = 'ENATIVE_NOT_BUILT';
    throw loadError;
  }
  try {
    const require = createRequire(import.meta.url);
    cached = require(ADDON_PATH) as NativeAddon;
    return cached;
  } catch (e) {
    loadError = new Error(
      `the native addon at ${ADDON_PATH} does not load (${(e as Error).message}): rebuild it with \`${BUILD_COMMAND}\` for this Node version`,
      { cause: e },
    );
    (loadError as NodeJS.ErrnoException).code = 'ENATIVE_LOAD';
    throw loadError;
  }
}

/** The addon, or null when it is not built (see nativeLoadError()). */
export function tryLoadNative(): NativeAddon | null {
  try {
    return loadNative();
  } catch {
    return null;
  }
}

export function nativeLoadError(): Error | null {
  tryLoadNative();
  return loadError;
}

/**
 * Per-handle cache of batch slots: attach() once per batch (the addon then
 * holds references to its arrays until close()), reuse the slot on every
 * call. The last batch is checked first so the steady state is one
 * comparison per call.
 */
export class SlotCache {
  private readonly slots = new Map<object, number>();
  private lastBatch: object | null = null;
  private lastFlags: Uint8Array | undefined = undefined;
  private lastSlot = -1;
  private readonly flagsOf = new Map<object, Uint8Array | undefined>();

  slotFor(h: NativeHandle, batch: NativeBatch, flags?: Uint8Array): number {
    if (batch === this.lastBatch && flags === this.lastFlags) return this.lastSlot;
    let slot = this.slots.get(batch);
    if (slot !== undefined && this.flagsOf.get(batch) !== flags) {
      h.detach(slot);
      slot = undefined;
    }
    if (slot === undefined) {
      slot = h.attach(batch, flags);
      this.slots.set(batch, slot);
      this.flagsOf.set(batch, flags);
    }
    this.lastBatch = batch;
    this.lastFlags = flags;
    this.lastSlot = slot;
    return slot;
  }

  /**
   * For transmit calls, which never touch the flags array: the batch's slot
   * whatever flags it was attached with, so alternating recv(batch, flags)
   * and send(batch) on one handle does not detach and attach every time.
   */
  slotForSend(h: NativeHandle, batch: NativeBatch): number {
    if (batch === this.lastBatch) return this.lastSlot;
    const slot = this.slots.get(batch);
    if (slot !== undefined) return slot;
    return this.slotFor(h, batch);
  }

  /** Drops a batch's slot (the addon releases its references). */
  forget(h: NativeHandle, batch: NativeBatch): void {
    const slot = this.slots.get(batch);
    if (slot === undefined) return;
    h.detach(slot);
    this.slots.delete(batch);
    this.flagsOf.delete(batch);
    if (this.lastBatch === batch) {
      this.lastBatch = null;
      this.lastSlot = -1;
    }
  }

  clear(): void {
    this.slots.clear();
    this.flagsOf.clear();
    this.lastBatch = null;
    this.lastFlags = undefined;
    this.lastSlot = -1;
  }
}

/** Sets batch.count / batch.used after a native call appended `added` packets after `start`. */
export function settle(batch: Batch, start: number, added: number): number {
  const n = start + added;
  batch.count = n;
  if (n > 0) batch.used = batch.off[n - 1] + batch.capLen[n - 1];
  return added;
}
