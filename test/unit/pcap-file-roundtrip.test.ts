// Writer round trip: what PcapFileWriter writes from what PcapFileReader read,
// tcpdump (libpcap) and tshark read back exactly as they read the original.

import t from 'tap';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { Batch } from '../../src/io/batch.js';
import { openCapture, PcapFileWriter } from '../../src/io/pcap-file.js';
import { corpusDir, corpusFiles } from './pcap-file-helpers.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pcap-rt-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Copies a capture through our reader and writer, keeping its link type, snap length and resolution. */
function rewrite(src: string, dst: string): number {
  const r = openCapture(src, { chunkBytes: 4096 });
  const w = new PcapFileWriter(dst, { linkType: r.linkType, snaplen: r.snaplen, nanosecond: r.nanosecond });
  const b = new Batch(64);
  let n = 0;
  try {
    let k;
    while ((k = r.recv(b)) > 0) { w.writeBatch(b); n += k; }
  } catch {
    // damaged file: the good records were written
  }
  r.close();
  w.close();
  return n;
}

function run(cmd: string, args: string[]): string {
  const res = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024, env: { ...process.env, HOME: tmp } });
  if (res.error) throw res.error;
  return res.stdout;
}

const classic = corpusFiles().filter((f) => f.endsWith('.pcap'));

t.test('tcpdump -n -tt -x reads every rewritten corpus pcap identically', async (t) => {
  for (const f of classic) {
    const src = path.join(corpusDir, f);
    const dst = path.join(tmp, f);
    const n = rewrite(src, dst);
    const a = run('tcpdump', ['-n', '-tt', '-x', '-r', src]);
    const b = run('tcpdump', ['-n', '-tt', '-x', '-r', dst]);
    t.ok(n > 0, `${f}: ${n} records`);
    t.ok(a === b, `${f}: tcpdump output identical (${a.length} chars)`);
  }
  // the nanosecond files again with nanosecond printing, so the ns digits are compared
  for (const f of classic) {
    const src = path.join(corpusDir, f);
    const r = openCapture(src);
    const ns = r.nanosecond;
    r.close();
    if (!ns) continue;
    const a = run('tcpdump', ['-n', '--nano', '-tt', '-x', '-r', src]);
    const b = run('tcpdump', ['-n', '--nano', '-tt', '-x', '-r', path.join(tmp, f)]);
    t.ok(a.length > 0 && a === b, `${f}: tcpdump --nano output identical`);
  }
});

t.test('tshark frame.len, frame.cap_len, frame.time_epoch identical after rewrite', async (t) => {
  const pick = [
    'tcpdump-pptp.pcap', // big-endian
    'tcpdump-tcp-handshake-nano.pcap', // nanosecond
    'tcpdump-timestamp_invalid_nano.pcap', // out-of-range ns fractions
    'zeek-trunc_trunc-hdr.pcap', // caplen > snaplen
    'tcpdump-tcp_header_heapoverflow.pcap', // link-type upper bits, origlen 262144
    'suricata-bug-1450-04-tls_DER-incomplete-header.pcap', // damaged: good records only
  ].filter((f) => classic.includes(f));
  t.ok(pick.length >= 5);
  const fields = ['-T', 'fields', '-e', 'frame.len', '-e', 'frame.cap_len', '-e', 'frame.time_epoch'];
  for (const f of pick) {
    const a = run('tshark', ['-r', path.join(corpusDir, f), ...fields]);
    const b = run('tshark', ['-r', path.join(tmp, f), ...fields]);
    t.ok(a.length > 0, `${f}: tshark read the original`);
    t.equal(b, a, `${f}: tshark fields identical`);
  }
});

t.test('pcapng rewritten as nanosecond pcap keeps every timestamp', async (t) => {
  const f = corpusFiles().find((x) => x.endsWith('.pcapng'))!;
  const src = path.join(corpusDir, f);
  const dst = path.join(tmp, 'from-ng.pcap');
  const r = openCapture(src);
  const w = new PcapFileWriter(dst, { linkType: r.linkType, nanosecond: true });
  const b = new Batch();
  while (r.recv(b) > 0) w.writeBatch(b);
  r.close();
  w.close();
  const fields = ['-T', 'fields', '-e', 'frame.len', '-e', 'frame.cap_len', '-e', 'frame.time_epoch'];
  const a = run('tshark', ['-r', src, ...fields]);
  t.ok(a.length > 0);
  t.equal(run('tshark', ['-r', dst, ...fields]), a);
});
