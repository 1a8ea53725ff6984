// A large generated capture is read with constant memory: the reader's
// memory does not follow the file size, and no per-record garbage piles up.

import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Batch } from '../../src/io/batch.js';
import { openCapture, PcapFileWriter } from '../../src/io/pcap-file.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pcap-large-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

t.test('200k records: written by the writer, read back with constant memory', async (t) => {
  const file = path.join(tmp, 'large.pcap');
  const N = 200_000;
  const pkt = Buffer.alloc(1514);
  for (let i = 0; i < pkt.length; i++) pkt[i] = (i * 13) & 0xff;
  const w = new PcapFileWriter(file, { linkType: 1, nanosecond: true });
  let expectBytes = 0;
  let expectSum = 0;
  for (let i = 0; i < N; i++) {
    const len = 60 + ((i * 7919) % 1400);
    pkt[0] = i & 0xff;
    w.writePacket(pkt, 0, len, len + (i & 3), 1_700_000_000 + Math.floor(i / 1000), (i * 4999) % 1e9);
    expectBytes += len;
    expectSum = (expectSum + (i & 0xff)) % 1e9;
  }
  w.close();
  const size = fs.statSync(file).size;
  t.equal(size, 24 + N * 16 + expectBytes, 'file size is header + records');

  const r = openCapture(file);
  const b = new Batch();
  const before = process.memoryUsage();
  let maxRss = before.rss;
  let maxHeap = before.heapUsed;
  let maxExt = before.external + before.arrayBuffers;
  let n = 0;
  let bytes = 0;
  let sum = 0;
  let tsOk = 0;
  let calls = 0;
  let k;
  while ((k = r.recv(b)) > 0) {
    for (let i = 0; i < k; i++) {
      const idx = n + i;
      bytes += b.capLen[i];
      sum = (sum + b.arena[b.off[i]]) % 1e9;
      if (b.tsNsec[i] === (idx * 4999) % 1e9 && b.tsSec[i] === 1_700_000_000 + Math.floor(idx / 1000) && b.origLen[i] === b.capLen[i] + (idx & 3)) tsOk++;
    }
    n += k;
    if ((++calls & 63) === 0) {
      const m = process.memoryUsage();
      if (m.rss > maxRss) maxRss = m.rss;
      if (m.heapUsed > maxHeap) maxHeap = m.heapUsed;
      if (m.external + m.arrayBuffers > maxExt) maxExt = m.external + m.arrayBuffers;
    }
  }
  t.equal(r.bytesRead, r.fileSize);
  r.close();
  t.equal(n, N, 'record count');
  t.equal(bytes, expectBytes, 'captured bytes');
  t.equal(sum, expectSum, 'first byte of every packet');
  t.equal(tsOk, N, 'timestamps and lengths of every record');
  const MiB = 1024 * 1024;
  t.comment(`file ${(size / MiB).toFixed(1)} MiB; growth rss ${((maxRss - before.rss) / MiB).toFixed(1)} MiB, heap ${((maxHeap - before.heapUsed) / MiB).toFixed(1)} MiB, external ${((maxExt - before.external - before.arrayBuffers) / MiB).toFixed(1)} MiB`);
  t.ok(size > 100 * MiB, 'file is large');
  t.ok(maxRss - before.rss < 24 * MiB, 'rss growth far below the file size');
  t.ok(maxExt - before.external - before.arrayBuffers < 4 * MiB, 'no buffers allocated while reading');
  t.ok(maxHeap - before.heapUsed < 16 * MiB, 'heap growth small');
});
