// PROXY protocol version 2 (haproxy doc/proxy-protocol.txt, section 2.2):
// the binary header a load balancer puts in front of a forwarded stream to
// tell the server who the client really was, plus TLVs (2.2.1 - 2.2.8) such
// as ALPN, authority (SNI) and the SSL TLV that marks a secure flow.
//
// Two layers, as for every header in wire/ (STYLE.md 1):
//  - scan(buf, off, len, view): validates in place and fills a reusable
//    ProxyV2View with offsets and numbers. No allocation, never throws, never
//    reads at or past off+len. This is what the data path calls.
//  - encode/encodingLength/decode: plain objects for building headers (once
//    per connection, into the caller's buffer, STYLE.md 10) and for tests.
//    decode() is scan() followed by copying fields out into an object.
//
// Wire layout (2.2):
//   0..11  signature \r\n\r\n\0\r\nQUIT\n
//   12     version (high nibble, must be 2) | command (low nibble)
//   13     address family (high nibble) | transport protocol (low nibble)
//   14..15 length of what follows (addresses + TLVs), network byte order
//   16..   address block (12 / 36 / 216 bytes or none), then TLVs
// A header is at most 16 + 65535 bytes, so every loop here is bounded.

import { isUtf8 } from 'node:buffer';

// ------------------------------------------------------------- constants

/** 2.2: the 12-byte signature; it cannot start an HTTP request or a TLS record. */
export const SIGNATURE: Readonly<Uint8Array> = Uint8Array.of(0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a);
export const SIG_LEN = 12;
export const VER_CMD = 12;
export const FAM = 13;
export const LENGTH = 14;
export const HEADER_LEN = 16;
/** The length field is 16 bits: nothing longer can be a v2 header. */
export const MAX_HEADER_LEN = HEADER_LEN + 0xffff;
export const VERSION = 0x2;

// 2.2, 13th byte low nibble.
export const PP2_CMD_LOCAL = 0x0;
export const PP2_CMD_PROXY = 0x1;

// 2.2, 14th byte high nibble (shifted down: the byte is family << 4 | transport).
export const AF_UNSPEC = 0x0;
export const AF_INET = 0x1;
export const AF_INET6 = 0x2;
export const AF_UNIX = 0x3;

// 2.2, 14th byte low nibble.
export const TRANSPORT_UNSPEC = 0x0;
export const STREAM = 0x1;
export const DGRAM = 0x2;

// 2.2: sizes of the address blocks (struct proxy_hdr_v2 union).
export const ADDR_LEN_UNSPEC = 0;
export const ADDR_LEN_INET = 12;  // src 4, dst 4, src port 2, dst port 2
export const ADDR_LEN_INET6 = 36; // src 16, dst 16, src port 2, dst port 2
export const ADDR_LEN_UNIX = 216; // src 108, dst 108
export const UNIX_PATH_LEN = 108;

// 2.2.1 - 2.2.8: TLV types.
export const PP2_TYPE_ALPN = 0x01;
export const PP2_TYPE_AUTHORITY = 0x02;
export const PP2_TYPE_CRC32C = 0x03;
export const PP2_TYPE_NOOP = 0x04;
export const PP2_TYPE_UNIQUE_ID = 0x05;
export const PP2_TYPE_SSL = 0x20;
export const PP2_SUBTYPE_SSL_VERSION = 0x21;
export const PP2_SUBTYPE_SSL_CN = 0x22;
export const PP2_SUBTYPE_SSL_CIPHER = 0x23;
export const PP2_SUBTYPE_SSL_SIG_ALG = 0x24;
export const PP2_SUBTYPE_SSL_KEY_ALG = 0x25;
export const PP2_TYPE_NETNS = 0x30;

// 2.2.5: bits of pp2_tlv_ssl.client.
export const PP2_CLIENT_SSL = 0x01;
export const PP2_CLIENT_CERT_CONN = 0x02;
export const PP2_CLIENT_CERT_SESS = 0x04;

export const TLV_HEADER_LEN = 3;    // type, length hi, length lo
export const SSL_FIXED_LEN = 5;     // client (1) + verify (4), then sub-TLVs
export const CRC32C_LEN = 4;        // 2.2.3
export const UNIQUE_ID_MAX_LEN = 128; // 2.2.4: "may be up to 128 bytes"

// ------------------------------------------------------------- statuses

/**
 * The outcome of scan()/decode(), by name. Index = numeric status. A status
 * names the FIRST problem found; a counter per name can be derived from this list.
 */
export const PROXY_V2_STATUS_NAMES = [
  'ok',
  'need_more',                      // a prefix of a possibly valid header: wait for view.needed bytes at off
  'bad_signature',                  // the bytes present differ from the 12-byte signature
  'bad_version',                    // 13th byte high nibble is not 2
  'bad_command',                    // 13th byte low nibble is neither LOCAL nor PROXY
  'bad_family',                     // PROXY with a family nibble > 3 or a transport nibble > 2 (2.2: "must be rejected")
  'length_too_short_for_addresses', // PROXY whose length field cannot hold its family's address block
  'tlv_overflow',                   // a TLV (or SSL sub-TLV) header or value runs past the end of the header
  'bad_tlv',                        // a known TLV with an impossible length (CRC32C != 4, SSL < 5, UNIQUE_ID > 128, two CRC32C)
  'bad_crc32c',                     // 2.2.3: the CRC32c TLV does not match the header
] as const;
export type ProxyV2StatusName = (typeof PROXY_V2_STATUS_NAMES)[number];

export const ProxyV2Status = {
  OK: 0,
  NEED_MORE: 1,
  BAD_SIGNATURE: 2,
  BAD_VERSION: 3,
  BAD_COMMAND: 4,
  BAD_FAMILY: 5,
  LENGTH_TOO_SHORT_FOR_ADDRESSES: 6,
  TLV_OVERFLOW: 7,
  BAD_TLV: 8,
  BAD_CRC32C: 9,
} as const;
export type ProxyV2Status = (typeof ProxyV2Status)[keyof typeof ProxyV2Status];

// ------------------------------------------------------------- CRC32c

// 2.2.3 points at RFC 4960 Appendix B: CRC-32C (Castagnoli), reflected
// polynomial 0x82F63B78, initial value and final xor 0xFFFFFFFF.
const CRC32C_TABLE = new Uint32Array(256);
for (let n = 0; n < 256; n++) {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  CRC32C_TABLE[n] = c >>> 0;
}

/** Feeds bytes [from, to) into a running (not yet inverted) CRC32c register. */
export function crc32cUpdate(reg: number, buf: Uint8Array, from: number, to: number): number {
  let c = reg;
  for (let o = from; o < to; o++) c = CRC32C_TABLE[(c ^ buf[o]) & 0xff] ^ (c >>> 8);
  return c >>> 0;
}

/** CRC-32C of len bytes at off (RFC 4960 Appendix B; "123456789" gives 0xE3069283). */
export function crc32c(buf: Uint8Array, off: number, len: number): number {
  return (crc32cUpdate(0xffffffff, buf, off, off + len) ^ 0xffffffff) >>> 0;
}

/** 2.2.3: the CRC of the whole header computed as if the 4 checksum bytes at crcOff were zero, without touching buf. */
function headerCrc32c(buf: Uint8Array, off: number, end: number, crcOff: number): number {
  let c = crc32cUpdate(0xffffffff, buf, off, crcOff);
  for (let k = 0; k < CRC32C_LEN; k++) c = CRC32C_TABLE[c & 0xff] ^ (c >>> 8);
  c = crc32cUpdate(c, buf, crcOff + CRC32C_LEN, end);
  return (c ^ 0xffffffff) >>> 0;
}

// ------------------------------------------------------------- view + scan

/**
 * What scan() found, as numbers and offsets into the scanned buffer (absolute,
 * like `off`). One instance is reused for every header: fixed shape, every
 * field set by reset(). An absent TLV has offset -1.
 */
export class ProxyV2View {
  status: number = ProxyV2Status.NEED_MORE;
  /** Bytes needed at off: the full header length once the fixed 16 bytes are in, 16 before. */
  needed = HEADER_LEN;
  /** Bytes the header occupies (16 + length field) when status is OK. */
  consumed = 0;
  command = 0;
  family = 0;
  transport = 0;
  addrOff = -1;
  addrLen = 0;
  /** INET only: addresses as uint32 (the same representation as Meta). */
  srcIp4 = 0;
  dstIp4 = 0;
  /** INET / INET6 only. */
  srcPort = 0;
  dstPort = 0;
  tlvOff = 0;
  tlvEnd = 0;
  alpnOff = -1; alpnLen = 0;
  authorityOff = -1; authorityLen = 0;
  crc32cOff = -1;
  /** Total bytes of NOOP values; -1 when no NOOP TLV is present. */
  noopLen = -1;
  uniqueIdOff = -1; uniqueIdLen = 0;
  sslOff = -1;
  sslClient = 0;
  sslVerify = 0;
  sslVersionOff = -1; sslVersionLen = 0;
  sslCnOff = -1; sslCnLen = 0;
  sslCipherOff = -1; sslCipherLen = 0;
  sslSigAlgOff = -1; sslSigAlgLen = 0;
  sslKeyAlgOff = -1; sslKeyAlgLen = 0;
  netnsOff = -1; netnsLen = 0;
  /** TLVs of types we do not know (2.2: receivers must ignore them). */
  otherCount = 0;

  reset(): void {
    this.status = ProxyV2Status.NEED_MORE;
    this.needed = HEADER_LEN;
    this.consumed = 0;
    this.command = 0; this.family = 0; this.transport = 0;
    this.addrOff = -1; this.addrLen = 0;
    this.srcIp4 = 0; this.dstIp4 = 0; this.srcPort = 0; this.dstPort = 0;
    this.tlvOff = 0; this.tlvEnd = 0;
    this.alpnOff = -1; this.alpnLen = 0;
    this.authorityOff = -1; this.authorityLen = 0;
    this.crc32cOff = -1;
    this.noopLen = -1;
    this.uniqueIdOff = -1; this.uniqueIdLen = 0;
    this.resetSsl();
    this.sslOff = -1;
    this.netnsOff = -1; this.netnsLen = 0;
    this.otherCount = 0;
  }

  resetSsl(): void {
    this.sslClient = 0; this.sslVerify = 0;
    this.sslVersionOff = -1; this.sslVersionLen = 0;
    this.sslCnOff = -1; this.sslCnLen = 0;
    this.sslCipherOff = -1; this.sslCipherLen = 0;
    this.sslSigAlgOff = -1; this.sslSigAlgLen = 0;
    this.sslKeyAlgOff = -1; this.sslKeyAlgLen = 0;
  }
}

/** Address block length of a family nibble, or -1 for a family 2.2 does not define. */
export function addressLength(family: number): number {
  switch (family) {
    case AF_UNSPEC: return ADDR_LEN_UNSPEC;
    case AF_INET: return ADDR_LEN_INET;
    case AF_INET6: return ADDR_LEN_INET6;
    case AF_UNIX: return ADDR_LEN_UNIX;
    default: return -1;
  }
}

/** Bytes of buf usable from off: len clamped to the buffer, never negative. */
function available(buf: Uint8Array, off: number, len: number): number {
  if (!(off >= 0) || !(len > 0) || off >= buf.length) return 0;
  return len < buf.length - off ? len : buf.length - off;
}

/**
 * True when the 12-byte v2 signature is at off (within len). Enough to route
 * a stream to the v2 decoder: 2.2 chose a signature no v1 header, HTTP
 * request or TLS record can start with.
 */
export function isProxyV2(buf: Uint8Array, off: number, len: number): boolean {
  if (available(buf, off, len) < SIG_LEN) return false;
  for (let k = 0; k < SIG_LEN; k++) if (buf[off + k] !== SIGNATURE[k]) return false;
  return true;
}

/**
 * Validates the header at off, reading only bytes [off, off+len), and fills
 * `v`. Returns the status (also in v.status). On NEED_MORE, v.needed is the
 * number of bytes to have at off before calling again. Allocates nothing.
 *
 * Fails as early as the bytes allow (a wrong signature byte, version or
 * command is reported before the header is complete), so a peer cannot make
 * us buffer 64 KiB of garbage.
 *
 * LOCAL (2.2): "the receiver must ... discard the protocol block including
 * the family which is ignored", and must skip `length` bytes whatever it is.
 * So a LOCAL header with an undefined family, or a length too short for its
 * family's addresses, is accepted with family/transport reported as UNSPEC and
 * the block skipped. A LOCAL header with a well-formed family is parsed like
 * a PROXY one (addresses and TLVs, CRC32c checked) so round trips are exact;
 * its addresses must still be ignored by the caller.
 */
export function scan(buf: Uint8Array, off: number, len: number, v: ProxyV2View): ProxyV2Status {
  v.reset();
  const avail = available(buf, off, len);
  const sigAvail = avail < SIG_LEN ? avail : SIG_LEN;
  for (let k = 0; k < sigAvail; k++) {
    if (buf[off + k] !== SIGNATURE[k]) return (v.status = ProxyV2Status.BAD_SIGNATURE);
  }
  if (avail <= VER_CMD) return (v.status = ProxyV2Status.NEED_MORE);

  const verCmd = buf[off + VER_CMD];
  if (verCmd >>> 4 !== VERSION) return (v.status = ProxyV2Status.BAD_VERSION);
  const command = verCmd & 0x0f;
  if (command !== PP2_CMD_LOCAL && command !== PP2_CMD_PROXY) return (v.status = ProxyV2Status.BAD_COMMAND);
  v.command = command;
  if (avail <= FAM) return (v.status = ProxyV2Status.NEED_MORE);

  const fam = buf[off + FAM];
  let family = fam >>> 4;
  let transport = fam & 0x0f;
  let addrLen = addressLength(family);
  let ignored = false; // LOCAL whose block is opaque to us
  if (addrLen < 0 || transport > DGRAM) {
    if (command === PP2_CMD_PROXY) return (v.status = ProxyV2Status.BAD_FAMILY);
    family = AF_UNSPEC; transport = TRANSPORT_UNSPEC; addrLen = 0; ignored = true;
  }
  if (avail < HEADER_LEN) return (v.status = ProxyV2Status.NEED_MORE);

  const bodyLen = (buf[off + LENGTH] << 8) | buf[off + LENGTH + 1];
  if (bodyLen < addrLen) {
    if (command === PP2_CMD_PROXY) return (v.status = ProxyV2Status.LENGTH_TOO_SHORT_FOR_ADDRESSES);
    family = AF_UNSPEC; transport = TRANSPORT_UNSPEC; addrLen = 0; ignored = true;
  }
  v.family = family;
  v.transport = transport;
  const total = HEADER_LEN + bodyLen;
  v.needed = total;
  if (avail < total) return (v.status = ProxyV2Status.NEED_MORE);

  const end = off + total;
  const a = off + HEADER_LEN;
  v.addrOff = a;
  v.addrLen = addrLen;
  if (family === AF_INET) {
    v.srcIp4 = ((buf[a] << 24) | (buf[a + 1] << 16) | (buf[a + 2] << 8) | buf[a + 3]) >>> 0;
    v.dstIp4 = ((buf[a + 4] << 24) | (buf[a + 5] << 16) | (buf[a + 6] << 8) | buf[a + 7]) >>> 0;
    v.srcPort = (buf[a + 8] << 8) | buf[a + 9];
    v.dstPort = (buf[a + 10] << 8) | buf[a + 11];
  } else if (family === AF_INET6) {
    v.srcPort = (buf[a + 32] << 8) | buf[a + 33];
    v.dstPort = (buf[a + 34] << 8) | buf[a + 35];
  }

  // LOCAL with an ignored family: the whole block is skipped, TLVs included.
  const tlvStart = ignored ? end : a + addrLen;
  v.tlvOff = tlvStart;
  v.tlvEnd = end;

  // 2.2.1 - 2.2.8: type (1), length (2, network order), value.
  let p = tlvStart;
  while (p < end) {
    if (end - p < TLV_HEADER_LEN) return (v.status = ProxyV2Status.TLV_OVERFLOW);
    const type = buf[p];
    const vl = (buf[p + 1] << 8) | buf[p + 2];
    const vo = p + TLV_HEADER_LEN;
    if (vl > end - vo) return (v.status = ProxyV2Status.TLV_OVERFLOW);
    switch (type) {
      case PP2_TYPE_ALPN: v.alpnOff = vo; v.alpnLen = vl; break;
      case PP2_TYPE_AUTHORITY: v.authorityOff = vo; v.authorityLen = vl; break;
      case PP2_TYPE_CRC32C:
        // One checksum field per header: with two, neither could verify.
        if (vl !== CRC32C_LEN || v.crc32cOff >= 0) return (v.status = ProxyV2Status.BAD_TLV);
        v.crc32cOff = vo;
        break;
      case PP2_TYPE_NOOP: v.noopLen = (v.noopLen < 0 ? 0 : v.noopLen) + vl; break;
      case PP2_TYPE_UNIQUE_ID:
        if (vl > UNIQUE_ID_MAX_LEN) return (v.status = ProxyV2Status.BAD_TLV);
        v.uniqueIdOff = vo; v.uniqueIdLen = vl;
        break;
      case PP2_TYPE_SSL: {
        if (vl < SSL_FIXED_LEN) return (v.status = ProxyV2Status.BAD_TLV);
        v.resetSsl(); // a later SSL TLV replaces an earlier one whole, never mixed
        v.sslOff = vo;
        v.sslClient = buf[vo];
        v.sslVerify = ((buf[vo + 1] << 24) | (buf[vo + 2] << 16) | (buf[vo + 3] << 8) | buf[vo + 4]) >>> 0;
        const se = vo + vl;
        let q = vo + SSL_FIXED_LEN;
        while (q < se) {
          if (se - q < TLV_HEADER_LEN) return (v.status = ProxyV2Status.TLV_OVERFLOW);
          const st = buf[q];
          const sl = (buf[q + 1] << 8) | buf[q + 2];
          const so = q + TLV_HEADER_LEN;
          if (sl > se - so) return (v.status = ProxyV2Status.TLV_OVERFLOW);
          switch (st) {
            case PP2_SUBTYPE_SSL_VERSION: v.sslVersionOff = so; v.sslVersionLen = sl; break;
            case PP2_SUBTYPE_SSL_CN: v.sslCnOff = so; v.sslCnLen = sl; break;
            case PP2_SUBTYPE_SSL_CIPHER: v.sslCipherOff = so; v.sslCipherLen = sl; break;
            case PP2_SUBTYPE_SSL_SIG_ALG: v.sslSigAlgOff = so; v.sslSigAlgLen = sl; break;
            case PP2_SUBTYPE_SSL_KEY_ALG: v.sslKeyAlgOff = so; v.sslKeyAlgLen = sl; break;
            default: break; // unknown sub-TLV: ignored like unknown TLVs
          }
          q = so + sl;
        }
        break;
      }
      case PP2_TYPE_NETNS: v.netnsOff = vo; v.netnsLen = vl; break;
      default: v.otherCount++; break;
    }
    p = vo + vl;
  }

  if (v.crc32cOff >= 0) {
    const c = v.crc32cOff;
    const sent = ((buf[c] << 24) | (buf[c + 1] << 16) | (buf[c + 2] << 8) | buf[c + 3]) >>> 0;
    if (headerCrc32c(buf, off, end, c) !== sent) return (v.status = ProxyV2Status.BAD_CRC32C);
  }
  v.consumed = total;
  return (v.status = ProxyV2Status.OK);
}

// ------------------------------------------------------------- plain objects

/** An address: text ("192.0.2.1", "2001:db8::1", a socket path), raw bytes, or (INET only) a uint32. */
export type ProxyV2Address = string | Uint8Array | number;
/** Text TLVs may be given as a string (written as UTF-8) or raw bytes. */
export type ProxyV2Bytes = string | Uint8Array;

export interface ProxyV2Ssl {
  /** PP2_CLIENT_* bits. */
  client: number;
  /** 0 when the client certificate was verified (2.2.5). */
  verify: number;
  version?: ProxyV2Bytes;
  cn?: ProxyV2Bytes;
  cipher?: ProxyV2Bytes;
  sigAlg?: ProxyV2Bytes;
  keyAlg?: ProxyV2Bytes;
}

export interface ProxyV2OtherTlv {
  type: number;
  value: Uint8Array;
}

export interface ProxyV2Tlvs {
  alpn?: ProxyV2Bytes;
  authority?: ProxyV2Bytes;
  uniqueId?: ProxyV2Bytes;
  ssl?: ProxyV2Ssl;
  netns?: ProxyV2Bytes;
  /** Encode: add a CRC32C TLV computed over the whole header. Decode: true when one was present (and matched). */
  crc32c?: boolean;
  /** NOOP TLV with this many zero bytes of value (padding, 2.2.6). */
  noop?: number;
  /** TLVs of other types (custom 0xE0-0xEF, experimental 0xF0...), written in order after the known ones. */
  other?: ProxyV2OtherTlv[];
}

export interface ProxyV2Header {
  command: number;
  family: number;
  transport: number;
  src?: ProxyV2Address;
  dst?: ProxyV2Address;
  srcPort?: number;
  dstPort?: number;
  tlvs?: ProxyV2Tlvs;
}

export type ProxyV2DecodeResult =
  | { status: 'ok'; header: ProxyV2Header; consumed: number }
  | { status: 'need_more'; needed: number; missing: number }
  | { status: Exclude<ProxyV2StatusName, 'ok' | 'need_more'> };

// Scratch for addresses parsed from text: validated before the first byte of
// the caller's buffer is written. Module-level, so encode allocates nothing.
const addrScratch = Buffer.alloc(2 * UNIX_PATH_LEN);

function bytesLength(x: ProxyV2Bytes): number {
  return typeof x === 'string' ? Buffer.byteLength(x, 'utf8') : x.length;
}

function checkBytes(name: string, x: unknown): void {
  if (typeof x !== 'string' && !(x instanceof Uint8Array)) throw new TypeError(`PROXY v2: ${name} must be a string or a Uint8Array`);
}

function sslValueLength(s: ProxyV2Ssl): number {
  if (!Number.isInteger(s.client) || s.client < 0 || s.client > 0xff) throw new RangeError('PROXY v2: ssl.client must be an integer 0..255 (PP2_CLIENT_* bits)');
  if (!Number.isInteger(s.verify) || s.verify < 0 || s.verify > 0xffffffff) throw new RangeError('PROXY v2: ssl.verify must be an integer 0..2^32-1');
  let n = SSL_FIXED_LEN;
  if (s.version !== undefined) { checkBytes('ssl.version', s.version); n += TLV_HEADER_LEN + bytesLength(s.version); }
  if (s.cn !== undefined) { checkBytes('ssl.cn', s.cn); n += TLV_HEADER_LEN + bytesLength(s.cn); }
  if (s.cipher !== undefined) { checkBytes('ssl.cipher', s.cipher); n += TLV_HEADER_LEN + bytesLength(s.cipher); }
  if (s.sigAlg !== undefined) { checkBytes('ssl.sigAlg', s.sigAlg); n += TLV_HEADER_LEN + bytesLength(s.sigAlg); }
  if (s.keyAlg !== undefined) { checkBytes('ssl.keyAlg', s.keyAlg); n += TLV_HEADER_LEN + bytesLength(s.keyAlg); }
  return n;
}

const KNOWN_TYPES = [PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C, PP2_TYPE_NOOP, PP2_TYPE_UNIQUE_ID, PP2_TYPE_SSL, PP2_TYPE_NETNS];

function tlvsLength(t: ProxyV2Tlvs): number {
  let n = 0;
  if (t.alpn !== undefined) { checkBytes('tlvs.alpn', t.alpn); n += TLV_HEADER_LEN + bytesLength(t.alpn); }
  if (t.authority !== undefined) { checkBytes('tlvs.authority', t.authority); n += TLV_HEADER_LEN + bytesLength(t.authority); }
  if (t.crc32c) n += TLV_HEADER_LEN + CRC32C_LEN;
  if (t.uniqueId !== undefined) {
    checkBytes('tlvs.uniqueId', t.uniqueId);
    const l = bytesLength(t.uniqueId);
    if (l > UNIQUE_ID_MAX_LEN) throw new RangeError(`PROXY v2: tlvs.uniqueId is ${l} bytes, 2.2.4 allows at most ${UNIQUE_ID_MAX_LEN}`);
    n += TLV_HEADER_LEN + l;
  }
  if (t.ssl !== undefined) {
    const l = sslValueLength(t.ssl);
    if (l > 0xffff) throw new RangeError('PROXY v2: the SSL TLV is longer than 65535 bytes');
    n += TLV_HEADER_LEN + l;
  }
  if (t.netns !== undefined) { checkBytes('tlvs.netns', t.netns); n += TLV_HEADER_LEN + bytesLength(t.netns); }
  if (t.other !== undefined) {
    for (const o of t.other) {
      if (!Number.isInteger(o.type) || o.type < 0 || o.type > 0xff || KNOWN_TYPES.includes(o.type)) {
        throw new RangeError(`PROXY v2: tlvs.other type ${o.type} must be 0..255 and not a type with its own field`);
      }
      if (!(o.value instanceof Uint8Array)) throw new TypeError('PROXY v2: tlvs.other[].value must be a Uint8Array');
      n += TLV_HEADER_LEN + o.value.length;
    }
  }
  if (t.noop !== undefined) {
    if (!Number.isInteger(t.noop) || t.noop < 0) throw new RangeError('PROXY v2: tlvs.noop must be a non-negative integer (bytes of padding)');
    n += TLV_HEADER_LEN + t.noop;
  }
  return n;
}

function checkHeaderFields(h: ProxyV2Header): number {
  if (h.command !== PP2_CMD_LOCAL && h.command !== PP2_CMD_PROXY) throw new RangeError(`PROXY v2: command must be PP2_CMD_LOCAL (0) or PP2_CMD_PROXY (1), got ${h.command}`);
  const addrLen = addressLength(h.family);
  if (addrLen < 0) throw new RangeError(`PROXY v2: family must be AF_UNSPEC/AF_INET/AF_INET6/AF_UNIX (0..3), got ${h.family}`);
  if (h.transport !== TRANSPORT_UNSPEC && h.transport !== STREAM && h.transport !== DGRAM) {
    throw new RangeError(`PROXY v2: transport must be UNSPEC/STREAM/DGRAM (0..2), got ${h.transport}`);
  }
  return addrLen;
}

/** Bytes encode() will write for h. Throws RangeError/TypeError for a header that cannot be encoded. */
export function encodingLength(h: ProxyV2Header): number {
  const n = HEADER_LEN + checkHeaderFields(h) + (h.tlvs ? tlvsLength(h.tlvs) : 0);
  if (n > MAX_HEADER_LEN) throw new RangeError(`PROXY v2: header would be ${n} bytes; the 16-bit length field allows at most ${MAX_HEADER_LEN}`);
  return n;
}

/**
 * Writes h at buf[off] and returns the number of bytes written (STYLE.md 10).
 * Everything is validated (and text addresses parsed) before the first byte
 * is written, so on a throw the caller's buffer is untouched. Throws
 * RangeError/TypeError for an unencodable header or a buffer too small: these
 * are the caller's bugs, not hostile input.
 *
 * AF_UNSPEC writes no address block (src/dst are not used). A LOCAL header
 * may omit addresses for another family: zeros are written.
 *
 * TLV order: ALPN, AUTHORITY, CRC32C, UNIQUE_ID, SSL, NETNS, other, NOOP
 * (padding last so it can round the header up to an alignment).
 */
export function encode(h: ProxyV2Header, buf: Buffer, off: number): number {
  const n = encodingLength(h);
  const addrLen = addressLength(h.family);
  if (addrLen > 0) prepareAddresses(h);
  if (!Number.isInteger(off) || off < 0 || off + n > buf.length) {
    throw new RangeError(`PROXY v2: need ${n} bytes at offset ${off}, buffer has ${buf.length}`);
  }

  buf.set(SIGNATURE, off);
  buf[off + VER_CMD] = (VERSION << 4) | h.command;
  buf[off + FAM] = (h.family << 4) | h.transport;
  put16(buf, off + LENGTH, n - HEADER_LEN);
  let o = off + HEADER_LEN;
  if (addrLen > 0) {
    if (h.family === AF_UNIX) {
      for (let k = 0; k < 2 * UNIX_PATH_LEN; k++) buf[o + k] = addrScratch[k];
    } else {
      const al = h.family === AF_INET ? 4 : 16;
      for (let k = 0; k < 2 * al; k++) buf[o + k] = addrScratch[k];
      put16(buf, o + 2 * al, h.srcPort ?? 0);
      put16(buf, o + 2 * al + 2, h.dstPort ?? 0);
    }
    o += addrLen;
  }

  let crcOff = -1;
  const t = h.tlvs;
  if (t) {
    if (t.alpn !== undefined) o = putTlv(buf, o, PP2_TYPE_ALPN, t.alpn);
    if (t.authority !== undefined) o = putTlv(buf, o, PP2_TYPE_AUTHORITY, t.authority);
    if (t.crc32c) {
      buf[o] = PP2_TYPE_CRC32C; put16(buf, o + 1, CRC32C_LEN);
      crcOff = o + TLV_HEADER_LEN;
      buf.fill(0, crcOff, crcOff + CRC32C_LEN); // 2.2.3: computed with the field zeroed
      o = crcOff + CRC32C_LEN;
    }
    if (t.uniqueId !== undefined) o = putTlv(buf, o, PP2_TYPE_UNIQUE_ID, t.uniqueId);
    if (t.ssl !== undefined) {
      const s = t.ssl;
      buf[o] = PP2_TYPE_SSL; put16(buf, o + 1, sslValueLength(s));
      o += TLV_HEADER_LEN;
      buf[o] = s.client;
      put32(buf, o + 1, s.verify);
      o += SSL_FIXED_LEN;
      if (s.version !== undefined) o = putTlv(buf, o, PP2_SUBTYPE_SSL_VERSION, s.version);
      if (s.cn !== undefined) o = putTlv(buf, o, PP2_SUBTYPE_SSL_CN, s.cn);
      if (s.cipher !== undefined) o = putTlv(buf, o, PP2_SUBTYPE_SSL_CIPHER, s.cipher);
      if (s.sigAlg !== undefined) o = putTlv(buf, o, PP2_SUBTYPE_SSL_SIG_ALG, s.sigAlg);
      if (s.keyAlg !== undefined) o = putTlv(buf, o, PP2_SUBTYPE_SSL_KEY_ALG, s.keyAlg);
    }
    if (t.netns !== undefined) o = putTlv(buf, o, PP2_TYPE_NETNS, t.netns);
    if (t.other !== undefined) for (const x of t.other) o = putTlv(buf, o, x.type, x.value);
    if (t.noop !== undefined) {
      buf[o] = PP2_TYPE_NOOP; put16(buf, o + 1, t.noop);
      buf.fill(0, o + TLV_HEADER_LEN, o + TLV_HEADER_LEN + t.noop);
      o += TLV_HEADER_LEN + t.noop;
    }
  }
  if (crcOff >= 0) put32(buf, crcOff, crc32c(buf, off, n));
  return n;
}

function put16(buf: Uint8Array, o: number, v: number): void {
  buf[o] = (v >>> 8) & 0xff;
  buf[o + 1] = v & 0xff;
}
function put32(buf: Uint8Array, o: number, v: number): void {
  buf[o] = (v >>> 24) & 0xff;
  buf[o + 1] = (v >>> 16) & 0xff;
  buf[o + 2] = (v >>> 8) & 0xff;
  buf[o + 3] = v & 0xff;
}

function putTlv(buf: Buffer, o: number, type: number, value: ProxyV2Bytes): number {
  buf[o] = type;
  const vo = o + TLV_HEADER_LEN;
  const l = typeof value === 'string' ? buf.write(value, vo, 'utf8') : (buf.set(value, vo), value.length);
  put16(buf, o + 1, l);
  return vo + l;
}

function checkPort(name: string, p: number | undefined): void {
  if (p !== undefined && (!Number.isInteger(p) || p < 0 || p > 0xffff)) throw new RangeError(`PROXY v2: ${name} must be an integer 0..65535, got ${p}`);
}

/** Parses/validates src and dst into addrScratch (src at 0, dst after it). */
function prepareAddresses(h: ProxyV2Header): void {
  const fam = h.family;
  if (h.src === undefined || h.dst === undefined) {
    // 2.2: a LOCAL sender "should not present any address"; when it still
    // names an address family, zeros are what haproxy sends.
    if (h.command === PP2_CMD_PROXY) throw new RangeError('PROXY v2: a PROXY header of this family needs src and dst');
    addrScratch.fill(0);
    if (h.src === undefined && h.dst === undefined) { checkPort('srcPort', h.srcPort); checkPort('dstPort', h.dstPort); return; }
  }
  if (fam === AF_UNIX) {
    addrScratch.fill(0);
    if (h.src !== undefined) putUnixPath('src', h.src, addrScratch, 0);
    if (h.dst !== undefined) putUnixPath('dst', h.dst, addrScratch, UNIX_PATH_LEN);
    return;
  }
  const al = fam === AF_INET ? 4 : 16;
  if (h.src !== undefined) putIp('src', h.src, fam, addrScratch, 0);
  if (h.dst !== undefined) putIp('dst', h.dst, fam, addrScratch, al);
  checkPort('srcPort', h.srcPort);
  checkPort('dstPort', h.dstPort);
}

function putIp(name: string, a: ProxyV2Address, fam: number, out: Buffer, o: number): void {
  const al = fam === AF_INET ? 4 : 16;
  if (typeof a === 'number') {
    if (fam !== AF_INET || !Number.isInteger(a) || a < 0 || a > 0xffffffff) throw new RangeError(`PROXY v2: ${name} as a number must be a uint32 IPv4 address (AF_INET)`);
    put32(out, o, a);
  } else if (typeof a === 'string') {
    const ok = fam === AF_INET ? parseIp4(a, 0, a.length, out, o) : parseIp6(a, out, o);
    if (!ok) throw new RangeError(`PROXY v2: ${name} ${JSON.stringify(a)} is not an ${fam === AF_INET ? 'IPv4' : 'IPv6'} address`);
  } else if (a instanceof Uint8Array) {
    if (a.length !== al) throw new RangeError(`PROXY v2: ${name} must be ${al} bytes for this family, got ${a.length}`);
    out.set(a, o);
  } else {
    throw new TypeError(`PROXY v2: ${name} must be a string, a Uint8Array or (IPv4) a number`);
  }
}

function putUnixPath(name: string, a: ProxyV2Address, out: Buffer, o: number): void {
  if (typeof a === 'string') {
    if (Buffer.byteLength(a, 'utf8') > UNIX_PATH_LEN) throw new RangeError(`PROXY v2: ${name} path is longer than ${UNIX_PATH_LEN} bytes`);
    out.write(a, o, 'utf8');
  } else if (a instanceof Uint8Array) {
    if (a.length > UNIX_PATH_LEN) throw new RangeError(`PROXY v2: ${name} is longer than ${UNIX_PATH_LEN} bytes`);
    out.set(a, o); // the rest stays zero: sun_path is NUL padded
  } else {
    throw new TypeError(`PROXY v2: ${name} must be a socket path string or a Uint8Array for AF_UNIX`);
  }
}

// ------------------------------------------------------------- address text

function isDigit(c: number): boolean { return c >= 0x30 && c <= 0x39; }
function hexVal(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  return -1;
}

/**
 * Parses dotted-quad s[from, to) into 4 bytes at out[o]. Strict: exactly four
 * decimal parts 0..255 without leading zeros (which some stacks read as octal).
 * Allocates nothing.
 */
export function parseIp4(s: string, from: number, to: number, out: Uint8Array, o: number): boolean {
  let i = from;
  for (let part = 0; part < 4; part++) {
    if (part > 0) {
      if (i >= to || s.charCodeAt(i) !== 0x2e) return false;
      i++;
    }
    const start = i;
    let v = 0;
    while (i < to && isDigit(s.charCodeAt(i)) && i - start < 3) { v = v * 10 + (s.charCodeAt(i) - 0x30); i++; }
    if (i === start || v > 255 || (i - start > 1 && s.charCodeAt(start) === 0x30)) return false;
    out[o + part] = v;
  }
  return i === to;
}

/**
 * Parses an IPv6 address (RFC 4291 2.2: hex groups, one "::", an optional
 * trailing dotted quad) into 16 bytes at out[o]. No zone id. Allocates nothing.
 */
export function parseIp6(s: string, out: Uint8Array, o: number): boolean {
  const n = s.length;
  if (n < 2 || n > 45) return false;
  let i = 0;
  let g = 0;       // groups written
  let gap = -1;    // group index where "::" stands
  if (s.charCodeAt(0) === 0x3a) {
    if (s.charCodeAt(1) !== 0x3a) return false;
    gap = 0;
    i = 2;
  }
  while (i < n) {
    if (g >= 8) return false;
    const start = i;
    let v = 0;
    while (i < n) {
      const h = hexVal(s.charCodeAt(i));
      if (h < 0) break;
      v = v * 16 + h;
      i++;
    }
    if (i < n && s.charCodeAt(i) === 0x2e) {
      // Trailing IPv4 (RFC 4291 2.2 form 3): takes the last two groups.
      if (g > 6 || !parseIp4(s, start, n, out, o + 2 * g)) return false;
      g += 2;
      i = n;
      break;
    }
    if (i === start || i - start > 4) return false;
    out[o + 2 * g] = v >>> 8;
    out[o + 2 * g + 1] = v & 0xff;
    g++;
    if (i === n) break;
    if (s.charCodeAt(i) !== 0x3a) return false;
    i++;
    if (i < n && s.charCodeAt(i) === 0x3a) {
      if (gap >= 0) return false; // a second "::"
      gap = g;
      i++;
    } else if (i === n) {
      return false; // a trailing single ':'
    }
  }
  if (gap < 0) return g === 8;
  if (g > 7) return false; // "::" stands for at least one group
  const tail = g - gap;
  const shift = 8 - g;
  for (let k = tail - 1; k >= 0; k--) {
    out[o + 2 * (gap + shift + k)] = out[o + 2 * (gap + k)];
    out[o + 2 * (gap + shift + k) + 1] = out[o + 2 * (gap + k) + 1];
  }
  for (let k = 0; k < shift; k++) { out[o + 2 * (gap + k)] = 0; out[o + 2 * (gap + k) + 1] = 0; }
  return true;
}

export function formatIp4(buf: Uint8Array, o: number): string {
  return `${buf[o]}.${buf[o + 1]}.${buf[o + 2]}.${buf[o + 3]}`;
}

/** RFC 5952 text: lowercase, no leading zeros, the longest (first on a tie) run of 2+ zero groups as "::", IPv4-mapped in dotted form (section 5). */
export function formatIp6(buf: Uint8Array, o: number): string {
  let mapped = buf[o + 10] === 0xff && buf[o + 11] === 0xff;
  for (let k = 0; k < 10 && mapped; k++) if (buf[o + k] !== 0) mapped = false;
  if (mapped) return `::ffff:${formatIp4(buf, o + 12)}`;
  let bestAt = -1, bestLen = 1, runAt = -1;
  for (let g = 0; g <= 8; g++) {
    const zero = g < 8 && buf[o + 2 * g] === 0 && buf[o + 2 * g + 1] === 0;
    if (zero) {
      if (runAt < 0) runAt = g;
    } else if (runAt >= 0) {
      if (g - runAt > bestLen) { bestAt = runAt; bestLen = g - runAt; }
      runAt = -1;
    }
  }
  let s = '';
  for (let g = 0; g < 8; g++) {
    if (g === bestAt) {
      s += '::';
      g += bestLen - 1;
      continue;
    }
    if (s.length > 0 && !s.endsWith(':')) s += ':';
    s += ((buf[o + 2 * g] << 8) | buf[o + 2 * g + 1]).toString(16);
  }
  return s;
}

// ------------------------------------------------------------- decode

const decodeView = new ProxyV2View();

/** A plain Uint8Array copy (not a Buffer view: the caller's buffer is reused). */
function copyBytes(buf: Uint8Array, o: number, l: number): Uint8Array {
  const r = new Uint8Array(l);
  for (let k = 0; k < l; k++) r[k] = buf[o + k];
  return r;
}
function text(buf: Uint8Array, o: number, l: number): string {
  return Buffer.from(buf.buffer, buf.byteOffset + o, l).toString('utf8');
}

/**
 * A socket path: sun_path without its trailing NUL padding. Embedded NULs are
 * kept (a Linux abstract socket name starts with one). Text when the bytes
 * are valid UTF-8, else the raw bytes: paths are bytes, and decode must not
 * lose them.
 */
function unixPath(buf: Uint8Array, o: number): string | Uint8Array {
  let l = UNIX_PATH_LEN;
  while (l > 0 && buf[o + l - 1] === 0) l--;
  const view = Buffer.from(buf.buffer, buf.byteOffset + o, l);
  return isUtf8(view) ? view.toString('utf8') : copyBytes(buf, o, l);
}

/**
 * scan() and then the header as a plain object (control plane and tests;
 * allocates). Never throws on any bytes and reads only [off, off+len).
 * Addresses come back as text (IPv6 in RFC 5952 form; UNIX paths without
 * their NUL padding, as bytes if they are not UTF-8); ALPN and UNIQUE_ID as bytes (2.2.1/2.2.4: opaque); the other
 * text TLVs as UTF-8 strings.
 */
export function decode(buf: Uint8Array, off: number, len: number): ProxyV2DecodeResult {
  const v = decodeView;
  const st = scan(buf, off, len, v);
  if (st === ProxyV2Status.NEED_MORE) return { status: 'need_more', needed: v.needed, missing: v.needed - available(buf, off, len) };
  if (st !== ProxyV2Status.OK) return { status: PROXY_V2_STATUS_NAMES[st] as Exclude<ProxyV2StatusName, 'ok' | 'need_more'> };

  const h: ProxyV2Header = { command: v.command, family: v.family, transport: v.transport };
  const a = v.addrOff;
  if (v.family === AF_INET) {
    h.src = formatIp4(buf, a); h.dst = formatIp4(buf, a + 4);
    h.srcPort = v.srcPort; h.dstPort = v.dstPort;
  } else if (v.family === AF_INET6) {
    h.src = formatIp6(buf, a); h.dst = formatIp6(buf, a + 16);
    h.srcPort = v.srcPort; h.dstPort = v.dstPort;
  } else if (v.family === AF_UNIX) {
    h.src = unixPath(buf, a); h.dst = unixPath(buf, a + UNIX_PATH_LEN);
  }

  const t: ProxyV2Tlvs = {};
  let any = false;
  if (v.alpnOff >= 0) { t.alpn = copyBytes(buf, v.alpnOff, v.alpnLen); any = true; }
  if (v.authorityOff >= 0) { t.authority = text(buf, v.authorityOff, v.authorityLen); any = true; }
  if (v.crc32cOff >= 0) { t.crc32c = true; any = true; }
  if (v.uniqueIdOff >= 0) { t.uniqueId = copyBytes(buf, v.uniqueIdOff, v.uniqueIdLen); any = true; }
  if (v.sslOff >= 0) {
    const s: ProxyV2Ssl = { client: v.sslClient, verify: v.sslVerify };
    if (v.sslVersionOff >= 0) s.version = text(buf, v.sslVersionOff, v.sslVersionLen);
    if (v.sslCnOff >= 0) s.cn = text(buf, v.sslCnOff, v.sslCnLen);
    if (v.sslCipherOff >= 0) s.cipher = text(buf, v.sslCipherOff, v.sslCipherLen);
    if (v.sslSigAlgOff >= 0) s.sigAlg = text(buf, v.sslSigAlgOff, v.sslSigAlgLen);
    if (v.sslKeyAlgOff >= 0) s.keyAlg = text(buf, v.sslKeyAlgOff, v.sslKeyAlgLen);
    t.ssl = s;
    any = true;
  }
  if (v.netnsOff >= 0) { t.netns = text(buf, v.netnsOff, v.netnsLen); any = true; }
  if (v.otherCount > 0) {
    // The TLV area was validated by scan(): walk it again for the unknown types.
    const other: ProxyV2OtherTlv[] = [];
    for (let p = v.tlvOff; p < v.tlvEnd;) {
      const type = buf[p];
      const vl = (buf[p + 1] << 8) | buf[p + 2];
      if (!KNOWN_TYPES.includes(type)) other.push({ type, value: copyBytes(buf, p + TLV_HEADER_LEN, vl) });
      p += TLV_HEADER_LEN + vl;
    }
    t.other = other;
    any = true;
  }
  if (v.noopLen >= 0) { t.noop = v.noopLen; any = true; }
  if (any) h.tlvs = t;
  return { status: 'ok', header: h, consumed: v.consumed };
}
