// Bad input never escapes as anything but PcapFormatError, never hangs, never
// grows memory past the file; chunk and batch sizes never change the result.

import t from 'tap';
import fc from 'fast-check';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Batch } from '../../src/io/batch.js';
import { openCapture, PcapFileReader, PcapFormatError, MAX_CAPLEN } from '../../src/io/pcap-file.js';
import { corpusDir, corpusFiles, readAll, pcapBytes, ngShb, ngIdb, ngEpb, ngSpb, ngBlock } from '../unit/pcap-file-helpers.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pcap-prop-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
let seq = 0;
function tmpFile(b: Uint8Array): string {
  const p = path.join(tmp, `f${seq++}`);
  fs.writeFileSync(p, b);
  return p;
}

/** Largest chunk the reader ever held (private field, read for the memory bound). */
function chunkSize(r: PcapFileReader): number {
  return (r as unknown as { buf: Buffer }).buf.length;
}

/**
 * Reads `bytes` as a capture and checks the contract for bad input: the only
 * exception is PcapFormatError (with an offset inside the file), the loop
 * ends, and the chunk never grows past the file size.
 */
function checkNoEscape(bytes: Uint8Array, chunkBytes: number, batch: Batch): { n: number; err: PcapFormatError | null } {
  const p = tmpFile(bytes);
  let r: PcapFileReader;
  try {
    r = openCapture(p, { chunkBytes });
  } catch (e) {
    if (!(e instanceof PcapFormatError)) throw e;
    if (e.offset < 0 || e.offset > bytes.length) throw new Error(`offset ${e.offset} outside file of ${bytes.length}`);
    fs.unlinkSync(p);
    return { n: 0, err: e };
  }
  let n = 0;
  let err: PcapFormatError | null = null;
  try {
    for (let calls = 0; ; calls++) {
      if (calls > bytes.length + 2) throw new Error('reader does not end');
      const k = r.recv(batch);
      if (k === 0) break;
      n += k;
      if (chunkSize(r) > Math.max(chunkBytes, 32, bytes.length)) throw new Error(`chunk grew to ${chunkSize(r)} for a file of ${bytes.length}`);
    }
  } catch (e) {
    if (!(e instanceof PcapFormatError)) throw e;
    if (e.offset < 0 || e.offset > bytes.length) throw new Error(`offset ${e.offset} outside file of ${bytes.length}`);
    err = e;
  } finally {
    r.close();
    fs.unlinkSync(p);
  }
  return { n, err };
}

const validPcap = pcapBytes(true, false, 1, 65535, Array.from({ length: 6 }, (_, i) => ({ sec: 1000 + i, frac: i * 7, data: Buffer.alloc(20 + i * 13, i) })));
const validPcapBe = pcapBytes(false, true, 101, 0, Array.from({ length: 4 }, (_, i) => ({ sec: 2000 + i, frac: i, data: Buffer.alloc(33 + i, 0x40 + i) })));
const validNg = Buffer.concat([
  ngShb(true), ngIdb(true, 1, 0, [[9, Buffer.from([9])]]), ngEpb(true, 0, 123456789012n, Buffer.alloc(30, 1)),
  ngBlock(0x77, Buffer.alloc(8, 2), true), ngSpb(true, 30, Buffer.alloc(32, 3)),
  ngShb(false), ngIdb(false, 113, 64), ngEpb(false, 0, 5n, Buffer.alloc(17, 4)),
]);

t.test('truncated at every length: good records, then PcapFormatError or clean end at a boundary', async (t) => {
  for (const [name, file] of [['pcap', validPcap], ['pcap-be-ns', validPcapBe], ['pcapng', validNg]] as const) {
    const full = readAll(tmpFile(file));
    t.equal(full.error, null, `${name}: valid file reads cleanly`);
    let errors = 0;
    for (let len = 0; len < file.length; len++) {
      const { n, err } = checkNoEscape(file.subarray(0, len), 64, new Batch(4));
      if (err) errors++;
      if (n > full.recs.length) t.fail(`${name} cut at ${len}: ${n} records`);
    }
    // Every cut that is not on a record boundary must be reported.
    t.ok(errors >= file.length - (full.recs.length + 8), `${name}: ${errors} of ${file.length} cuts reported`);
  }
});

t.test('bad magic, bad version, huge caplen, bad lengths', async (t) => {
  const bad = (bytes: Buffer, re: RegExp, offset: number) => {
    const { err } = checkNoEscape(bytes, 1 << 20, new Batch());
    t.type(err, PcapFormatError, re.source);
    if (err) {
      t.match(err.message, re, err.message);
      t.equal(err.offset, offset);
    }
  };
  const m = Buffer.from(validPcap);
  m.writeUInt32LE(0x12345678, 0);
  bad(m, /bad magic 0x12345678/, 0);
  const v = Buffer.from(validPcap);
  v.writeUInt16LE(3, 4);
  bad(v, /major version 3/, 4);
  bad(validPcap.subarray(0, 3), /too short/, 0);
  bad(validPcap.subarray(0, 23), /truncated pcap file header/, 0);
  const huge = Buffer.from(validPcap);
  huge.writeUInt32LE(0x7fffffff, 24 + 8);
  bad(huge, /record caplen 2147483647 exceeds snaplen 65535/, 24);
  const over = Buffer.from(validPcap);
  over.writeUInt32LE(MAX_CAPLEN + 1, 24 + 8);
  bad(over, /exceeds/, 24);
  const cut = validPcap.subarray(0, validPcap.length - 5);
  const lastOff = validPcap.length - (16 + 20 + 5 * 13);
  bad(cut, /truncated record: caplen 85 but only 80 bytes left/, lastOff);
  bad(Buffer.concat([validPcap, Buffer.alloc(7)]), /truncated record header \(7 of 16/, validPcap.length);
  const ngLen = Buffer.from(validNg);
  ngLen.writeUInt32LE(8, 4);
  bad(ngLen, /bad block length 8/, 4);
  bad(Buffer.concat([ngShb(true), Buffer.from([1, 0, 0, 0, 0xf0, 0xff, 0xff, 0x7f, 0, 0, 0, 0])]), /exceeds maximum|truncated block/, 28 + 4);
});

t.test('random bytes and mutated files raise only PcapFormatError (fast-check)', async (t) => {
  const magic = fc.constantFrom(
    [0xd4, 0xc3, 0xb2, 0xa1], [0xa1, 0xb2, 0xc3, 0xd4], [0x4d, 0x3c, 0xb2, 0xa1], [0xa1, 0xb2, 0x3c, 0x4d],
    [0x0a, 0x0d, 0x0d, 0x0a], [0, 0, 0, 0],
  );
  fc.assert(fc.property(magic, fc.uint8Array({ maxLength: 600 }), fc.integer({ min: 1, max: 300 }), fc.integer({ min: 1, max: 8 }),
    (m, rest, chunk, cap) => {
      const bytes = new Uint8Array(4 + rest.length);
      bytes.set(m, 0);
      bytes.set(rest, 4);
      checkNoEscape(bytes, chunk, new Batch(cap));
    }), { numRuns: 1500 });
  const mutate = (base: Buffer) => fc.property(
    fc.array(fc.tuple(fc.nat({ max: base.length - 1 }), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }),
    fc.nat({ max: base.length }), fc.integer({ min: 1, max: 200 }),
    (edits, cutAt, chunk) => {
      const b = Buffer.from(base);
      for (const [i, v] of edits) b[i] = v;
      checkNoEscape(b.subarray(0, Math.max(cutAt, base.length - 40)), chunk, new Batch(3));
    });
  fc.assert(mutate(validPcap), { numRuns: 1000 });
  fc.assert(mutate(validPcapBe), { numRuns: 500 });
  fc.assert(mutate(validNg), { numRuns: 1500 });
  t.pass('no other exception, no hang, no growth past the file');
});

t.test('chunk and batch sizes do not change what is read (records straddling chunks)', async (t) => {
  const files = corpusFiles().filter((f) => /pcapng$|nano|pptp|nfs3|tcpreplay|ftp-download|1450/.test(f)).map((f) => path.join(corpusDir, f));
  files.push(tmpFile(validPcap), tmpFile(validPcapBe), tmpFile(validNg));
  const ref = new Map(files.map((f) => [f, readAll(f)]));
  fc.assert(fc.property(fc.constantFrom(...files), fc.integer({ min: 1, max: 4096 }), fc.integer({ min: 1, max: 300 }),
    (f, chunk, cap) => {
      const r = readAll(f, chunk, new Batch(cap, MAX_CAPLEN + 64 * 1024));
      const e = ref.get(f)!;
      if (r.recs.length !== e.recs.length) return false;
      if ((r.error === null) !== (e.error === null)) return false;
      if (r.error instanceof PcapFormatError && e.error instanceof PcapFormatError && r.error.offset !== e.error.offset) return false;
      for (let i = 0; i < r.recs.length; i++) {
        const a = r.recs[i];
        const b = e.recs[i];
        if (a.capLen !== b.capLen || a.origLen !== b.origLen || a.tsSec !== b.tsSec || a.tsNsec !== b.tsNsec
          || a.port !== b.port || a.linkType !== b.linkType || !a.data.equals(b.data)) return false;
      }
      return true;
    }), { numRuns: 150 });
  t.pass('same records for every chunk size and batch capacity');
});
