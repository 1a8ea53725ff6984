// TLS ClientHello sniffing on the first payload of a TCP connection, for the
// workload distributor's SNI to pool routing (DESIGN.md, lb/tls). Zero copy:
// classifyTls() walks the record in place, writes what it found (offsets of
// the server name and the ALPN list, the versions) into a caller's Int32Array
// and returns a numeric status. Per call it reads bytes and writes integers,
// nothing else: no subarray, no string, no object (STYLE.md 3). Strings are
// made off the hot path by readSni() / readAlpn().
//
// Every read is checked against two kinds of bound, in this order:
// - the lengths the message declares (record, handshake, extensions block,
//   extension, list): a field running past its enclosing length is MALFORMED;
// - the bytes we were given (off + len) and the end of the first TLS record:
//   a consistent prefix that stops early is NEED_MORE (the ClientHello
//   continues in the next segment) or FRAGMENTED (it continues in the next
//   TLS record).
// So a hostile length can neither throw nor make us read past off + len.
//
// Layouts: RFC 8446 5.1 (TLSPlaintext), 4 (Handshake), 4.1.2 (ClientHello),
// 4.2 (extensions), 4.2.1 (supported_versions); RFC 5246 7.4.1.2 (TLS 1.2
// ClientHello, extensions optional); RFC 6066 3 (server_name); RFC 7301 3.1
// (ALPN); RFC 8701 (GREASE).

/** Result of classifyTls (numeric, for counters: `tls_<name>` from TLS_STATUS_NAMES). */
export const TlsStatus = {
  /** A complete, well-formed ClientHello lies within the bytes given. */
  CLIENT_HELLO: 0,
  /** Not a TLS handshake record (first byte not 22, or a record version outside 0x0301..0x0304): plain traffic. */
  NOT_TLS: 1,
  /** A TLS handshake record that does not start with a ClientHello (a ServerHello, say: the server side of a flow). */
  NOT_CLIENT_HELLO: 2,
  /**
   * Consistent so far; the bytes end inside the record header or the
   * handshake header (fewer than 9 bytes), so it is not yet known whether
   * this is a ClientHello.
   */
  TRUNCATED: 3,
  /**
   * A ClientHello, consistent so far, whose record continues past the bytes
   * given: a ClientHello split across TCP segments. out[RECORD_END] says how
   * many bytes from `off` complete the record. Outputs for extensions that
   * were complete within the bytes given are already set.
   */
  NEED_MORE: 4,
  /**
   * A ClientHello that continues in a second TLS record (RFC 8446 5.1 lets a
   * handshake message span records; some clients split on purpose to hide the
   * SNI from middleboxes). Outputs found in the first record are set; joining
   * records is the caller's job.
   */
  FRAGMENTED: 5,
  /** Lengths that contradict each other or the RFCs, a bad server name, a repeated extension we read. */
  MALFORMED: 6,
} as const;
export type TlsStatus = (typeof TlsStatus)[keyof typeof TlsStatus];

export const TLS_STATUS_NAMES = [
  'client_hello', 'not_tls', 'not_client_hello', 'truncated', 'need_more', 'fragmented', 'malformed',
] as const;

export const TLS_CLIENT_HELLO = TlsStatus.CLIENT_HELLO;
export const TLS_NOT_TLS = TlsStatus.NOT_TLS;
export const TLS_NOT_CLIENT_HELLO = TlsStatus.NOT_CLIENT_HELLO;
export const TLS_TRUNCATED = TlsStatus.TRUNCATED;
export const TLS_NEED_MORE = TlsStatus.NEED_MORE;
export const TLS_FRAGMENTED = TlsStatus.FRAGMENTED;
export const TLS_MALFORMED = TlsStatus.MALFORMED;

/** Slots of the output Int32Array. Offsets are absolute indexes into `buf`, -1 when absent. */
export const TlsOut = {
  /** First byte of the host_name (RFC 6066 3), or -1. */
  SNI_OFF: 0,
  SNI_LEN: 1,
  /** First byte of the ALPN ProtocolNameList contents (the first name's length byte, RFC 7301 3.1), or -1. */
  ALPN_OFF: 2,
  /** Bytes of the ProtocolNameList contents (without its 2-byte length). */
  ALPN_LEN: 3,
  /** Highest non-GREASE version in supported_versions (RFC 8446 4.2.1), 0 when the extension is absent. */
  MAX_VERSION: 4,
  /** ClientHello.legacy_version (client_version in TLS 1.2), 0 before it is read. */
  LEGACY_VERSION: 5,
  /** TlsFlag bits. */
  FLAGS: 6,
  /** Bytes from `off` to the end of the first TLS record (5 + record length), 0 before the record header is read. */
  RECORD_END: 7,
} as const;
export const TLS_OUT_LEN = 8;

/** Bits of out[TlsOut.FLAGS]. */
export const TlsFlag = {
  SNI: 1 << 0,              // server_name extension seen (and valid when SNI_OFF >= 0)
  ALPN: 1 << 1,
  SUPPORTED_VERSIONS: 1 << 2,
  ECH: 1 << 3,              // encrypted_client_hello (0xfe0d, draft-ietf-tls-esni): the SNI is the public name
  ESNI: 1 << 4,             // encrypted_server_name (0xffce, early ESNI drafts)
  GREASE: 1 << 5,           // an RFC 8701 GREASE extension type or version was seen
  EXTENSIONS: 1 << 6,       // the ClientHello carries an extensions block (optional before TLS 1.3)
} as const;

/** A module-level output for callers that do not keep their own (one thread, used until the next call). */
export const TLS_OUT = new Int32Array(TLS_OUT_LEN);

const CONTENT_HANDSHAKE = 22;      // RFC 8446 5.1 ContentType.handshake
const HS_CLIENT_HELLO = 1;         // RFC 8446 4 HandshakeType.client_hello
const RECORD_HDR = 5;              // type(1) version(2) length(2)
const HS_HDR = 4;                  // msg_type(1) length(3)
// RFC 8446 5.1 / RFC 5246 6.2.1: a TLSPlaintext fragment MUST NOT exceed
// 2^14 bytes (the 2048 slack applies only to protected records).
const MAX_PLAINTEXT = 1 << 14;
// legacy_version(2) random(32) session_id<0..32>(1) cipher_suites<2..>(2+2)
// compression_methods<1..>(1+1): the smallest body a ClientHello can have.
const MIN_HELLO_BODY = 2 + 32 + 1 + 4 + 2;
const MAX_SESSION_ID = 32;         // RFC 8446 4.1.2 legacy_session_id <0..32>
// RFC 1035 2.3.4: a domain name is at most 255 octets.
const MAX_HOST_NAME = 255;

const EXT_SERVER_NAME = 0;         // RFC 6066 3
const EXT_ALPN = 16;               // RFC 7301 3.1
const EXT_SUPPORTED_VERSIONS = 43; // RFC 8446 4.2.1
const EXT_ECH = 0xfe0d;            // draft-ietf-tls-esni (encrypted_client_hello)
const EXT_ESNI = 0xffce;           // draft-ietf-tls-esni-00..06 (encrypted_server_name)
const NAME_TYPE_HOST = 0;          // RFC 6066 3 NameType.host_name

const F_SNI = TlsFlag.SNI;
const F_ALPN = TlsFlag.ALPN;
const F_SV = TlsFlag.SUPPORTED_VERSIONS;
const F_ECH = TlsFlag.ECH;
const F_ESNI = TlsFlag.ESNI;
const F_GREASE = TlsFlag.GREASE;
const F_EXT = TlsFlag.EXTENSIONS;

const S_HELLO = TlsStatus.CLIENT_HELLO;
const S_NOT_TLS = TlsStatus.NOT_TLS;
const S_NOT_HELLO = TlsStatus.NOT_CLIENT_HELLO;
const S_TRUNCATED = TlsStatus.TRUNCATED;
const S_NEED_MORE = TlsStatus.NEED_MORE;
const S_FRAGMENTED = TlsStatus.FRAGMENTED;
const S_MALFORMED = TlsStatus.MALFORMED;

/**
 * Bytes allowed in a host_name. RFC 6066 3: a DNS host name in ASCII (LDH
 * labels, RFC 5890 A-labels for IDNs). Underscore is not LDH and a
 * trailing dot is not allowed, but both occur in real traffic and are
 * harmless for routing, so they pass; anything else (controls, spaces,
 * non-ASCII, '/', '%') is MALFORMED, as are a leading dot and empty labels.
 */
const HOST_CHAR = new Uint8Array(256);
for (let c = 0x30; c <= 0x39; c++) HOST_CHAR[c] = 1;
for (let c = 0x41; c <= 0x5a; c++) HOST_CHAR[c] = 1;
for (let c = 0x61; c <= 0x7a; c++) HOST_CHAR[c] = 1;
HOST_CHAR[0x2d] = 1; // '-'
HOST_CHAR[0x2e] = 1; // '.'
HOST_CHAR[0x5f] = 1; // '_'

/** RFC 8701 2: GREASE values are 0x0A0A, 0x1A1A, ... 0xFAFA (both bytes equal, low nibble 0xA). */
export function isGrease(v: number): boolean {
  return (v & 0x0f0f) === 0x0a0a && (v >>> 8) === (v & 0xff);
}

function resetOut(out: Int32Array): void {
  out[0] = -1; // SNI_OFF
  out[1] = 0;  // SNI_LEN
  out[2] = -1; // ALPN_OFF
  out[3] = 0;  // ALPN_LEN
  out[4] = 0;  // MAX_VERSION
  out[5] = 0;  // LEGACY_VERSION
  out[6] = 0;  // FLAGS
  out[7] = 0;  // RECORD_END
}

/**
 * Classifies the first bytes a client sent on a TCP connection: `len` bytes
 * at `off` in `buf`. Returns a TlsStatus and fills `out` (TlsOut slots; by
 * default the module-level TLS_OUT). Never reads outside [off, off + len) and
 * never throws because of the bytes; throws RangeError only for a setup error
 * (off/len outside buf, out too short).
 *
 * The SNI and ALPN offsets are final only with CLIENT_HELLO. With NEED_MORE
 * or FRAGMENTED they are set when their extension was complete in the bytes
 * seen (a hint: a later byte may still make the message MALFORMED); with
 * MALFORMED they are always -1.
 */
export function classifyTls(buf: Uint8Array, off: number, len: number, out: Int32Array = TLS_OUT): number {
  if (!(off >= 0 && len >= 0 && off + len <= buf.length) || out.length < TLS_OUT_LEN) {
    throw new RangeError(`classifyTls: off ${off} len ${len} outside a buffer of ${buf.length}, or out shorter than ${TLS_OUT_LEN}`);
  }
  resetOut(out);
  const st = walkHello(buf, off, off + len, out);
  // Offsets into a message we refused must not be used by mistake.
  if (st === S_MALFORMED) { out[0] = -1; out[1] = 0; out[2] = -1; out[3] = 0; }
  return st;
}

function walkHello(buf: Uint8Array, off: number, end: number, out: Int32Array): number {
  const len = end - off;

  // RFC 8446 5.1 record header. Each byte is judged as soon as it is present,
  // so one byte of plain text already says NOT_TLS.
  if (len < 1) return S_TRUNCATED;
  if (buf[off] !== CONTENT_HANDSHAKE) return S_NOT_TLS;
  if (len < 2) return S_TRUNCATED;
  if (buf[off + 1] !== 3) return S_NOT_TLS;
  if (len < 3) return S_TRUNCATED;
  // legacy_record_version: 0x0301 is allowed for an initial ClientHello, 0x0303
  // otherwise (RFC 8446 5.1); 0x0302/0x0304 are seen in the wild. SSL 3.0
  // (0x0300, RFC 7568) and anything else is not routed as TLS.
  const recMinor = buf[off + 2];
  if (recMinor < 1 || recMinor > 4) return S_NOT_TLS;
  if (len < RECORD_HDR) return S_TRUNCATED;
  const recLen = (buf[off + 3] << 8) | buf[off + 4];
  // RFC 8446 5.1: zero-length handshake fragments MUST NOT be sent; plaintext <= 2^14.
  if (recLen === 0 || recLen > MAX_PLAINTEXT) return S_MALFORMED;
  out[7] = RECORD_HDR + recLen;
  const recEnd = off + RECORD_HDR + recLen;
  if (len < RECORD_HDR + 1) return S_TRUNCATED;
  if (buf[off + 5] !== HS_CLIENT_HELLO) return S_NOT_HELLO;
  if (len < RECORD_HDR + HS_HDR) return S_TRUNCATED;
  // The 4-byte handshake header must itself sit in this record.
  if (recLen < HS_HDR) return S_MALFORMED;
  const hsLen = (buf[off + 6] << 16) | (buf[off + 7] << 8) | buf[off + 8];
  if (hsLen < MIN_HELLO_BODY) return S_MALFORMED;
  const helloEnd = off + RECORD_HDR + HS_HDR + hsLen;

  // Bytes we may read: up to the end of the first record and of the buffer.
  // Running out of them is NEED_MORE when the buffer ended first (the record
  // continues in the next segment), FRAGMENTED when the record did (the
  // message continues in the next record). Declared lengths are checked
  // against helloEnd first, so a lie is MALFORMED, not "need more".
  const avail = recEnd < end ? recEnd : end;
  const short = end < recEnd ? S_NEED_MORE : S_FRAGMENTED;

  // RFC 8446 4.1.2 ClientHello body.
  let p = off + RECORD_HDR + HS_HDR;
  // legacy_version(2) + random(32) + legacy_session_id length(1)
  if (p + 2 > avail) return short;
  const legacy = (buf[p] << 8) | buf[p + 1];
  if ((legacy >>> 8) !== 3) return S_MALFORMED;
  out[5] = legacy;
  if (p + 35 > avail) return short;
  p += 34;
  const sidLen = buf[p];
  if (sidLen > MAX_SESSION_ID) return S_MALFORMED;
  p += 1 + sidLen;
  // cipher_suites<2..2^16-2>: pairs, at least one.
  if (p + 2 > helloEnd) return S_MALFORMED;
  if (p + 2 > avail) return short;
  const csLen = (buf[p] << 8) | buf[p + 1];
  if (csLen < 2 || (csLen & 1) !== 0) return S_MALFORMED;
  p += 2 + csLen;
  // legacy_compression_methods<1..2^8-1>
  if (p + 1 > helloEnd) return S_MALFORMED;
  if (p + 1 > avail) return short;
  const cmLen = buf[p];
  if (cmLen < 1) return S_MALFORMED;
  p += 1 + cmLen;
  if (p > helloEnd) return S_MALFORMED;

  if (p < helloEnd) {
    // RFC 5246 7.4.1.2: anything after compression_methods is the extensions
    // block, and it must fill the message exactly (RFC 8446 4.1.2: it is the
    // last field).
    if (p + 2 > helloEnd) return S_MALFORMED;
    if (p + 2 > avail) return short;
    const extLen = (buf[p] << 8) | buf[p + 1];
    const extEnd = p + 2 + extLen;
    if (extEnd !== helloEnd) return S_MALFORMED;
    let flags = F_EXT;
    let q = p + 2;
    while (q < extEnd) {
      if (q + 4 > extEnd) return S_MALFORMED;
      if (q + 4 > avail) { out[6] = flags; return short; }
      const type = (buf[q] << 8) | buf[q + 1];
      const eLen = (buf[q + 2] << 8) | buf[q + 3];
      const d = q + 4;
      const dEnd = d + eLen;
      if (dEnd > extEnd) return S_MALFORMED;
      if (type === EXT_SERVER_NAME) {
        // RFC 8446 4.2: at most one extension of a type per block.
        if ((flags & F_SNI) !== 0) return S_MALFORMED;
        flags |= F_SNI;
        if (dEnd > avail) { out[6] = flags; return short; }
        // RFC 6066 3: ServerNameList server_name_list<1..2^16-1>, exactly filling the extension.
        if (eLen < 2) return S_MALFORMED;
        const listLen = (buf[d] << 8) | buf[d + 1];
        if (listLen === 0 || listLen + 2 !== eLen) return S_MALFORMED;
        let r = d + 2;
        let hostOff = -1;
        let hostLen = 0;
        while (r < dEnd) {
          if (r + 3 > dEnd) return S_MALFORMED;
          const nameType = buf[r];
          const nameLen = (buf[r + 1] << 8) | buf[r + 2];
          const n = r + 3;
          // opaque<1..2^16-1>: no empty names.
          if (nameLen === 0 || n + nameLen > dEnd) return S_MALFORMED;
          if (nameType === NAME_TYPE_HOST) {
            // RFC 6066 3: no more than one name of the same name_type.
            if (hostOff >= 0) return S_MALFORMED;
            if (nameLen > MAX_HOST_NAME) return S_MALFORMED;
            for (let k = n; k < n + nameLen; k++) if (HOST_CHAR[buf[k]] === 0) return S_MALFORMED;
            // A leading dot or an empty label is not a host name.
            if (buf[n] === 0x2e) return S_MALFORMED;
            for (let k = n + 1; k < n + nameLen; k++) if (buf[k] === 0x2e && buf[k - 1] === 0x2e) return S_MALFORMED;
            hostOff = n;
            hostLen = nameLen;
          }
          // Other name types (none are defined) are skipped: we route on host_name only.
          r = n + nameLen;
        }
        out[0] = hostOff;
        out[1] = hostLen;
      } else if (type === EXT_ALPN) {
        if ((flags & F_ALPN) !== 0) return S_MALFORMED;
        flags |= F_ALPN;
        if (dEnd > avail) { out[6] = flags; return short; }
        // RFC 7301 3.1: ProtocolNameList protocol_name_list<2..2^16-1>; ProtocolName opaque<1..2^8-1>.
        if (eLen < 2) return S_MALFORMED;
        const listLen = (buf[d] << 8) | buf[d + 1];
        if (listLen < 2 || listLen + 2 !== eLen) return S_MALFORMED;
        let r = d + 2;
        while (r < dEnd) {
          const nameLen = buf[r];
          if (nameLen === 0 || r + 1 + nameLen > dEnd) return S_MALFORMED;
          r += 1 + nameLen;
        }
        out[2] = d + 2;
        out[3] = listLen;
      } else if (type === EXT_SUPPORTED_VERSIONS) {
        if ((flags & F_SV) !== 0) return S_MALFORMED;
        flags |= F_SV;
        if (dEnd > avail) { out[6] = flags; return short; }
        // RFC 8446 4.2.1: ProtocolVersion versions<2..254> in a ClientHello.
        if (eLen < 1) return S_MALFORMED;
        const vLen = buf[d];
        if (vLen < 2 || (vLen & 1) !== 0 || vLen + 1 !== eLen) return S_MALFORMED;
        let max = 0;
        for (let r = d + 1; r < dEnd; r += 2) {
          const v = (buf[r] << 8) | buf[r + 1];
          if (isGrease(v)) flags |= F_GREASE;
          else if (v > max) max = v;
        }
        out[4] = max;
      } else if (type === EXT_ECH) {
        if ((flags & F_ECH) !== 0) return S_MALFORMED;
        flags |= F_ECH;
      } else if (type === EXT_ESNI) {
        if ((flags & F_ESNI) !== 0) return S_MALFORMED;
        flags |= F_ESNI;
      } else if (isGrease(type)) {
        flags |= F_GREASE;
      }
      // Other extensions are skipped unread; their length was checked against the block.
      q = dEnd;
    }
    out[6] = flags;
  }
  // Everything declared was consistent; is all of it here?
  if (helloEnd > avail) return short;
  return S_HELLO;
}

// Off the hot path: strings for logs, the admin API, tests.

const scratch = new Int32Array(TLS_OUT_LEN);

function latin1(buf: Uint8Array, off: number, len: number): string {
  let s = '';
  for (let k = off; k < off + len; k++) s += String.fromCharCode(buf[k]);
  return s;
}

/** The host_name of a complete, well-formed ClientHello at [off, off + len), or null. */
export function readSni(buf: Uint8Array, off: number, len: number): string | null {
  if (classifyTls(buf, off, len, scratch) !== S_HELLO || scratch[TlsOut.SNI_OFF] < 0) return null;
  return latin1(buf, scratch[TlsOut.SNI_OFF], scratch[TlsOut.SNI_LEN]);
}

/** The ALPN protocol names of a complete, well-formed ClientHello at [off, off + len), in order; [] when none. */
export function readAlpn(buf: Uint8Array, off: number, len: number): string[] {
  if (classifyTls(buf, off, len, scratch) !== S_HELLO) return [];
  return alpnNames(buf, scratch);
}

/**
 * The ALPN names that `out` (filled by classifyTls) points at; [] when none.
 * Names are opaque bytes (RFC 7301 3.1), shown as latin1 so every byte maps to one character.
 */
export function alpnNames(buf: Uint8Array, out: Int32Array): string[] {
  const names: string[] = [];
  const o = out[TlsOut.ALPN_OFF];
  if (o < 0) return names;
  const e = o + out[TlsOut.ALPN_LEN];
  for (let r = o; r < e && r + 1 + buf[r] <= e; r += 1 + buf[r]) names.push(latin1(buf, r + 1, buf[r]));
  return names;
}

/** The host_name that `out` (filled by classifyTls) points at, or null. */
export function sniName(buf: Uint8Array, out: Int32Array): string | null {
  return out[TlsOut.SNI_OFF] < 0 ? null : latin1(buf, out[TlsOut.SNI_OFF], out[TlsOut.SNI_LEN]);
}
