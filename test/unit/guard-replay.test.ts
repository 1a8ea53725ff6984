// `portcullis replay --guard` over the shared captures, checked against what
// tshark says at test time (nothing about a capture is written here):
//   - attempts per originating address = frames tshark (IP reassembly on, its
//     default) dissects as TCP SYN without ACK directly over the outermost
//     IPv4/IPv6 header (tunnelled and ICMP-quoted TCP is not the sensor's);
//     a SYN split over fragments is one such frame after reassembly;
//   - suspicious fragments per address from the oracle rows (reassembly
//     off): TCP fragments at offset 1, and first TCP fragments with fewer
//     than 14 bytes of TCP (RFC 1858);
//   - the verdict: the busiest SYN sender is blocked by the rate rule with a
//     threshold below its SYN count and passes with one above it.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { replayFiles } from '../../src/cli/replay.js';
import { main } from '../../src/cli/main.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CORPUS = path.resolve(REPO, '../shared/pcaps');

const have = fs.existsSync(CORPUS) ? '' : `no corpus at ${CORPUS}`;
const tsharkOk = await new Promise<boolean>((r) => execFile('tshark', ['-v'], (e) => r(!e)));

interface Oracle { header: string[]; rows: string[][] }
function readOracle(f: string): Oracle {
  const lines = fs.readFileSync(path.join(CORPUS, `${f}.fields.csv`), 'utf8').split('\n').filter(Boolean);
  return { header: lines[0].split(','), rows: lines.slice(1).map((l) => l.split(',')) };
}

/** Files where the oracle shows a TCP SYN or a TCP fragment (the rest cannot hold an attempt). */
function relevant(f: string): boolean {
  const { header, rows } = readOracle(f);
  const c = (n: string) => header.indexOf(n);
  return rows.some((r) => r[c('tcp.flags.syn')] === '1' ||
    (r[c('ip.proto')] === '6' && (r[c('ip.flags.mf')] === '1' || (r[c('ip.frag_offset')] !== '' && r[c('ip.frag_offset')] !== '0'))) ||
    r[c('ipv6.fraghdr.nxt')] === '6');
}

/** Suspicious TCP fragments per source address, from the oracle rows. */
function suspiciousFromOracle(f: string): Map<string, number> {
  const { header, rows } = readOracle(f);
  const c = (n: string) => header.indexOf(n);
  const m = new Map<string, number>();
  const add = (a: string) => m.set(a, (m.get(a) ?? 0) + 1);
  for (const r of rows) {
    if (r[c('ip.proto')] === '6' && r[c('ip.src')] && r[c('ipv6.src')] === '') {
      const off = Number(r[c('ip.frag_offset')] || 0);
      const tiny = off === 0 && r[c('ip.flags.mf')] === '1' && Number(r[c('ip.len')]) - Number(r[c('ip.hdr_len')]) < 14;
      if (off === 1 || tiny) add(r[c('ip.src')]);
    } else if (r[c('ipv6.fraghdr.nxt')] === '6' && r[c('ip.src')] === '') {
      const off = Number(r[c('ipv6.fraghdr.offset')] || 0);
      // Fragment header right after the fixed header: the TCP bytes are the payload length minus 8.
      const tiny = off === 0 && r[c('ipv6.fraghdr.more')] === '1' && r[c('ipv6.nxt')] === '44' && Number(r[c('ipv6.plen')]) - 8 < 14;
      if (off === 1 || tiny) add(r[c('ipv6.src')]);
    }
  }
  return m;
}

const LINK = new Set(['eth', 'ethertype', 'vlan', 'sll', 'sll2', 'raw', 'null', 'loop']);

/** SYN-without-ACK frames per outermost source address, as tshark dissects them with reassembly. */
function synsFromTshark(f: string): Promise<{ syns: Map<string, number>; times: Map<string, number[]> }> {
  return new Promise((resolve) => {
    execFile('tshark', ['-r', path.join(CORPUS, f), '-n', '-o', 'tcp.desegment_tcp_streams:FALSE', '-o', 'tcp.analyze_sequence_numbers:FALSE',
      '-T', 'fields', '-E', 'separator=,', '-E', 'occurrence=f', '-e', 'frame.protocols', '-e', 'ip.src', '-e', 'ipv6.src', '-e', 'tcp.flags.syn', '-e', 'tcp.flags.ack', '-e', 'frame.time_epoch'],
    { maxBuffer: 64 << 20, env: { ...process.env, HOME: os.tmpdir() } }, (_err, stdout) => {
      // tshark exits 2 on a capture cut short but prints every frame it read.
      const syns = new Map<string, number>(), times = new Map<string, number[]>();
      for (const l of String(stdout).split('\n')) {
        if (!l) continue;
        const [protos, s4, s6, syn, ack, ts] = l.split(',');
        if (syn !== '1' || ack !== '0') continue;
        const p = protos.split(':');
        let i = 0;
        while (i < p.length && LINK.has(p[i])) i++;
        const first = p[i++];
        if (first !== 'ip' && first !== 'ipv6') continue;
        while (i < p.length && p[i].startsWith('ipv6.')) i++;
        if (p[i] !== 'tcp') continue;
        const a = first === 'ip' ? s4 : s6;
        syns.set(a, (syns.get(a) ?? 0) + 1);
        if (!times.has(a)) times.set(a, []);
        times.get(a)!.push(Number(ts));
      }
      resolve({ syns, times });
    });
  });
}

async function pool<T, R>(items: T[], n: number, fn: (x: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: n }, async () => {
    while (next < items.length) {
      const k = next++;
      out[k] = await fn(items[k]);
    }
  }));
  return out;
}

t.test('replay --guard agrees with tshark on every capture with TCP SYNs or TCP fragments', { skip: have || (!tsharkOk && 'tshark is not installed') }, async (t) => {
  const files = fs.readdirSync(CORPUS).filter((f) => /\.(pcap|pcapng)$/.test(f)).sort().filter(relevant);
  t.ok(files.length >= 5, `${files.length} captures to compare`);
  const oracles = await pool(files, 2, synsFromTshark);
  let syns = 0, susp = 0, assembledFiles = 0;
  let busiest = { file: '', addr: '', n: 0 };
  for (let k = 0; k < files.length; k++) {
    const f = files[k];
    const { summary } = await replayFiles([path.join(CORPUS, f)], { guard: true, threads: 1, progress: false, keepGoing: true, out: () => {} });
    const g = summary.guard!;
    const ours = new Map(g.addresses.filter((a) => a.attempts > 0).map((a) => [a.addr, a.attempts]));
    const want = oracles[k].syns;
    t.same(Object.fromEntries([...ours].sort()), Object.fromEntries([...want].sort()), `${f}: attempts per address`);
    const oursSusp = new Map(g.addresses.filter((a) => a.suspicious > 0).map((a) => [a.addr, a.suspicious]));
    const wantSusp = suspiciousFromOracle(f);
    t.same(Object.fromEntries([...oursSusp].sort()), Object.fromEntries([...wantSusp].sort()), `${f}: suspicious fragments per address`);
    for (const [a, n] of want) {
      syns += n;
      if (n > busiest.n) busiest = { file: f, addr: a, n };
    }
    for (const n of wantSusp.values()) susp += n;
    if ((g.counters.guard_assembled_syn ?? 0) > 0) assembledFiles++;
  }
  t.ok(syns > 0 && susp > 0, `${syns} SYNs and ${susp} suspicious fragments compared`);
  t.ok(assembledFiles >= 1, 'at least one capture holds a SYN that only assembling fragments reveals (suricata bug 6887)');

  // The verdict, with thresholds derived from tshark's count for the busiest sender.
  t.ok(busiest.n >= 4, `busiest SYN sender: ${busiest.addr} in ${busiest.file} (${busiest.n} SYNs)`);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pcg-replay-'));
  t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const run = async (threshold: number): Promise<{ code: number; out: string }> => {
    const cfg = path.join(tmp, `g${threshold}.yaml`);
    // Only the rate rule can score: a nearly empty bucket, the other thresholds out of reach.
    fs.writeFileSync(cfg, `guard:\n  thresholds:\n    rate: { rate: 0.001, burst: 1 }\n    total: { max: 1e12, window: 60 }\n    incomplete: 1000000000\n  score:\n    threshold: ${threshold}\n`);
    let out = '';
    const orig = process.stdout.write.bind(process.stdout);
    (process.stdout as { write: unknown }).write = (s: string) => { out += s; return true; };
    try {
      const code = await main(['node', 'portcullis', 'replay', '--guard', '--config', cfg, '--json', '--threads', '1', '--no-progress', path.join(CORPUS, busiest.file)]);
      return { code, out };
    } finally {
      (process.stdout as { write: unknown }).write = orig;
    }
  };
  const low = await run(Math.floor(busiest.n / 2));
  t.equal(low.code, 0);
  const lowAddr = JSON.parse(low.out).guard.addresses.find((a: { addr: string }) => a.addr === busiest.addr);
  t.equal(lowAddr.verdict, 'block', `blocked with the threshold at half its ${busiest.n} SYNs`);
  t.equal(lowAddr.rule, 'rate');
  const times = oracles[files.indexOf(busiest.file)].times.get(busiest.addr)!;
  t.ok(lowAddr.blockedAt >= Math.min(...times) && lowAddr.blockedAt <= Math.max(...times) + 2, 'decided while the SYNs came (capture time), within an interval of the last');
  const high = await run(busiest.n * 2);
  t.equal(JSON.parse(high.out).guard.addresses.find((a: { addr: string }) => a.addr === busiest.addr).verdict, 'pass', 'passes with the threshold above its SYN count');
  // Text output and a configuration error naming the key.
  const bad = path.join(tmp, 'bad.yaml');
  fs.writeFileSync(bad, 'guard:\n  score: { threshold: -1 }\n');
  const errs: string[] = [];
  const origErr = process.stderr.write.bind(process.stderr);
  (process.stderr as { write: unknown }).write = (s: string) => { errs.push(s); return true; };
  let code: number;
  try {
    code = await main(['node', 'portcullis', 'replay', '--guard', '--config', bad, '--threads', '1', path.join(CORPUS, busiest.file)]);
  } finally {
    (process.stderr as { write: unknown }).write = origErr;
  }
  t.equal(code, 2);
  t.match(errs.join(''), /guard\.score\.threshold/);
});
