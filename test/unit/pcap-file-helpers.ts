// Helpers shared by the pcap-file tests: the corpus location, its oracles,
// reading a whole capture into plain records, and a hand-made pcapng builder.
// Test-only code: allocation is fine here.

import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Batch } from '../../src/io/batch.js';
import { openCapture, PcapFormatError } from '../../src/io/pcap-file.js';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const corpusDir = path.resolve(repoRoot, '../shared/pcaps');

/** Every capture of the corpus (file names). */
export function corpusFiles(): string[] {
  return fs.readdirSync(corpusDir).filter((f) => /\.(pcap|pcapng)$/.test(f)).sort();
}

export interface OracleRow {
  len: number;
  capLen: number;
  timeEpoch: string;
}

/** frame.len, frame.cap_len and frame.time_epoch of every row of X.fields.csv, by header name. */
export function readOracle(file: string): OracleRow[] {
  const lines = fs.readFileSync(path.join(corpusDir, file + '.fields.csv'), 'utf8').split('\n').filter((l) => l.length > 0);
  const head = lines[0].split(',');
  const iLen = head.indexOf('frame.len');
  const iCap = head.indexOf('frame.cap_len');
  const iTime = head.indexOf('frame.time_epoch');
  if (iLen < 0 || iCap < 0 || iTime < 0) throw new Error(`${file}.fields.csv lacks frame.len/frame.cap_len/frame.time_epoch`);
  return lines.slice(1).map((l) => {
    const c = l.split(',');
    return { len: Number(c[iLen]), capLen: Number(c[iCap]), timeEpoch: c[iTime] };
  });
}

/** The magic number of a file (little-endian read of its first 4 bytes). */
export function magicOf(file: string): number {
  const fd = fs.openSync(file, 'r');
  const b = Buffer.alloc(4);
  fs.readSync(fd, b, 0, 4, 0);
  fs.closeSync(fd);
  return b.readUInt32LE(0);
}

export interface Rec {
  capLen: number;
  origLen: number;
  tsSec: number;
  tsNsec: number;
  linkType: number;
  port: number;
  data: Buffer;
}

export interface ReadResult {
  recs: Rec[];
  error: unknown;
  /** recv() calls that returned > 0 */
  calls: number;
}

/**
 * Reads a whole capture into records. Stops at the first exception (kept in
 * `error`). Asserts nothing; bounded by `maxCalls` so a hang shows as a failure.
 */
export function readAll(file: string, chunkBytes?: number, batch = new Batch(), maxCalls = 1e7): ReadResult {
  const recs: Rec[] = [];
  let error: unknown = null;
  let calls = 0;
  let r;
  try {
    r = openCapture(file, chunkBytes === undefined ? {} : { chunkBytes });
  } catch (e) {
    return { recs, error: e, calls };
  }
  try {
    for (;;) {
      const n = r.recv(batch);
      if (n === 0) break;
      if (++calls > maxCalls) throw new Error('reader does not end');
      for (let i = 0; i < n; i++) {
        const o = batch.off[i];
        recs.push({
          capLen: batch.capLen[i], origLen: batch.origLen[i], tsSec: batch.tsSec[i], tsNsec: batch.tsNsec[i],
          linkType: batch.linkType[i], port: batch.port[i], data: Buffer.from(batch.arena.subarray(o, o + batch.capLen[i])),
        });
      }
    }
  } catch (e) {
    error = e;
  } finally {
    r.close();
  }
  return { recs, error, calls };
}

/** tshark's frame.time_epoch text for a normal timestamp. */
export function epochText(sec: number, nsec: number): string {
  return `${sec}.${String(nsec).padStart(9, '0')}`;
}

export function isPcapFormatError(e: unknown): e is PcapFormatError {
  return e instanceof PcapFormatError;
}

// ------------------------------------------------------------ pcapng builder

/** One pcapng block with both length fields (draft-ietf-opsawg-pcapng section 3.1). */
export function ngBlock(type: number, body: Buffer, le: boolean): Buffer {
  const pad = (4 - (body.length % 4)) % 4;
  const len = 12 + body.length + pad;
  const b = Buffer.alloc(len);
  w32(b, 0, type, le);
  w32(b, 4, len, le);
  body.copy(b, 8);
  w32(b, len - 4, len, le);
  return b;
}

export function w32(b: Buffer, off: number, v: number, le: boolean): void {
  if (le) b.writeUInt32LE(v >>> 0, off);
  else b.writeUInt32BE(v >>> 0, off);
}

export function w16(b: Buffer, off: number, v: number, le: boolean): void {
  if (le) b.writeUInt16LE(v, off);
  else b.writeUInt16BE(v, off);
}

/** Options list: [code, value] pairs, end-of-options appended. */
export function ngOptions(opts: Array<[number, Buffer]>, le: boolean): Buffer {
  const parts: Buffer[] = [];
  for (const [code, v] of opts) {
    const h = Buffer.alloc(4);
    w16(h, 0, code, le);
    w16(h, 2, v.length, le);
    parts.push(h, v, Buffer.alloc((4 - (v.length % 4)) % 4));
  }
  if (opts.length > 0) parts.push(Buffer.alloc(4));
  return Buffer.concat(parts);
}

export function ngShb(le: boolean, sectionLen = -1n, opts: Buffer = Buffer.alloc(0)): Buffer {
  const body = Buffer.alloc(16);
  w32(body, 0, 0x1a2b3c4d, le);
  w16(body, 4, 1, le);
  w16(body, 6, 0, le);
  if (le) body.writeBigInt64LE(sectionLen, 8);
  else body.writeBigInt64BE(sectionLen, 8);
  return ngBlock(0x0a0d0d0a, Buffer.concat([body, opts]), le);
}

export function ngIdb(le: boolean, linkType: number, snaplen: number, opts: Array<[number, Buffer]> = []): Buffer {
  const body = Buffer.alloc(8);
  w16(body, 0, linkType, le);
  w32(body, 4, snaplen, le);
  return ngBlock(1, Buffer.concat([body, ngOptions(opts, le)]), le);
}

/** Enhanced Packet Block; `units` is the 64-bit timestamp in the interface's units. */
export function ngEpb(le: boolean, ifId: number, units: bigint, data: Buffer, origLen = data.length, opts: Array<[number, Buffer]> = []): Buffer {
  const body = Buffer.alloc(20);
  w32(body, 0, ifId, le);
  w32(body, 4, Number(units >> 32n), le);
  w32(body, 8, Number(units & 0xffffffffn), le);
  w32(body, 12, data.length, le);
  w32(body, 16, origLen, le);
  const pad = Buffer.alloc((4 - (data.length % 4)) % 4);
  return ngBlock(6, Buffer.concat([body, data, pad, ngOptions(opts, le)]), le);
}

export function ngSpb(le: boolean, origLen: number, data: Buffer): Buffer {
  const body = Buffer.alloc(4);
  w32(body, 0, origLen, le);
  return ngBlock(3, Buffer.concat([body, data]), le);
}

/** Obsolete Packet Block (type 2). */
export function ngPb(le: boolean, ifId: number, units: bigint, data: Buffer, origLen = data.length): Buffer {
  const body = Buffer.alloc(20);
  w16(body, 0, ifId, le);
  w32(body, 4, Number(units >> 32n), le);
  w32(body, 8, Number(units & 0xffffffffn), le);
  w32(body, 12, data.length, le);
  w32(body, 16, origLen, le);
  return ngBlock(2, Buffer.concat([body, data]), le);
}

export function u64(v: bigint, le: boolean): Buffer {
  const b = Buffer.alloc(8);
  if (le) b.writeBigInt64LE(v);
  else b.writeBigInt64BE(v);
  return b;
}

/** A classic pcap file in memory (little- or big-endian, µs or ns). */
export function pcapBytes(le: boolean, ns: boolean, linkType: number, snaplen: number, recs: Array<{ sec: number; frac: number; data: Buffer; origLen?: number; capLen?: number }>): Buffer {
  const h = Buffer.alloc(24);
  w32(h, 0, ns ? 0xa1b23c4d : 0xa1b2c3d4, le);
  w16(h, 4, 2, le);
  w16(h, 6, 4, le);
  w32(h, 16, snaplen, le);
  w32(h, 20, linkType, le);
  const parts: Buffer[] = [h];
  for (const r of recs) {
    const rh = Buffer.alloc(16);
    w32(rh, 0, r.sec, le);
    w32(rh, 4, r.frac, le);
    w32(rh, 8, r.capLen ?? r.data.length, le);
    w32(rh, 12, r.origLen ?? r.data.length, le);
    parts.push(rh, r.data);
  }
  return Buffer.concat(parts);
}
