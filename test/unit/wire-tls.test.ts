// ClientHello sniffing (src/wire/tls.ts): crafted hellos built byte by byte,
// every truncation, hostile lengths, a real hello from `openssl s_client`,
// the ClientHellos of the shared corpus against tshark run at test time, and
// fast-check properties (never throws, never reads outside [off, off + len)).
import t from 'tap';
import fc from 'fast-check';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import {
  TLS_OUT_LEN, TLS_STATUS_NAMES, TlsFlag, TlsOut, TlsStatus, alpnNames, classifyTls, isGrease, readAlpn, readSni, sniName,
} from '../../src/wire/tls.js';
import { Batch } from '../../src/io/batch.js';
import { openCapture, PcapFormatError } from '../../src/io/pcap-file.js';
import { parseBatch, parseNetwork } from '../../src/wire/parse.js';
import { InnerKind, Meta, MetaFlag } from '../../src/wire/meta.js';
import { headerLen as tcpHeaderLen } from '../../src/wire/tcp.js';
import { REPO_ROOT } from '../diff/corpus.js';

const CORPUS_DIR = path.resolve(REPO_ROOT, '../shared/pcaps');
const S = TlsStatus;
const NAME = (st: number) => TLS_STATUS_NAMES[st] ?? `status ${st}`;

// ---------------------------------------------------------------------------
// Builder: ClientHellos byte by byte (RFC 8446 5.1, 4, 4.1.2; RFC 6066 3; RFC 7301 3.1).

type Bytes = number[];
const u16 = (v: number): Bytes => [(v >>> 8) & 0xff, v & 0xff];
const u24 = (v: number): Bytes => [(v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff];
const vec8 = (b: Bytes): Bytes => [b.length, ...b];
const vec16 = (b: Bytes): Bytes => [...u16(b.length), ...b];
const ascii = (s: string): Bytes => [...Buffer.from(s, 'latin1')];
const fill = (n: number, seed: number): Bytes => Array.from({ length: n }, (_, k) => (seed * 31 + k * 7) & 0xff);

const ext = (type: number, data: Bytes): Bytes => [...u16(type), ...vec16(data)];
/** server_name with one host_name entry per name (RFC 6066 3). */
const sniExt = (...names: string[]): Bytes => ext(0, vec16(names.flatMap((n) => [0, ...vec16(ascii(n))])));
const alpnExt = (...protos: string[]): Bytes => ext(16, vec16(protos.flatMap((p) => vec8(ascii(p)))));
const svExt = (...versions: number[]): Bytes => ext(43, vec8(versions.flatMap(u16)));
const keyShareExt = (): Bytes => ext(51, vec16([...u16(0x001d), ...vec16(fill(32, 5))]));

interface HelloSpec {
  recordType?: number;
  recordVersion?: number;
  hsType?: number;
  legacyVersion?: number;
  random?: Bytes;
  sessionId?: Bytes;
  suites?: number[];
  compression?: Bytes;
  /** null: no extensions block at all (allowed before TLS 1.3). */
  extensions?: Bytes[] | null;
  /** Raw bytes appended after the extensions block, inside the handshake message. */
  trailing?: Bytes;
}

function handshake(spec: HelloSpec): Bytes {
  const body = [
    ...u16(spec.legacyVersion ?? 0x0303),
    ...(spec.random ?? fill(32, 1)),
    ...vec8(spec.sessionId ?? []),
    ...vec16((spec.suites ?? [0xc02f]).flatMap(u16)),
    ...vec8(spec.compression ?? [0]),
    ...(spec.extensions === null ? [] : vec16((spec.extensions ?? []).flat())),
    ...(spec.trailing ?? []),
  ];
  return [spec.hsType ?? 1, ...u24(body.length), ...body];
}
const record = (type: number, version: number, payload: Bytes): Bytes => [type, ...u16(version), ...u16(payload.length), ...payload];
const hello = (spec: HelloSpec): Buffer =>
  Buffer.from(record(spec.recordType ?? 22, spec.recordVersion ?? 0x0301, handshake(spec)));

const TLS12: HelloSpec = {
  legacyVersion: 0x0303,
  suites: [0xc02f, 0xc030, 0x009c, 0x00ff],
  extensions: [
    sniExt('www.example.com'),
    ext(11, vec8([0])),                               // ec_point_formats
    ext(10, vec16([...u16(0x001d), ...u16(0x0017)])), // supported_groups
    alpnExt('http/1.1'),
    ext(13, vec16([...u16(0x0401), ...u16(0x0804)])), // signature_algorithms
    ext(0xff01, [0]),                                 // renegotiation_info
  ],
};
const TLS13: HelloSpec = {
  recordVersion: 0x0301,
  legacyVersion: 0x0303,
  sessionId: fill(32, 9),
  suites: [0x3a3a, 0x1301, 0x1302, 0x1303, 0xc02b],
  extensions: [
    ext(0x1a1a, []),                                  // GREASE (RFC 8701) first, empty
    sniExt('api.test-1.example.org'),
    ext(23, []),                                      // extended_master_secret
    alpnExt('h2', 'http/1.1'),
    svExt(0x7a7a, 0x0304, 0x0303),
    keyShareExt(),
    ext(45, vec8([1])),                               // psk_key_exchange_modes
    ext(0x2a2a, [0]),                                 // GREASE last, one byte
  ],
};
const NO_SNI: HelloSpec = { ...TLS13, extensions: TLS13.extensions!.filter((e) => !(e[0] === 0 && e[1] === 0)) };
const NO_EXT: HelloSpec = { recordVersion: 0x0301, legacyVersion: 0x0301, suites: [0x0004, 0x0005, 0x002f], extensions: null };
const ECH: HelloSpec = {
  ...TLS13,
  extensions: [sniExt('public.example'), svExt(0x0304), keyShareExt(), ext(0xfe0d, [0, ...u16(1), ...u16(1), 7, ...vec16(fill(32, 3)), ...vec16(fill(64, 4))])],
};
const ESNI: HelloSpec = { ...TLS13, extensions: [svExt(0x0304), keyShareExt(), ext(0xffce, [...u16(0x1301), ...fill(40, 8)])] };

interface Fixture { name: string; bytes: Buffer; sni: string | null; alpn: string[]; maxVersion: number; legacy: number; flags: number }
const FIXTURES: Fixture[] = [
  { name: 'TLS 1.2 with SNI and ALPN', bytes: hello(TLS12), sni: 'www.example.com', alpn: ['http/1.1'], maxVersion: 0, legacy: 0x0303,
    flags: TlsFlag.EXTENSIONS | TlsFlag.SNI | TlsFlag.ALPN },
  { name: 'TLS 1.3 with GREASE, SNI, ALPN, supported_versions', bytes: hello(TLS13), sni: 'api.test-1.example.org', alpn: ['h2', 'http/1.1'],
    maxVersion: 0x0304, legacy: 0x0303, flags: TlsFlag.EXTENSIONS | TlsFlag.SNI | TlsFlag.ALPN | TlsFlag.SUPPORTED_VERSIONS | TlsFlag.GREASE },
  { name: 'TLS 1.3 without SNI', bytes: hello(NO_SNI), sni: null, alpn: ['h2', 'http/1.1'], maxVersion: 0x0304, legacy: 0x0303,
    flags: TlsFlag.EXTENSIONS | TlsFlag.ALPN | TlsFlag.SUPPORTED_VERSIONS | TlsFlag.GREASE },
  { name: 'TLS 1.0 without an extensions block', bytes: hello(NO_EXT), sni: null, alpn: [], maxVersion: 0, legacy: 0x0301, flags: 0 },
  { name: 'encrypted_client_hello with the public name as SNI', bytes: hello(ECH), sni: 'public.example', alpn: [], maxVersion: 0x0304,
    legacy: 0x0303, flags: TlsFlag.EXTENSIONS | TlsFlag.SNI | TlsFlag.SUPPORTED_VERSIONS | TlsFlag.ECH },
  { name: 'encrypted_server_name (draft ESNI), no SNI', bytes: hello(ESNI), sni: null, alpn: [], maxVersion: 0x0304, legacy: 0x0303,
    flags: TlsFlag.EXTENSIONS | TlsFlag.SUPPORTED_VERSIONS | TlsFlag.ESNI },
];

/** `bytes` at offset 7 of a larger buffer whose other bytes are `poison`. */
function embed(bytes: Uint8Array, poison: number, pre = 7, post = 24): Buffer {
  const b = Buffer.alloc(pre + bytes.length + post, poison);
  b.set(bytes, pre);
  return b;
}

/**
 * A view of `buf` that records every index read. classifyTls takes a
 * Uint8Array and reads it by index, so a Proxy sees every byte access.
 */
function tracked(buf: Uint8Array): { view: Uint8Array; reads: { min: number; max: number; n: number } } {
  const reads = { min: Infinity, max: -Infinity, n: 0 };
  const view = new Proxy(buf, {
    get(target, prop) {
      if (typeof prop === 'string' && /^\d+$/.test(prop)) {
        const k = Number(prop);
        reads.n++;
        if (k < reads.min) reads.min = k;
        if (k > reads.max) reads.max = k;
        return target[k];
      }
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { view, reads };
}

/** Classifies `bytes` placed inside poison with a read tracker; '' when it stayed inside, else what went wrong. */
function boundsViolation(bytes: Uint8Array, len = bytes.length): string {
  const pre = 5;
  const buf = embed(bytes, 0xa5, pre);
  const { view, reads } = tracked(buf);
  const out = new Int32Array(TLS_OUT_LEN);
  let st: number;
  try {
    st = classifyTls(view, pre, len, out);
  } catch (e) {
    return `threw ${(e as Error).message}`;
  }
  if (reads.n > 0 && (reads.min < pre || reads.max >= pre + len)) return `read [${reads.min}, ${reads.max}] outside [${pre}, ${pre + len})`;
  if (!(st >= 0 && st < TLS_STATUS_NAMES.length)) return `status ${st}`;
  return '';
}

// ---------------------------------------------------------------------------

t.test('the hot path allocates nothing per call', async (t) => {
  const bufs = FIXTURES.map((f) => f.bytes);
  const out = new Int32Array(TLS_OUT_LEN);
  let sink = 0;
  const round = () => {
    for (let k = 0; k < bufs.length; k++) {
      const b = bufs[k];
      sink += classifyTls(b, 0, b.length, out) + out[TlsOut.SNI_OFF];
      sink += classifyTls(b, 0, b.length >>> 1, out); // NEED_MORE path
      sink += classifyTls(b, 0, 3, out);              // TRUNCATED path
    }
  };
  for (let k = 0; k < 5000; k++) round(); // warm up / optimise
  // A real per-call allocation shows in every attempt; a JIT recompilation is transient: best of three.
  let perCall = Infinity;
  for (let attempt = 0; attempt < 3 && perCall >= 0.5; attempt++) {
    globalThis.gc?.();
    const before = process.memoryUsage().heapUsed;
    for (let k = 0; k < 5000; k++) round();
    perCall = Math.min(perCall, (process.memoryUsage().heapUsed - before) / (5000 * bufs.length * 3));
  }
  t.ok(perCall < 0.5, `heap growth per call ${perCall.toFixed(4)} bytes`);
  t.ok(sink !== 0);
});

t.test('status names match the status constants', async (t) => {
  const vals = Object.values(TlsStatus);
  t.equal(TLS_STATUS_NAMES.length, vals.length);
  for (const [k, v] of Object.entries(TlsStatus)) t.equal(TLS_STATUS_NAMES[v], k.toLowerCase(), k);
});

t.test('isGrease: exactly the 16 RFC 8701 values', async (t) => {
  const found: number[] = [];
  for (let v = 0; v < 0x10000; v++) if (isGrease(v)) found.push(v);
  t.same(found, Array.from({ length: 16 }, (_, k) => (k << 12) | 0x0a00 | (k << 4) | 0x0a));
});

t.test('crafted ClientHellos classify with the right outputs', async (t) => {
  for (const f of FIXTURES) {
    // At an offset inside a larger buffer: offsets in out are absolute.
    const at = 11;
    const buf = embed(f.bytes, 0x16, at);
    const out = new Int32Array(TLS_OUT_LEN);
    const st = classifyTls(buf, at, f.bytes.length, out);
    t.equal(NAME(st), 'client_hello', f.name);
    t.equal(sniName(buf, out), f.sni, `${f.name}: SNI`);
    t.same(alpnNames(buf, out), f.alpn, `${f.name}: ALPN`);
    t.equal(out[TlsOut.MAX_VERSION], f.maxVersion, `${f.name}: supported_versions max`);
    t.equal(out[TlsOut.LEGACY_VERSION], f.legacy, `${f.name}: legacy_version`);
    t.equal(out[TlsOut.FLAGS], f.flags, `${f.name}: flags`);
    t.equal(out[TlsOut.RECORD_END], f.bytes.length, `${f.name}: record end`);
    if (f.sni !== null) {
      t.ok(out[TlsOut.SNI_OFF] >= at && out[TlsOut.SNI_OFF] + out[TlsOut.SNI_LEN] <= at + f.bytes.length, `${f.name}: SNI inside`);
    }
    t.equal(readSni(buf, at, f.bytes.length), f.sni, `${f.name}: readSni`);
    t.same(readAlpn(buf, at, f.bytes.length), f.alpn, `${f.name}: readAlpn`);
    // The default output is the module-level one.
    t.equal(classifyTls(f.bytes, 0, f.bytes.length), S.CLIENT_HELLO);
  }
});

t.test('every truncation is TRUNCATED or NEED_MORE and never a wrong SNI', async (t) => {
  const out = new Int32Array(TLS_OUT_LEN);
  for (const f of FIXTURES) {
    const full = new Int32Array(TLS_OUT_LEN);
    classifyTls(f.bytes, 0, f.bytes.length, full);
    const sniEnd = full[TlsOut.SNI_OFF] + full[TlsOut.SNI_LEN];
    const bad: string[] = [];
    for (let L = 0; L < f.bytes.length; L++) {
      const st = classifyTls(f.bytes, 0, L, out);
      const want = L < 9 ? S.TRUNCATED : S.NEED_MORE;
      if (st !== want) bad.push(`L=${L}: ${NAME(st)}, want ${NAME(want)}`);
      if (L >= 5 && out[TlsOut.RECORD_END] !== f.bytes.length) bad.push(`L=${L}: record end ${out[TlsOut.RECORD_END]}`);
      const sni = sniName(f.bytes, out);
      // The SNI is reported as soon as (and only when) its extension is complete, and it is the right one.
      if (f.sni !== null && L >= sniEnd) {
        if (sni !== f.sni) bad.push(`L=${L}: SNI ${sni}, want ${f.sni}`);
      } else if (sni !== null) bad.push(`L=${L}: SNI ${sni} before its extension is complete`);
      const v = boundsViolation(f.bytes, L);
      if (v) bad.push(`L=${L}: ${v}`);
    }
    t.same(bad, [], `${f.name}: ${f.bytes.length} truncations`);
  }
});

t.test('a ClientHello split over several TLS records is FRAGMENTED', async (t) => {
  const hs = handshake(TLS13);
  for (const size of [20, 64, 150]) {
    const recs: Bytes = [];
    for (let k = 0; k < hs.length; k += size) recs.push(...record(22, 0x0303, hs.slice(k, k + size)));
    const buf = Buffer.from(recs);
    const out = new Int32Array(TLS_OUT_LEN);
    t.equal(NAME(classifyTls(buf, 0, buf.length, out)), 'fragmented', `records of ${size}`);
    t.equal(out[TlsOut.RECORD_END], 5 + size, `records of ${size}: first record end`);
    // The first record of 150 bytes holds the whole server_name extension.
    t.equal(sniName(buf, out), size === 150 ? 'api.test-1.example.org' : null, `records of ${size}: SNI found in the first record only if complete there`);
    // Cut inside the first record: still waiting for that record.
    t.equal(NAME(classifyTls(buf, 0, 5 + size - 1, out)), size < 9 - 5 ? 'truncated' : 'need_more', `records of ${size}: cut in the first record`);
  }
});

t.test('bytes after the ClientHello do not matter', async (t) => {
  const h = hello(TLS12);
  // A second record in the same segment (a TLS 1.3 middlebox-compat ChangeCipherSpec).
  const two = Buffer.concat([h, Buffer.from(record(20, 0x0303, [1]))]);
  t.equal(NAME(classifyTls(two, 0, two.length)), 'client_hello', 'followed by another record');
  // Record longer than the message (a coalesced handshake message after it, RFC 8446 5.1).
  const hs = handshake(TLS12);
  const coalesced = Buffer.from(record(22, 0x0301, [...hs, 2, 0, 0, 0]));
  const out = new Int32Array(TLS_OUT_LEN);
  t.equal(NAME(classifyTls(coalesced, 0, coalesced.length, out)), 'client_hello', 'record holding more than the hello');
  t.equal(sniName(coalesced, out), 'www.example.com');
});

t.test('server names: what passes, what is refused', async (t) => {
  const withSni = (sniData: Bytes) => hello({ ...TLS12, extensions: [ext(0, sniData), alpnExt('h2')] });
  const hostList = (...entries: [number, Bytes][]) => vec16(entries.flatMap(([ty, n]) => [ty, ...vec16(n)]));
  const long = (n: number) => ascii(Array.from({ length: n }, (_, k) => (k % 10 === 9 ? '.' : 'a')).join(''));
  const ok: [string, Bytes, string | null][] = [
    ['upper case, digits, hyphen, underscore', hostList([0, ascii('Mail-01_x.Example.COM')]), 'Mail-01_x.Example.COM'],
    ['trailing dot (seen in the wild)', hostList([0, ascii('example.com.')]), 'example.com.'],
    ['single label', hostList([0, ascii('localhost')]), 'localhost'],
    ['255 bytes', hostList([0, long(255)]), String.fromCharCode(...long(255))],
    ['unknown name type before host_name', hostList([1, ascii('x')], [0, ascii('b.example')]), 'b.example'],
    ['only an unknown name type', hostList([7, ascii('opaque')]), null],
  ];
  for (const [name, data, want] of ok) {
    const b = withSni(data);
    const out = new Int32Array(TLS_OUT_LEN);
    t.equal(NAME(classifyTls(b, 0, b.length, out)), 'client_hello', name);
    t.equal(sniName(b, out), want, `${name}: SNI`);
    t.ok(out[TlsOut.FLAGS] & TlsFlag.SNI, `${name}: SNI flag`);
  }
  const bad: [string, Bytes][] = [
    ['empty extension data', []],
    ['one byte of list length', [0]],
    ['list length 0', u16(0)],
    ['list length one too long', [...u16(13), 0, ...vec16(ascii('a.example'))]],
    ['list length one too short', [...u16(11), 0, ...vec16(ascii('a.example'))]],
    ['entry header cut by the list', vec16([0, 0])],
    ['name length 0', hostList([0, []])],
    ['name runs past the list', vec16([0, ...u16(20), ...ascii('a.example')])],
    ['256 bytes', hostList([0, long(256)])],
    ['non-ASCII (UTF-8 é)', hostList([0, [...Buffer.from('café.example', 'utf8')]])],
    ['NUL byte', hostList([0, [...ascii('a.example'), 0]])],
    ['space', hostList([0, ascii('a example')])],
    ['slash', hostList([0, ascii('a.example/x')])],
    ['percent', hostList([0, ascii('a%2eexample')])],
    ['leading dot', hostList([0, ascii('.example')])],
    ['empty label', hostList([0, ascii('a..example')])],
    ['two host_names', hostList([0, ascii('a.example')], [0, ascii('b.example')])],
  ];
  for (const [name, data] of bad) {
    const b = withSni(data);
    const out = new Int32Array(TLS_OUT_LEN);
    t.equal(NAME(classifyTls(b, 0, b.length, out)), 'malformed', name);
    t.equal(out[TlsOut.SNI_OFF], -1, `${name}: no SNI offset`);
    t.equal(readSni(b, 0, b.length), null, `${name}: readSni null`);
    t.equal(boundsViolation(b), '', `${name}: in bounds`);
  }
});

t.test('hostile and inconsistent lengths are MALFORMED', async (t) => {
  const base = hello(TLS12);
  const patch = (b: Buffer, at: number, bytes: Bytes) => { const c = Buffer.from(b); c.set(bytes, at); return c; };
  const hsLenAt = 6;
  const hsLen = base.readUIntBE(hsLenAt, 3);
  const extLenAt = 5 + 4 + 2 + 32 + 1 + 2 + 8 + 2; // record, hs header, version, random, sid(0), suites(4), compression(1)
  t.equal(base.readUInt16BE(extLenAt) + extLenAt + 2, base.length, 'extension length offset in the fixture');
  const cases: [string, Buffer][] = [
    ['record length 0', Buffer.from([22, 3, 1, 0, 0, 1, 0, 0, 41, ...fill(41, 1)])],
    ['record length 2^14 + 1', patch(base, 3, u16((1 << 14) + 1))],
    ['record shorter than the handshake header', Buffer.from([22, 3, 1, 0, 3, 1, 0, 0, 60, ...fill(60, 2)])],
    ['handshake length below the smallest ClientHello', patch(base, hsLenAt, u24(40))],
    ['handshake length one short', patch(base, hsLenAt, u24(hsLen - 1))],
    ['handshake length one long, record unchanged', patch(base, hsLenAt, u24(hsLen + 1))],
    ['handshake length one long, one more byte in the record', patch(patch(Buffer.concat([base, Buffer.from([0])]), 3, u16(base.length - 5 + 1)), hsLenAt, u24(hsLen + 1))],
    ['handshake length 2^24 - 1', patch(base, hsLenAt, u24(0xffffff))],
    ['legacy_version 0x0203', hello({ ...TLS12, legacyVersion: 0x0203 })],
    ['session id of 33 bytes', hello({ ...TLS12, sessionId: fill(33, 2) })],
    ['odd cipher suites length', Buffer.from(record(22, 0x0301, ((): Bytes => {
      const body = [...u16(0x0303), ...fill(32, 1), 0, ...u16(3), 0xc0, 0x2f, 0x00, 1, 0];
      return [1, ...u24(body.length), ...body];
    })()))],
    ['no cipher suites', hello({ ...TLS12, suites: [] })],
    ['no compression methods', hello({ ...TLS12, compression: [] })],
    ['compression list past the message', Buffer.from(record(22, 0x0301, ((): Bytes => {
      const body = [...u16(0x0303), ...fill(32, 1), 0, ...u16(2), 0xc0, 0x2f, 200, 0, 0, 0];
      return [1, ...u24(body.length), ...body];
    })()))],
    ['one stray byte after compression methods', hello({ ...TLS12, extensions: null, trailing: [0] })],
    ['bytes after the extensions block', hello({ ...TLS12, trailing: [0, 0] })],
    ['extensions length one long', patch(base, extLenAt, u16(base.readUInt16BE(extLenAt) + 1))],
    ['extensions length one short', patch(base, extLenAt, u16(base.readUInt16BE(extLenAt) - 1))],
    ['extension header cut by the block', hello({ ...TLS12, extensions: [...TLS12.extensions!, [0, 21, 0]] })],
    ['extension data past the block', hello({ ...TLS12, extensions: [...TLS12.extensions!, [0, 21, 0, 9, 1]] })],
    ['two server_name extensions', hello({ ...TLS12, extensions: [sniExt('a.example'), sniExt('b.example')] })],
    ['two ALPN extensions', hello({ ...TLS12, extensions: [alpnExt('h2'), alpnExt('h2')] })],
    ['ALPN empty data', hello({ ...TLS12, extensions: [ext(16, [])] })],
    ['ALPN list length 0', hello({ ...TLS12, extensions: [ext(16, u16(0))] })],
    ['ALPN list of one byte', hello({ ...TLS12, extensions: [ext(16, vec16([0]))] })],
    ['ALPN empty name', hello({ ...TLS12, extensions: [ext(16, vec16([2, ...ascii('h2'), 0]))] })],
    ['ALPN name past the list', hello({ ...TLS12, extensions: [ext(16, vec16([5, ...ascii('h2')]))] })],
    ['ALPN list length mismatch', hello({ ...TLS12, extensions: [ext(16, [...u16(2), 2, ...ascii('h2')])] })],
    ['supported_versions empty', hello({ ...TLS13, extensions: [ext(43, [])] })],
    ['supported_versions odd', hello({ ...TLS13, extensions: [ext(43, vec8([3, 4, 3]))] })],
    ['supported_versions of one version byte', hello({ ...TLS13, extensions: [ext(43, vec8([]))] })],
    ['supported_versions length mismatch', hello({ ...TLS13, extensions: [ext(43, [4, 3, 4])] })],
    ['two supported_versions', hello({ ...TLS13, extensions: [svExt(0x0304), svExt(0x0304)] })],
    ['two encrypted_client_hello', hello({ ...TLS13, extensions: [ext(0xfe0d, [0]), ext(0xfe0d, [0])] })],
  ];
  for (const [name, b] of cases) {
    const out = new Int32Array(TLS_OUT_LEN);
    t.equal(NAME(classifyTls(b, 0, b.length, out)), 'malformed', name);
    t.equal(out[TlsOut.SNI_OFF], -1, `${name}: no SNI offset`);
    t.equal(out[TlsOut.ALPN_OFF], -1, `${name}: no ALPN offset`);
    t.equal(boundsViolation(b), '', `${name}: in bounds`);
  }
});

t.test('other traffic is NOT_TLS or NOT_CLIENT_HELLO', async (t) => {
  const server = Buffer.from(record(22, 0x0303, [2, ...u24(38), ...u16(0x0303), ...fill(32, 1), 0, 0x13, 0x01, 0]));
  const cases: [string, Buffer, string][] = [
    ['HTTP request', Buffer.from('GET / HTTP/1.1\r\nHost: a\r\n\r\n'), 'not_tls'],
    ['SSH banner', Buffer.from('SSH-2.0-OpenSSH_9.2\r\n'), 'not_tls'],
    ['one plain byte', Buffer.from('G'), 'not_tls'],
    ['application data record', Buffer.from(record(23, 0x0303, fill(40, 1))), 'not_tls'],
    ['SSL 3.0 record version', hello({ ...TLS12, recordVersion: 0x0300 }), 'not_tls'],
    ['record version 0x0305', hello({ ...TLS12, recordVersion: 0x0305 }), 'not_tls'],
    ['record version 0x0201', hello({ ...TLS12, recordVersion: 0x0201 }), 'not_tls'],
    ['SSLv2 ClientHello', Buffer.from([0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10, ...fill(37, 1)]), 'not_tls'],
    ['ServerHello', server, 'not_client_hello'],
    ['Certificate as first message', hello({ ...TLS12, hsType: 11 }), 'not_client_hello'],
    ['empty payload', Buffer.alloc(0), 'truncated'],
    ['a lone handshake byte', Buffer.from([22]), 'truncated'],
  ];
  for (const [name, b, want] of cases) {
    t.equal(NAME(classifyTls(b, 0, b.length)), want, name);
    t.equal(boundsViolation(b), '', `${name}: in bounds`);
  }
});

t.test('setup errors throw RangeError; contents never do', async (t) => {
  const b = hello(TLS12);
  t.throws(() => classifyTls(b, -1, 10), RangeError);
  t.throws(() => classifyTls(b, 0, b.length + 1), RangeError);
  t.throws(() => classifyTls(b, 10, b.length), RangeError);
  t.throws(() => classifyTls(b, 0, b.length, new Int32Array(3)), RangeError);
  t.equal(classifyTls(b, b.length, 0), S.TRUNCATED, 'zero bytes at the very end');
});

// ---------------------------------------------------------------------------
// A real ClientHello from OpenSSL's client.

/** Runs `openssl s_client` against a loopback server that keeps the first record and closes. */
function opensslHello(args: string[]): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let got: Buffer | null = null;
    const server = net.createServer((sock) => {
      const parts: Buffer[] = [];
      sock.on('data', (d: Buffer) => {
        parts.push(d);
        const b = Buffer.concat(parts);
        if (b.length >= 5 && b.length >= 5 + b.readUInt16BE(3)) {
          got = b;
          sock.destroy();
        }
      });
      sock.on('error', () => {});
      sock.on('close', () => server.close());
    });
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port;
      const child = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, ...args], { stdio: ['ignore', 'ignore', 'ignore'] });
      const timer = setTimeout(() => child.kill(), 5000);
      child.on('error', (e) => { clearTimeout(timer); server.close(); reject(e); });
      child.on('exit', () => {
        clearTimeout(timer);
        server.close();
        if (got) resolve(got);
        else reject(new Error(`openssl ${args.join(' ')}: no ClientHello received`));
      });
    });
  });
}

function haveTool(cmd: string, arg: string): boolean {
  try {
    execFileSync(cmd, [arg], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

t.test('a real ClientHello from openssl s_client', { skip: haveTool('openssl', 'version') ? false : 'openssl not installed' }, async (t) => {
  const runs: [string, string[], string | null, string[], number][] = [
    ['TLS 1.3 default', ['-servername', 'test.example', '-alpn', 'h2,http/1.1'], 'test.example', ['h2', 'http/1.1'], 0x0304],
    ['-tls1_2', ['-servername', 'test.example', '-alpn', 'h2,http/1.1', '-tls1_2'], 'test.example', ['h2', 'http/1.1'], 0],
    ['-noservername', ['-noservername', '-alpn', 'http/1.1'], null, ['http/1.1'], 0x0304],
  ];
  for (const [name, args, sni, alpn, maxVersion] of runs) {
    const b = await opensslHello(args);
    const out = new Int32Array(TLS_OUT_LEN);
    t.equal(NAME(classifyTls(b, 0, b.length, out)), 'client_hello', `${name}: ${b.length} bytes`);
    t.equal(sniName(b, out), sni, `${name}: SNI`);
    t.same(alpnNames(b, out), alpn, `${name}: ALPN`);
    t.equal(out[TlsOut.MAX_VERSION], maxVersion, `${name}: supported_versions max`);
    t.equal(out[TlsOut.LEGACY_VERSION], 0x0303, `${name}: legacy_version`);
    // Every prefix of the real hello: TRUNCATED or NEED_MORE, right SNI or none, in bounds.
    const bad: string[] = [];
    for (let L = 0; L < b.length; L++) {
      const st = classifyTls(b, 0, L, out);
      if (st !== (L < 9 ? S.TRUNCATED : S.NEED_MORE)) bad.push(`L=${L}: ${NAME(st)}`);
      const s = sniName(b, out);
      if (s !== null && s !== sni) bad.push(`L=${L}: SNI ${s}`);
      if (L % 7 === 0) { const v = boundsViolation(b, L); if (v) bad.push(`L=${L}: ${v}`); }
    }
    t.same(bad, [], `${name}: every prefix`);
  }
});

// ---------------------------------------------------------------------------
// The corpus: every TCP payload of the captures holding ClientHellos, against tshark.

const TLS_CAPTURES = [
  'suricata-ja4-tls.pcap',
  'suricata-linktype-228-flow-test-01.pcap',
  'ndpi-encrypted_sni.pcap',
  'ndpi-KakaoTalk_chat.pcap',
  'ndpi-6in4tunnel.pcap',
  'suricata-bug-1450-04-tls_DER-incomplete-header.pcap',
];

interface TsharkHello { sni: string; alpn: string }

/**
 * Frames where tshark (no TCP reassembly) finds a ClientHello, with its SNI
 * and ALPN, run now. Sequence analysis is off as for the corpus oracles: with
 * it on, tshark flags a retransmitted ClientHello (ndpi-KakaoTalk_chat #72
 * repeats #44) as a retransmission and does not hand it to the TLS
 * dissector, while we, seeing bytes only, classify it like the original.
 */
function tsharkHellos(file: string, home: string): Map<number, TsharkHello> {
  const r = spawnSync('tshark', [
    '-r', file, '-n', '-o', 'tcp.desegment_tcp_streams:FALSE', '-o', 'tcp.analyze_sequence_numbers:FALSE', '-Y', 'tls.handshake.type==1',
    '-T', 'fields', '-E', 'separator=/t', '-e', 'frame.number', '-e', 'tls.handshake.extensions_server_name',
    '-e', 'tls.handshake.extensions_alpn_str',
  ], { encoding: 'utf8', env: { ...process.env, HOME: home }, maxBuffer: 1 << 24 });
  // Exit status 2 is tshark's "file appears damaged" after printing the frames it read (README pitfall 11).
  if (r.error || (r.status !== 0 && r.status !== 2)) throw new Error(`tshark failed on ${file}: ${r.error?.message ?? r.stderr}`);
  const m = new Map<number, TsharkHello>();
  for (const line of r.stdout.split('\n')) {
    if (!line) continue;
    const [frame, sni = '', alpn = ''] = line.split('\t');
    m.set(Number(frame), { sni, alpn });
  }
  return m;
}

interface OurFrame { status: number; sni: string | null; alpn: string[]; payloadLen: number }

/** Classifies the TCP payload of every frame (inner packet for IP-in-IP tunnels), keyed by frame number. */
function ourClassification(file: string): { frames: Map<number, OurFrame>; total: number; readError: string } {
  const frames = new Map<number, OurFrame>();
  const meta = new Meta(64);
  const inner = new Meta(1);
  const batch = new Batch(64, 64 * 270000);
  const reader = openCapture(file);
  const out = new Int32Array(TLS_OUT_LEN);
  let frame = 0;
  let readError = '';
  try {
    for (;;) {
      let n: number;
      try {
        n = reader.recv(batch);
      } catch (e) {
        if (e instanceof PcapFormatError) { readError = e.message; break; }
        throw e;
      }
      if (n === 0) break;
      parseBatch(batch, meta);
      for (let i = 0; i < n; i++) {
        frame++;
        const start = batch.off[i];
        const cap = batch.capLen[i];
        let m = meta;
        let j = i;
        const ik = meta.innerKind[i];
        if (ik === InnerKind.IPIP || ik === InnerKind.SIX_IN_4 || ik === InnerKind.FOUR_IN_6 || ik === InnerKind.SIX_IN_6) {
          parseNetwork(batch.arena, start, cap, meta.innerOff[i], 0, inner, 0);
          m = inner;
          j = 0;
        }
        if ((m.flags[j] & MetaFlag.L4) === 0 || m.l4Proto[j] !== 6 || (m.flags[j] & MetaFlag.FRAGMENT) !== 0) continue;
        const l4 = start + m.l4Off[j];
        // TCP payload: after the data offset, up to what the IP header declares or what was captured, whichever ends first.
        const pay = l4 + tcpHeaderLen(batch.arena, l4);
        const declared = l4 + m.l4Len[j];
        const captured = start + cap;
        const payEnd = declared < captured ? declared : captured;
        if (payEnd <= pay) continue;
        const st = classifyTls(batch.arena, pay, payEnd - pay, out);
        frames.set(frame, { status: st, sni: sniName(batch.arena, out), alpn: alpnNames(batch.arena, out), payloadLen: payEnd - pay });
      }
    }
  } finally {
    reader.close();
  }
  return { frames, total: frame, readError };
}

const haveCorpus = fs.existsSync(CORPUS_DIR);
const corpusSkip = !haveCorpus ? `no corpus at ${CORPUS_DIR}` : !haveTool('tshark', '--version') ? 'tshark not installed' : false;

t.test('ClientHellos of the corpus: ours against tshark', { skip: corpusSkip }, async (t) => {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'tls-tshark-home-')); // no personal preferences (README pitfall 13)
  try {
    for (const name of TLS_CAPTURES) {
      const file = path.join(CORPUS_DIR, name);
      const theirs = tsharkHellos(file, home);
      const ours = ourClassification(file);
      t.ok(theirs.size > 0, `${name}: tshark finds ClientHellos`);
      const problems: string[] = [];
      for (const [frame, th] of theirs) {
        const o = ours.frames.get(frame);
        if (!o) { problems.push(`#${frame}: tshark ClientHello, we found no TCP payload`); continue; }
        if (o.status !== S.CLIENT_HELLO && o.status !== S.NEED_MORE) problems.push(`#${frame}: ${NAME(o.status)}`);
        if ((o.sni ?? '') !== th.sni) problems.push(`#${frame}: SNI '${o.sni ?? ''}', tshark '${th.sni}'`);
        if (o.alpn.join(',') !== th.alpn) problems.push(`#${frame}: ALPN '${o.alpn.join(',')}', tshark '${th.alpn}'`);
      }
      // And no ClientHello where tshark sees none.
      const counts = new Map<string, number>();
      for (const [frame, o] of ours.frames) {
        counts.set(NAME(o.status), (counts.get(NAME(o.status)) ?? 0) + 1);
        if ((o.status === S.CLIENT_HELLO || o.status === S.NEED_MORE || o.status === S.FRAGMENTED) && !theirs.has(frame)) {
          problems.push(`#${frame}: ${NAME(o.status)} (SNI '${o.sni ?? ''}') but tshark sees no ClientHello`);
        }
      }
      t.same(problems, [], `${name}: ${theirs.size} ClientHellos (${[...theirs].map(([f, h]) => `#${f} '${h.sni}'`).join(' ')})`);
      t.comment(`${name}: ${ours.total} frames, ${ours.frames.size} TCP payloads: ${[...counts].map(([k, v]) => `${k} ${v}`).join(', ')}${ours.readError ? ` (read stopped: ${ours.readError})` : ''}`);
    }
  } finally {
    fs.rmSync(home, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------
// Properties.

/** Classifies `bytes` at an offset inside two different poisons; the results must not differ. */
function poisonCheck(bytes: Uint8Array, len: number): string {
  const pre = 9;
  const a = embed(bytes, 0x00, pre);
  const b = embed(bytes, 0xff, pre);
  const c = embed(bytes, 0x16, pre);
  const oa = new Int32Array(TLS_OUT_LEN);
  const ob = new Int32Array(TLS_OUT_LEN);
  const oc = new Int32Array(TLS_OUT_LEN);
  let sa: number, sb: number, sc: number;
  try {
    sa = classifyTls(a, pre, len, oa);
    sb = classifyTls(b, pre, len, ob);
    sc = classifyTls(c, pre, len, oc);
  } catch (e) {
    return `threw ${(e as Error).message}`;
  }
  if (sa !== sb || sa !== sc) return `status differs with the poison: ${NAME(sa)} ${NAME(sb)} ${NAME(sc)}`;
  if (oa.join() !== ob.join() || oa.join() !== oc.join()) return `outputs differ with the poison: ${oa.join()} / ${ob.join()} / ${oc.join()}`;
  if (!(sa >= 0 && sa < TLS_STATUS_NAMES.length)) return `status ${sa}`;
  // Reported offsets lie inside the given bytes.
  if (oa[TlsOut.SNI_OFF] >= 0 && (oa[TlsOut.SNI_OFF] < pre || oa[TlsOut.SNI_OFF] + oa[TlsOut.SNI_LEN] > pre + len || oa[TlsOut.SNI_LEN] < 1)) return 'SNI outside';
  if (oa[TlsOut.ALPN_OFF] >= 0 && (oa[TlsOut.ALPN_OFF] < pre || oa[TlsOut.ALPN_OFF] + oa[TlsOut.ALPN_LEN] > pre + len)) return 'ALPN outside';
  if (sa === S.MALFORMED && (oa[TlsOut.SNI_OFF] !== -1 || oa[TlsOut.ALPN_OFF] !== -1)) return 'offsets left on MALFORMED';
  // A host name we hand out is ASCII host characters only.
  const sni = sniName(a, oa);
  if (sni !== null && !/^[A-Za-z0-9._-]+$/.test(sni)) return `SNI ${JSON.stringify(sni)}`;
  return '';
}

t.test('random bytes never throw and never read outside the given bytes', async (t) => {
  // Half the cases start like a ClientHello record so the walk gets past the first checks.
  const prefixed = fc.tuple(fc.constantFrom(1, 2, 3, 4), fc.integer({ min: 0, max: 0x4200 }), fc.uint8Array({ maxLength: 300 }))
    .map(([minor, recLen, rest]) => Uint8Array.from([22, 3, minor, recLen >>> 8, recLen & 0xff, 1, 0, rest.length >>> 8, rest.length & 0xff, ...rest]));
  const arb = fc.oneof(fc.uint8Array({ maxLength: 300 }), prefixed);
  fc.assert(fc.property(arb, fc.nat(), (bytes, cut) => {
    const len = bytes.length === 0 ? 0 : cut % (bytes.length + 1);
    const p = poisonCheck(bytes, len);
    if (p) throw new Error(p);
    return true;
  }), { numRuns: 3000 });
  // The read tracker on fewer cases (a Proxy per byte read is slow).
  fc.assert(fc.property(arb, (bytes) => boundsViolation(bytes) === ''), { numRuns: 300 });
  t.pass('3000 poison cases, 300 tracked cases');
});

t.test('mutated ClientHellos never throw, never read outside, never give a non-host SNI', async (t) => {
  const bases = FIXTURES.map((f) => f.bytes);
  const mutation = fc.oneof(
    fc.record({ kind: fc.constant('set' as const), at: fc.nat(), v: fc.integer({ min: 0, max: 255 }) }),
    fc.record({ kind: fc.constant('len16' as const), at: fc.nat(), v: fc.integer({ min: -3, max: 3 }) }),
    fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 8 }) }),
    fc.record({ kind: fc.constant('delete' as const), at: fc.nat(), n: fc.integer({ min: 1, max: 8 }) }),
  );
  fc.assert(fc.property(fc.nat({ max: bases.length - 1 }), fc.array(mutation, { minLength: 1, maxLength: 4 }), fc.nat(), (bi, muts, cut) => {
    let b = Array.from(bases[bi]);
    for (const m of muts) {
      const at = b.length === 0 ? 0 : m.at % b.length;
      if (m.kind === 'set') b[at] = m.v;
      else if (m.kind === 'len16') { if (at + 1 < b.length) { const v = (((b[at] << 8) | b[at + 1]) + m.v) & 0xffff; b[at] = v >>> 8; b[at + 1] = v & 0xff; } }
      else if (m.kind === 'insert') b = [...b.slice(0, at), ...m.bytes, ...b.slice(at)];
      else b = [...b.slice(0, at), ...b.slice(at + m.n)];
    }
    const bytes = Uint8Array.from(b);
    // Whole, and cut somewhere.
    for (const len of [bytes.length, cut % (bytes.length + 1)]) {
      const p = poisonCheck(bytes, len);
      if (p) throw new Error(`${p} (len ${len})`);
    }
    return true;
  }), { numRuns: 3000 });
  t.pass('3000 mutated hellos');
});
