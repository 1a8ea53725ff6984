// Streaming pcap / pcapng reader and pcap writer (DESIGN.md "io/").
//
// Reading: one reusable chunk Buffer is filled with fs.readSync; recv() walks
// the record headers in the chunk and copies whole runs of consecutive records
// into the batch arena with ONE Buffer.copy per run (not one per record: in
// Node 20 a Buffer.copy costs ~120 ns whatever its size, more than all the
// other per-record work together). The arena therefore holds the record
// headers between the packets; off/capLen name the packet bytes, and
// batch.used counts every arena byte written. A run ends when the chunk must
// be refilled or a non-packet pcapng block is met, so the record that
// straddles a chunk boundary is simply the first of the next run.
//
// Memory is constant whatever the file size: the chunk only grows when one
// record (pcap) or block (pcapng) is larger than it, up to MAX_RECORD_BYTES /
// MAX_BLOCK_BYTES, and only when the file really holds that many bytes.
//
// Errors: a damaged file raises PcapFormatError naming the file, the byte
// offset and what was wrong. recv() first returns every good record before
// the damage; the next recv() throws (and so does every later one).

import * as fs from 'node:fs';
import { Batch, PacketSource, Verdict } from './batch.js';

/**
 * Largest captured length accepted in a record. libpcap (max_snaplen_for_dlt,
 * sf-pcap.c) and Wireshark (WTAP_MAX_PACKET_SIZE_STANDARD) both refuse a
 * record above 262144 bytes for the ordinary link types with "invalid packet
 * capture length" / "bigger than maximum"; we do the same.
 */
export const MAX_CAPLEN = 262144;
/** pcap record header bytes. */
const PCAP_REC_HDR = 16;
/** pcap file header bytes. */
export const PCAP_FILE_HDR = 24;
const MAX_RECORD_BYTES = PCAP_REC_HDR + MAX_CAPLEN;
/**
 * Largest pcapng block accepted. libpcap's pcapng reader caps blocks at
 * 16 MiB (INITIAL_MAX_BLOCKSIZE); a packet block holds at most MAX_CAPLEN of
 * data plus its options, so only odd non-packet blocks get near this.
 */
const MAX_BLOCK_BYTES = 16 * 1024 * 1024;
/** pcapng interfaces per section: the interface id becomes batch.port (Uint16Array). */
const MAX_INTERFACES = 65536;
const DEFAULT_CHUNK_BYTES = 1024 * 1024;
const MIN_CHUNK_BYTES = 32;

// Magic numbers as read little-endian from the first 4 bytes.
const MAGIC_US_LE = 0xa1b2c3d4; // written by a little-endian host: bytes d4 c3 b2 a1
const MAGIC_US_BE = 0xd4c3b2a1;
const MAGIC_NS_LE = 0xa1b23c4d;
const MAGIC_NS_BE = 0x4d3cb2a1;
/** pcapng Section Header Block type; a palindrome, so byte order does not matter. */
const PCAPNG_SHB = 0x0a0d0d0a;
const PCAPNG_BOM = 0x1a2b3c4d;

// pcapng block types (draft-ietf-opsawg-pcapng section 11.1).
const BT_IDB = 1;
const BT_PB = 2; // obsolete Packet Block (appendix A)
const BT_SPB = 3;
const BT_EPB = 6;

// IDB option codes (draft-ietf-opsawg-pcapng section 4.2).
const OPT_ENDOFOPT = 0;
const OPT_IF_TSRESOL = 9;
const OPT_IF_TSOFFSET = 14;

export const CaptureFormat = { PCAP: 'pcap', PCAPNG: 'pcapng' } as const;
export type CaptureFormat = (typeof CaptureFormat)[keyof typeof CaptureFormat];
export type ByteOrder = 'le' | 'be';

/** A damaged or unsupported capture file; `offset` is the byte offset of the bad header or block. */
export class PcapFormatError extends Error {
  readonly offset: number;
  readonly file: string;
  constructor(file: string, offset: number, what: string) {
    super(`${file}: byte ${offset}: ${what}`);
    this.name = 'PcapFormatError';
    this.offset = offset;
    this.file = file;
  }
}

export interface OpenCaptureOptions {
  /** Size of the read chunk (default 1 MiB). It grows only for a record or block larger than it. */
  chunkBytes?: number;
}

/** Opens a pcap or pcapng file, detected by its magic number. Throws PcapFormatError for a bad header. */
export function openCapture(path: string, opts: OpenCaptureOptions = {}): PcapFileReader {
  return new PcapFileReader(path, opts.chunkBytes ?? DEFAULT_CHUNK_BYTES);
}

// Timestamp conversion scratch (pcapng): div64 and convertTs write here so
// that nothing is allocated per record.
let divQHi = 0;
let divQLo = 0;
let divR = 0;
let tsOutSec = 0;
let tsOutNsec = 0;

/**
 * Exact 64-bit by number division, for divisors below 2^37: long division in
 * base 2^16 keeps every intermediate below 2^53. Quotient in divQHi:divQLo,
 * remainder in divR.
 */
function div64(hi: number, lo: number, d: number): void {
  let r = 0;
  let cur = r * 65536 + (hi >>> 16);
  const q3 = Math.floor(cur / d);
  r = cur - q3 * d;
  cur = r * 65536 + (hi & 0xffff);
  const q2 = Math.floor(cur / d);
  r = cur - q2 * d;
  cur = r * 65536 + (lo >>> 16);
  const q1 = Math.floor(cur / d);
  r = cur - q1 * d;
  cur = r * 65536 + (lo & 0xffff);
  const q0 = Math.floor(cur / d);
  r = cur - q0 * d;
  // Each digit is < 2^16 except the top one, which may hold carries beyond
  // 32 bits only if the quotient exceeds 2^64 (impossible: dividend < 2^64).
  divQHi = q3 * 65536 + q2;
  divQLo = q1 * 65536 + q0;
  divR = r;
}

/** How an interface's timestamp units map to seconds. */
const TsKind = {
  POW10_LE9: 0, // 10^-k, k <= 9: units per second 10^k, nsec = rem * 10^(9-k)
  POW10_GT9: 1, // 10^-k, 9 < k <= 19: divide to ns first
  POW2: 2,      // 2^-k, k <= 63
} as const;

/**
 * Converts a 64-bit pcapng timestamp (hi:lo units) into tsOutSec/tsOutNsec.
 * `div` is the units per second (POW10_LE9), 10^(k-9) (POW10_GT9) or k (POW2);
 * `mul` is 10^(9-k) for POW10_LE9.
 */
function convertTs(hi: number, lo: number, kind: number, div: number, mul: number): void {
  if (kind === TsKind.POW10_LE9) {
    if (hi < 0x200000) {
      // Fast path: the timestamp fits in 53 bits, so plain doubles are exact
      // except that t / div may round up across an integer; fix that below.
      const t = hi * 4294967296 + lo;
      let s = Math.floor(t / div);
      let rem = t - s * div;
      if (rem < 0) { s--; rem += div; }
      tsOutSec = s;
      tsOutNsec = rem * mul;
      return;
    }
    div64(hi, lo, div);
    tsOutSec = divQHi * 4294967296 + divQLo;
    tsOutNsec = divR * mul;
  } else if (kind === TsKind.POW10_GT9) {
    div64(hi, lo, div);
    div64(divQHi, divQLo, 1e9);
    tsOutSec = divQHi * 4294967296 + divQLo;
    tsOutNsec = divR;
  } else {
    const k = div;
    if (k === 0) {
      tsOutSec = hi * 4294967296 + lo;
      tsOutNsec = 0;
    } else if (k < 32) {
      const p = 2 ** k;
      const frac = lo % p;
      tsOutSec = hi * 2 ** (32 - k) + (lo - frac) / p;
      // 1e9 = 1953125 * 2^9: frac * 1953125 < 2^52 stays exact.
      tsOutNsec = k >= 9 ? Math.floor((frac * 1953125) / 2 ** (k - 9)) : Math.floor((frac * 1e9) / p);
    } else {
      const p = 2 ** (k - 32);
      const fhi = hi % p;
      tsOutSec = (hi - fhi) / p;
      // Sub-nanosecond binary resolutions: a double is within 1 ns here.
      tsOutNsec = Math.floor(((fhi * 4294967296 + lo) / 2 ** k) * 1e9);
    }
  }
}

/**
 * Reader for one capture file. recv() is synchronous; see the file comment
 * for the arena layout and the error contract.
 */
export class PcapFileReader implements PacketSource {
  readonly path: string;
  readonly format: CaptureFormat;
  /** Byte order of the file header (pcapng: of the first section). */
  readonly byteOrder: ByteOrder;
  /** pcap: from the header; pcapng: of the first interface. */
  readonly nanosecond: boolean;
  /** LINKTYPE_* of the file (pcap) or of the first interface (pcapng); -1 when a pcapng file has none. */
  readonly linkType: number;
  /** Snap length from the file header (pcap) or the first interface (pcapng); 0 = none given. */
  readonly snaplen: number;
  /** Size of the file when it was opened. */
  readonly fileSize: number;

  private fd: number;
  private buf: Buffer;
  /** Parse position in buf. */
  private pos = 0;
  /** End of valid bytes in buf. */
  private end = 0;
  /** File offset of buf[0]. */
  private bufFileOff = 0;
  private pending: PcapFormatError | null = null;
  private eof = false;
  private closed = false;

  // pcap state
  private le = true;
  private fracMul = 1000;
  private pcapLink = 0;

  // pcapng state (per section; arrays grow only when an IDB is read)
  private ngLe = true;
  private ifLink: number[] = [];
  private ifSnap: number[] = [];
  private ifTsKind: number[] = [];
  private ifTsDiv: number[] = [];
  private ifTsMul: number[] = [];
  private ifTsOff: number[] = [];
  private ifCount = 0;
  private sections = 0;

  // stats
  private nRecords = 0;
  private nBytes = 0;
  private nOrigBytes = 0;
  private nOverSnap = 0;
  private nSkippedBlocks = 0;

  constructor(path: string, chunkBytes: number = DEFAULT_CHUNK_BYTES) {
    if (!Number.isInteger(chunkBytes) || chunkBytes <= 0) throw new RangeError(`chunkBytes must be a positive integer, got ${chunkBytes}`);
    this.path = path;
    this.fd = fs.openSync(path, 'r');
    try {
      this.fileSize = fs.fstatSync(this.fd).size;
      this.buf = Buffer.allocUnsafeSlow(Math.max(MIN_CHUNK_BYTES, chunkBytes));
      const avail = this.fill(PCAP_FILE_HDR);
      if (avail < 4) throw this.err(0, `file too short for a capture header (${avail} bytes)`);
      const b = this.buf;
      const m = (b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)) >>> 0;
      if (m === PCAPNG_SHB) {
        this.format = CaptureFormat.PCAPNG;
        this.ngLe = true;
        this.nanosecond = false;
        this.linkType = -1;
        this.snaplen = 0;
        this.byteOrder = 'le';
        this.readPcapngPrelude();
        this.byteOrder = this.sections > 0 && !this.ngLe ? 'be' : 'le';
        if (this.ifCount > 0) {
          this.linkType = this.ifLink[0];
          this.snaplen = this.ifSnap[0];
          // Finer than a microsecond (2^-20 s is 0.95 µs).
          const k = this.ifTsKind[0];
          this.nanosecond = k === TsKind.POW10_GT9 || (k === TsKind.POW10_LE9 ? this.ifTsDiv[0] > 1e6 : this.ifTsDiv[0] >= 20);
        }
        return;
      }
      let le: boolean;
      let ns: boolean;
      if (m === MAGIC_US_LE) { le = true; ns = false; }
      else if (m === MAGIC_US_BE) { le = false; ns = false; }
      else if (m === MAGIC_NS_LE) { le = true; ns = true; }
      else if (m === MAGIC_NS_BE) { le = false; ns = true; }
      else throw this.err(0, `bad magic 0x${m.toString(16).padStart(8, '0')} (not pcap or pcapng)`);
      if (avail < PCAP_FILE_HDR) throw this.err(0, `truncated pcap file header (${avail} of ${PCAP_FILE_HDR} bytes)`);
      this.format = CaptureFormat.PCAP;
      this.le = le;
      this.byteOrder = le ? 'le' : 'be';
      this.nanosecond = ns;
      this.fracMul = ns ? 1 : 1000;
      const major = this.u16(b, 4, le);
      if (major !== 2) throw this.err(4, `unsupported pcap major version ${major} (expected 2)`);
      this.snaplen = this.u32(b, 16, le);
      // The upper 16 bits of the link-type field carry FCS length and other
      // flags (pcap spec section 4, "LinkType and additional information");
      // libpcap and tshark use only the low 16 bits as LINKTYPE.
      this.pcapLink = this.u32(b, 20, le) & 0xffff;
      this.linkType = this.pcapLink;
      this.pos = PCAP_FILE_HDR;
    } catch (e) {
      fs.closeSync(this.fd);
      this.closed = true;
      throw e;
    }
  }

  /** Bytes consumed so far (file offset of the next unread record or block). */
  get bytesRead(): number {
    return this.bufFileOff + this.pos;
  }

  stats(): Record<string, number> {
    return {
      records: this.nRecords,
      bytes: this.nBytes,
      origBytes: this.nOrigBytes,
      offset: this.bufFileOff + this.pos,
      fileSize: this.fileSize,
      capOverSnaplen: this.nOverSnap,
      skippedBlocks: this.nSkippedBlocks,
      sections: this.sections,
      interfaces: this.ifCount,
    };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    fs.closeSync(this.fd);
  }

  /**
   * Clears `batch` and fills it with as many whole records as fit. Returns the
   * count, 0 at end of file. Throws PcapFormatError on the call after the
   * last good record before damage.
   */
  recv(batch: Batch): number {
    batch.clear();
    if (this.pending !== null) throw this.pending;
    if (this.closed) throw new Error(`${this.path}: recv() after close()`);
    if (this.eof) return 0;
    const n = this.format === CaptureFormat.PCAP ? this.recvPcap(batch) : this.recvPcapng(batch);
    if (n === 0 && this.pending !== null) throw this.pending;
    return n;
  }

  // ---------------------------------------------------------------- pcap

  private recvPcap(batch: Batch): number {
    const arena = batch.arena;
    const arenaLen = arena.length;
    const cap = batch.capacity;
    const offA = batch.off;
    const capA = batch.capLen;
    const origA = batch.origLen;
    const secA = batch.tsSec;
    const nsA = batch.tsNsec;
    const linkA = batch.linkType;
    const portA = batch.port;
    const verA = batch.verdict;
    const le = this.le;
    const fracMul = this.fracMul;
    const link = this.pcapLink;
    const snap = this.snaplen;
    let buf = this.buf;
    let pos = this.pos;
    let end = this.end;
    // Current run: buf[runStart, pos) goes to arena[runBase, ...).
    let runStart = pos;
    let runBase = 0;
    let n = 0;
    let bytes = 0;
    let orig = 0;
    let over = 0;
    while (n < cap) {
      if (end - pos < PCAP_REC_HDR) {
        if (pos > runStart) buf.copy(arena, runBase, runStart, pos);
        runBase += pos - runStart;
        this.pos = pos;
        const avail = this.fill(PCAP_REC_HDR);
        buf = this.buf; pos = this.pos; end = this.end; runStart = pos;
        if (avail < PCAP_REC_HDR) {
          if (avail === 0) this.eof = true;
          else this.pending = this.err(this.bufFileOff + pos, `truncated record header (${avail} of ${PCAP_REC_HDR} bytes at end of file)`);
          break;
        }
      }
      let sec: number, frac: number, capLen: number, origLen: number;
      if (le) {
        sec = (buf[pos] | (buf[pos + 1] << 8) | (buf[pos + 2] << 16) | (buf[pos + 3] << 24)) >>> 0;
        frac = (buf[pos + 4] | (buf[pos + 5] << 8) | (buf[pos + 6] << 16) | (buf[pos + 7] << 24)) >>> 0;
        capLen = (buf[pos + 8] | (buf[pos + 9] << 8) | (buf[pos + 10] << 16) | (buf[pos + 11] << 24)) >>> 0;
        origLen = (buf[pos + 12] | (buf[pos + 13] << 8) | (buf[pos + 14] << 16) | (buf[pos + 15] << 24)) >>> 0;
      } else {
        sec = ((buf[pos] << 24) | (buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]) >>> 0;
        frac = ((buf[pos + 4] << 24) | (buf[pos + 5] << 16) | (buf[pos + 6] << 8) | buf[pos + 7]) >>> 0;
        capLen = ((buf[pos + 8] << 24) | (buf[pos + 9] << 16) | (buf[pos + 10] << 8) | buf[pos + 11]) >>> 0;
        origLen = ((buf[pos + 12] << 24) | (buf[pos + 13] << 16) | (buf[pos + 14] << 8) | buf[pos + 15]) >>> 0;
      }
      if (capLen > MAX_CAPLEN) {
        // Same limit and wording as libpcap ("invalid packet capture length
        // N, bigger than snaplen of S") and tshark ("bigger than maximum of").
        this.pending = this.err(this.bufFileOff + pos, snap > 0 && snap <= MAX_CAPLEN
          ? `record caplen ${capLen} exceeds snaplen ${snap}`
          : `record caplen ${capLen} exceeds maximum ${MAX_CAPLEN}`);
        break;
      }
      const need = PCAP_REC_HDR + capLen;
      if (end - pos < need) {
        if (pos > runStart) buf.copy(arena, runBase, runStart, pos);
        runBase += pos - runStart;
        this.pos = pos;
        const avail = this.fill(need);
        buf = this.buf; pos = this.pos; end = this.end; runStart = pos;
        if (avail < need) {
          this.pending = this.err(this.bufFileOff + pos, `truncated record: caplen ${capLen} but only ${avail - PCAP_REC_HDR} bytes left in file`);
          break;
        }
      }
      const at = runBase + (pos - runStart) + PCAP_REC_HDR;
      if (at + capLen > arenaLen) {
        if (n === 0 && runBase === 0) throw new RangeError(`${this.path}: batch arena (${arenaLen} bytes) cannot hold one record of ${need} bytes; use an arena of at least ${MAX_RECORD_BYTES} bytes`);
        break;
      }
      // A record larger than the snap length is delivered whole, as tshark
      // does (zeek-trunc_trunc-hdr.pcap: snaplen 1, caplen 8); libpcap would
      // cut it to the snap length. caplen > origlen is passed on as well:
      // neither libpcap nor tshark rejects it.
      if (capLen > snap) over++;
      offA[n] = at;
      capA[n] = capLen;
      origA[n] = origLen;
      secA[n] = sec;
      // µs files: tsNsec = usec * 1000, wrapping mod 2^32 like Wireshark's
      // 32-bit arithmetic for an out-of-range usec; ns files: raw value.
      nsA[n] = frac * fracMul;
      linkA[n] = link;
      portA[n] = 0;
      verA[n] = Verdict.FORWARD;
      n++;
      bytes += capLen;
      orig += origLen;
      pos += need;
    }
    if (pos > runStart) buf.copy(arena, runBase, runStart, pos);
    runBase += pos - runStart;
    this.pos = pos;
    batch.count = n;
    batch.used = runBase;
    this.nRecords += n;
    this.nBytes += bytes;
    this.nOrigBytes += orig;
    this.nOverSnap += over;
    return n;
  }

  // -------------------------------------------------------------- pcapng

  /**
   * Reads the first SHB and every non-packet block up to the first IDB (so
   * linkType/snaplen are known after open), stopping before the first packet
   * block. Errors here are thrown from openCapture.
   */
  private readPcapngPrelude(): void {
    while (this.ifCount === 0) {
      const r = this.nextNgBlock();
      if (r !== NG_OTHER) {
        if (this.pending !== null) { const e = this.pending; this.pending = null; throw e; }
        return; // EOF or a packet block is next
      }
    }
  }

  /**
   * Makes the next whole block available at this.pos and processes it when it
   * is not a packet block. Returns NG_PACKET (block at pos, not consumed),
   * NG_OTHER (consumed), NG_EOF or NG_ERROR (this.pending set).
   */
  private nextNgBlock(): number {
    let avail = this.fill(12);
    const blockOff = this.bufFileOff + this.pos;
    if (avail === 0) { this.eof = true; return NG_EOF; }
    if (avail < 8) return this.ngErr(blockOff, `truncated block header (${avail} of 8 bytes at end of file)`);
    let b = this.buf;
    let p = this.pos;
    let le = this.ngLe;
    const type = this.u32(b, p, le);
    if (type === PCAPNG_SHB) {
      if (avail < 12) return this.ngErr(blockOff, `truncated section header block (${avail} bytes at end of file)`);
      const bomLe = (b[p + 8] | (b[p + 9] << 8) | (b[p + 10] << 16) | (b[p + 11] << 24)) >>> 0;
      if (bomLe === PCAPNG_BOM) le = true;
      else if (this.u32(b, p + 8, false) === PCAPNG_BOM) le = false;
      else return this.ngErr(blockOff + 8, `bad byte-order magic 0x${bomLe.toString(16).padStart(8, '0')} in section header block`);
    } else if (this.sections === 0) {
      return this.ngErr(blockOff, 'pcapng file does not start with a section header block');
    }
    const len = this.u32(b, p + 4, le);
    const minLen = type === PCAPNG_SHB ? 28 : type === BT_EPB || type === BT_PB ? 32 : type === BT_IDB ? 20 : type === BT_SPB ? 16 : 12;
    if (len < minLen || (len & 3) !== 0) return this.ngErr(blockOff + 4, `bad block length ${len} for block type 0x${type.toString(16)} (minimum ${minLen}, multiple of 4)`);
    if (len > MAX_BLOCK_BYTES) return this.ngErr(blockOff + 4, `block length ${len} exceeds maximum ${MAX_BLOCK_BYTES}`);
    if (len > this.fileSize - blockOff) return this.ngErr(blockOff, `truncated block: length ${len} but only ${this.fileSize - blockOff} bytes left in file`);
    avail = this.fill(len);
    if (avail < len) return this.ngErr(blockOff, `truncated block: length ${len} but only ${avail} bytes left in file`);
    b = this.buf;
    p = this.pos;
    const trail = this.u32(b, p + len - 4, le);
    if (trail !== len) return this.ngErr(blockOff + len - 4, `block trailing length ${trail} differs from leading length ${len}`);
    if (type === BT_EPB || type === BT_SPB || type === BT_PB) return NG_PACKET;
    if (type === PCAPNG_SHB) {
      const major = this.u16(b, p + 12, le);
      if (major !== 1) return this.ngErr(blockOff + 12, `unsupported pcapng major version ${major} (expected 1)`);
      // A new section: its interfaces replace the previous section's
      // (draft-ietf-opsawg-pcapng section 4.1). The section length (-1 =
      // unknown) is not needed to walk the blocks.
      this.ngLe = le;
      this.ifCount = 0;
      this.sections++;
    } else if (type === BT_IDB) {
      const r = this.readIdb(b, p, len, blockOff);
      if (r !== NG_OTHER) return r;
    } else {
      this.nSkippedBlocks++;
    }
    this.pos = p + len;
    return NG_OTHER;
  }

  private readIdb(b: Buffer, p: number, len: number, blockOff: number): number {
    const le = this.ngLe;
    if (this.ifCount >= MAX_INTERFACES) return this.ngErr(blockOff, `more than ${MAX_INTERFACES} interfaces in one section`);
    const link = this.u16(b, p + 8, le);
    const snap = this.u32(b, p + 12, le);
    let kind: number = TsKind.POW10_LE9;
    let div = 1e6;
    let mul = 1000;
    let tsOff = 0;
    // Options (draft-ietf-opsawg-pcapng section 3.5): code, length, value padded to 4.
    let o = p + 16;
    const oEnd = p + len - 4;
    while (o + 4 <= oEnd) {
      const code = this.u16(b, o, le);
      const olen = this.u16(b, o + 2, le);
      if (code === OPT_ENDOFOPT) break;
      const v = o + 4;
      if (v + olen > oEnd) return this.ngErr(this.bufFileOff + o, `interface option ${code} length ${olen} runs past the end of its block`);
      if (code === OPT_IF_TSRESOL && olen >= 1) {
        // MSB clear: 10^-v seconds; MSB set: 2^-v (section 4.2, if_tsresol).
        const r = b[v];
        const e = r & 0x7f;
        if ((r & 0x80) !== 0) {
          if (e > 63) return this.ngErr(this.bufFileOff + v, `if_tsresol 2^-${e} is out of range`);
          kind = TsKind.POW2; div = e; mul = 0;
        } else if (e <= 9) {
          kind = TsKind.POW10_LE9; div = 10 ** e; mul = 10 ** (9 - e);
        } else {
          if (e > 19) return this.ngErr(this.bufFileOff + v, `if_tsresol 10^-${e} is out of range`);
          kind = TsKind.POW10_GT9; div = 10 ** (e - 9); mul = 0;
        }
      } else if (code === OPT_IF_TSOFFSET && olen >= 8) {
        // Signed 64-bit seconds added to every timestamp of the interface.
        const hi = le ? this.u32(b, v + 4, le) | 0 : this.u32(b, v, le) | 0;
        const lo = le ? this.u32(b, v, le) : this.u32(b, v + 4, le);
        tsOff = hi * 4294967296 + lo;
      }
      o = v + ((olen + 3) & ~3);
    }
    const i = this.ifCount++;
    this.ifLink[i] = link;
    this.ifSnap[i] = snap;
    this.ifTsKind[i] = kind;
    this.ifTsDiv[i] = div;
    this.ifTsMul[i] = mul;
    this.ifTsOff[i] = tsOff;
    return NG_OTHER;
  }

  private ngErr(offset: number, what: string): number {
    this.pending = this.err(offset, what);
    return NG_ERROR;
  }

  private recvPcapng(batch: Batch): number {
    const arena = batch.arena;
    const arenaLen = arena.length;
    const cap = batch.capacity;
    let n = 0;
    let bytes = 0;
    let orig = 0;
    let over = 0;
    let runBase = 0;
    let runStart = this.pos;
    while (n < cap) {
      let buf = this.buf;
      let pos = this.pos;
      let le = this.ngLe;
      // Fast check for a whole packet block already in the chunk; anything
      // else (refill, SHB, IDB, unknown block) goes through nextNgBlock with
      // the run flushed first, because fill() moves the chunk's bytes.
      let ok = false;
      if (this.end - pos >= 12 && this.sections > 0) {
        const type = this.u32(buf, pos, le);
        const len = this.u32(buf, pos + 4, le);
        ok = (type === BT_EPB || type === BT_SPB || type === BT_PB) && len >= 32 && (len & 3) === 0 && len <= this.end - pos
          && len <= MAX_BLOCK_BYTES && this.u32(buf, pos + len - 4, le) === len;
        if (!ok && type === BT_SPB && len >= 16 && (len & 3) === 0 && len <= this.end - pos && this.u32(buf, pos + len - 4, le) === len) ok = true;
      }
      if (!ok) {
        if (pos > runStart) buf.copy(arena, runBase, runStart, pos);
        runBase += pos - runStart;
        const r = this.nextNgBlock();
        runStart = this.pos;
        if (r === NG_EOF || r === NG_ERROR) break;
        if (r === NG_OTHER) { runStart = this.pos; continue; }
        buf = this.buf;
        pos = this.pos;
        le = this.ngLe;
      }
      const blockOff = this.bufFileOff + pos;
      const type = this.u32(buf, pos, le);
      const len = this.u32(buf, pos + 4, le);
      let ifId: number, capLen: number, origLen: number, dataOff: number;
      let tsHi = 0;
      let tsLo = 0;
      if (type === BT_EPB) {
        ifId = this.u32(buf, pos + 8, le);
        tsHi = this.u32(buf, pos + 12, le);
        tsLo = this.u32(buf, pos + 16, le);
        capLen = this.u32(buf, pos + 20, le);
        origLen = this.u32(buf, pos + 24, le);
        dataOff = pos + 28;
        if (capLen > len - 32) { this.pending = this.err(blockOff + 20, `enhanced packet block caplen ${capLen} exceeds block length ${len}`); break; }
      } else if (type === BT_PB) {
        ifId = this.u16(buf, pos + 8, le);
        tsHi = this.u32(buf, pos + 12, le);
        tsLo = this.u32(buf, pos + 16, le);
        capLen = this.u32(buf, pos + 20, le);
        origLen = this.u32(buf, pos + 24, le);
        dataOff = pos + 28;
        if (capLen > len - 32) { this.pending = this.err(blockOff + 20, `packet block caplen ${capLen} exceeds block length ${len}`); break; }
      } else {
        // Simple Packet Block (section 4.4): interface 0, no timestamp; the
        // captured length is the smaller of the original length, the
        // interface snap length and what the block holds.
        ifId = 0;
        origLen = this.u32(buf, pos + 8, le);
        dataOff = pos + 12;
        capLen = len - 16;
        if (origLen < capLen) capLen = origLen;
        if (this.ifCount > 0) {
          const s = this.ifSnap[0];
          if (s !== 0 && s < capLen) capLen = s;
        }
      }
      if (ifId >= this.ifCount) { this.pending = this.err(blockOff + 8, `packet block names interface ${ifId} but the section has ${this.ifCount}`); break; }
      if (capLen > MAX_CAPLEN) { this.pending = this.err(blockOff + 20, `packet block caplen ${capLen} exceeds maximum ${MAX_CAPLEN}`); break; }
      const at = runBase + (dataOff - runStart);
      if (at + capLen > arenaLen || runBase + (pos + len - runStart) > arenaLen) {
        if (n === 0 && runBase === 0) throw new RangeError(`${this.path}: batch arena (${arenaLen} bytes) cannot hold one block of ${len} bytes; use a larger arena`);
        break;
      }
      const i = n;
      if (type === BT_SPB) {
        tsOutSec = 0;
        tsOutNsec = 0;
      } else {
        convertTs(tsHi, tsLo, this.ifTsKind[ifId], this.ifTsDiv[ifId], this.ifTsMul[ifId]);
        tsOutSec += this.ifTsOff[ifId];
      }
      const s = this.ifSnap[ifId];
      if (s !== 0 && capLen > s) over++;
      batch.off[i] = at;
      batch.capLen[i] = capLen;
      batch.origLen[i] = origLen;
      batch.tsSec[i] = tsOutSec;
      batch.tsNsec[i] = tsOutNsec;
      batch.linkType[i] = this.ifLink[ifId];
      batch.port[i] = ifId;
      batch.verdict[i] = Verdict.FORWARD;
      n++;
      bytes += capLen;
      orig += origLen;
      this.pos = pos + len;
    }
    const pos = this.pos;
    if (pos > runStart) this.buf.copy(arena, runBase, runStart, pos);
    runBase += pos - runStart;
    batch.count = n;
    batch.used = runBase;
    this.nRecords += n;
    this.nBytes += bytes;
    this.nOrigBytes += orig;
    this.nOverSnap += over;
    return n;
  }

  // -------------------------------------------------------------- helpers

  private u32(b: Buffer, p: number, le: boolean): number {
    return le
      ? (b[p] | (b[p + 1] << 8) | (b[p + 2] << 16) | (b[p + 3] << 24)) >>> 0
      : ((b[p] << 24) | (b[p + 1] << 16) | (b[p + 2] << 8) | b[p + 3]) >>> 0;
  }

  private u16(b: Buffer, p: number, le: boolean): number {
    return le ? b[p] | (b[p + 1] << 8) : (b[p] << 8) | b[p + 1];
  }

  private err(offset: number, what: string): PcapFormatError {
    return new PcapFormatError(this.path, offset, what);
  }

  /**
   * Makes at least `n` bytes available from this.pos (moving the unread
   * bytes to the front of the chunk, growing it when n exceeds its size) and
   * returns how many are available: fewer than n only at end of file.
   * Callers bound n (MAX_RECORD_BYTES, MAX_BLOCK_BYTES and the file size).
   */
  private fill(n: number): number {
    let avail = this.end - this.pos;
    if (avail >= n) return avail;
    if (this.pos > 0) {
      if (avail > 0) this.buf.copyWithin(0, this.pos, this.end);
      this.bufFileOff += this.pos;
      this.pos = 0;
      this.end = avail;
    }
    if (n > this.buf.length) {
      // Grow to what the file can still supply, never past it: a lying
      // length in a short file must not make us allocate.
      const left = this.fileSize - this.bufFileOff;
      const size = Math.min(Math.max(n, this.buf.length * 2), Math.max(left, this.buf.length));
      if (size > this.buf.length) {
        const nb = Buffer.allocUnsafeSlow(size);
        this.buf.copy(nb, 0, 0, this.end);
        this.buf = nb;
      }
    }
    const b = this.buf;
    while (this.end < b.length) {
      const r = fs.readSync(this.fd, b, this.end, b.length - this.end, this.bufFileOff + this.end);
      if (r === 0) break;
      this.end += r;
    }
    avail = this.end;
    return avail;
  }
}

const NG_EOF = 0;
const NG_PACKET = 1;
const NG_OTHER = 2;
const NG_ERROR = 3;

// ------------------------------------------------------------------ writer

/**
 * Encodes a little-endian pcap file header (pcap spec section 4) at `off`;
 * returns the bytes written (24).
 */
export function encodePcapHeader(buf: Buffer, off: number, linkType: number, snaplen = MAX_CAPLEN, nanosecond = false): number {
  buf.writeUInt32LE(nanosecond ? MAGIC_NS_LE : MAGIC_US_LE, off);
  buf.writeUInt16LE(2, off + 4);
  buf.writeUInt16LE(4, off + 6);
  buf.writeInt32LE(0, off + 8); // thiszone: always 0 (spec: "SHOULD be 0")
  buf.writeUInt32LE(0, off + 12); // sigfigs
  buf.writeUInt32LE(snaplen >>> 0, off + 16);
  buf.writeUInt32LE(linkType >>> 0, off + 20);
  return PCAP_FILE_HDR;
}

/**
 * Encodes a little-endian pcap record header at `off`; `frac` is µs or ns as
 * the file says. Seconds are written modulo 2^32. Returns 16.
 */
export function encodePcapRecordHeader(buf: Buffer, off: number, tsSec: number, frac: number, capLen: number, origLen: number): number {
  put32le(buf, off, tsSec);
  put32le(buf, off + 4, frac);
  put32le(buf, off + 8, capLen);
  put32le(buf, off + 12, origLen);
  return PCAP_REC_HDR;
}

function put32le(b: Buffer, p: number, v: number): void {
  // ToUint32 semantics (wraps negatives and values >= 2^32) without a call.
  const x = v >>> 0;
  b[p] = x & 0xff;
  b[p + 1] = (x >>> 8) & 0xff;
  b[p + 2] = (x >>> 16) & 0xff;
  b[p + 3] = x >>> 24;
}

export interface PcapWriterOptions {
  linkType: number;
  /** Written to the header only; records are never cut (default 262144). */
  snaplen?: number;
  /** Nanosecond magic: tsNsec written as is. Otherwise floor(tsNsec / 1000) µs. */
  nanosecond?: boolean;
  /** Output buffer size (default 1 MiB). */
  bufferBytes?: number;
}

/**
 * Buffered little-endian pcap writer: one reusable output buffer, written
 * with fs.writeSync when full and on close(). Records are written as given
 * (capLen is not cut to the snap length) so a read-write round trip is exact.
 */
export class PcapFileWriter {
  readonly path: string;
  readonly linkType: number;
  readonly snaplen: number;
  readonly nanosecond: boolean;
  private fd: number;
  private out: Buffer;
  private used = 0;
  private closed = false;
  private nRecords = 0;
  private nBytes = 0;
  private written = 0;

  constructor(path: string, opts: PcapWriterOptions) {
    this.path = path;
    this.linkType = opts.linkType;
    this.snaplen = opts.snaplen ?? MAX_CAPLEN;
    this.nanosecond = opts.nanosecond ?? false;
    this.out = Buffer.allocUnsafeSlow(Math.max(opts.bufferBytes ?? DEFAULT_CHUNK_BYTES, MAX_RECORD_BYTES));
    this.fd = fs.openSync(path, 'w');
    this.used = encodePcapHeader(this.out, 0, this.linkType, this.snaplen, this.nanosecond);
  }

  writePacket(buf: Buffer, off: number, capLen: number, origLen: number, tsSec: number, tsNsec: number): void {
    if (this.closed) throw new Error(`${this.path}: write after close()`);
    if (capLen > MAX_CAPLEN) throw new RangeError(`${this.path}: capLen ${capLen} exceeds ${MAX_CAPLEN}; readers (libpcap, tshark) would reject the file`);
    if (this.used + PCAP_REC_HDR + capLen > this.out.length) this.flush();
    const o = this.out;
    const u = this.used;
    encodePcapRecordHeader(o, u, tsSec, this.nanosecond ? tsNsec : Math.floor(tsNsec / 1000), capLen, origLen);
    buf.copy(o, u + PCAP_REC_HDR, off, off + capLen);
    this.used = u + PCAP_REC_HDR + capLen;
    this.nRecords++;
    this.nBytes += capLen;
  }

  /** Writes every packet of the batch (only FORWARD ones when onlyForward). */
  writeBatch(batch: Batch, onlyForward = false): void {
    const arena = batch.arena;
    for (let i = 0; i < batch.count; i++) {
      if (onlyForward && batch.verdict[i] !== Verdict.FORWARD) continue;
      this.writePacket(arena, batch.off[i], batch.capLen[i], batch.origLen[i], batch.tsSec[i], batch.tsNsec[i]);
    }
  }

  /** Writes the buffered bytes to the file. */
  flush(): void {
    let p = 0;
    while (p < this.used) p += fs.writeSync(this.fd, this.out, p, this.used - p);
    this.written += this.used;
    this.used = 0;
  }

  stats(): Record<string, number> {
    return { records: this.nRecords, bytes: this.nBytes, written: this.written + this.used };
  }

  close(): void {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    fs.closeSync(this.fd);
  }
}
