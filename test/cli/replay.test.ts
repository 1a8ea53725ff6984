// `portcullis replay` as a user runs it: the real command (bin/portcullis.js
// over the compiled dist/) for the wiring, exit codes and output formats, and
// the replay engine in-process to check --fields against every tshark oracle.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { parse as parseYaml } from 'yaml';
import { replayFiles } from '../../src/cli/replay.js';
import { FIELD_NAMES } from '../../src/wire/fields.js';
import { CORPUS_DIR, REPO_ROOT, captureFiles } from '../diff/corpus.js';

const BIN = path.join(REPO_ROOT, 'bin/portcullis.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pcl-cli-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

function cli(args: string[]) {
  const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', cwd: REPO_ROOT, maxBuffer: 64 << 20 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}
const corpus = (f: string) => path.join(CORPUS_DIR, f);

t.test('--fields reproduces every tshark oracle (except listed divergences)', async (t) => {
  const allowed = new Set(((parseYaml(fs.readFileSync(path.join(REPO_ROOT, 'test/diff/divergences.yaml'), 'utf8')) as { divergences: { file: string; frame: number; column: string }[] | null }).divergences ?? [])
    .map((d) => `${d.file}#${d.frame}:${d.column}`));
  for (const file of captureFiles()) {
    let text = '';
    const { code } = await replayFiles([corpus(file)], { fields: true, progress: false, out: (s) => { text += s; } });
    const rows = text.trim().split('\n').map((l) => l.split(','));
    const header = rows.shift()!;
    t.same(header, [...FIELD_NAMES], `${file}: header is tshark's field names`);
    const oracle = fs.readFileSync(`${corpus(file)}.fields.csv`, 'utf8').trim().split('\n').map((l) => l.split(','));
    const oh = oracle.shift()!;
    const bad: string[] = [];
    if (rows.length !== oracle.length) bad.push(`${rows.length} rows, oracle ${oracle.length}`);
    for (let r = 0; r < Math.min(rows.length, oracle.length); r++) {
      for (let c = 0; c < header.length; c++) {
        const oc = oh.indexOf(header[c]);
        if (oc < 0) continue;
        if (rows[r][c] !== oracle[r][oc] && !allowed.has(`${file}#${r + 1}:${header[c]}`)) bad.push(`frame ${r + 1} ${header[c]}: tshark '${oracle[r][oc]}', ours '${rows[r][c]}'`);
      }
    }
    t.same(bad, [], `${file}: replay --fields agrees with tshark`);
    t.equal(code, file.includes('incomplete-header') ? 1 : 0, `${file}: exit code`);
  }
});

t.test('summary names packets, parse errors, flows by protocol and top talkers', async (t) => {
  const r = cli(['replay', '--no-progress', corpus('tcpreplay-test.pcap'), corpus('zeek-trunc_ip4-trunc.pcap')]);
  t.equal(r.code, 0, r.err);
  t.match(r.out, /^packets\s+180$/m);
  t.match(r.out, /packets\/s/);
  t.match(r.out, /^\s+truncated_ipv4\s+1$/m, 'the truncated IPv4 frame is counted by name');
  t.match(r.out, /flows by protocol\n\s+\S+\/ipv[46]\s+\d+/);
  t.match(r.out, /top talkers/);
});

t.test('--json summary is machine-readable and counts agree with the oracle', async (t) => {
  const files = captureFiles().filter((f) => !f.includes('incomplete-header'));
  const r = cli(['replay', '--json', ...files.map(corpus)]);
  t.equal(r.code, 0, r.err);
  const s = JSON.parse(r.out);
  const oracleFrames = files.reduce((a, f) => a + fs.readFileSync(`${corpus(f)}.fields.csv`, 'utf8').trim().split('\n').length - 1, 0);
  t.equal(s.packets, oracleFrames, 'every frame of every capture was read');
  t.equal(Object.values(s.parse as Record<string, number>).reduce((a, b) => a + b, 0), oracleFrames, 'every frame has a parse status');
  t.ok(s.flowsByProtocol['tcp/ipv4'] > 0 && s.flowsByProtocol['udp/ipv6'] > 0);
});

t.test('a corrupt capture: good records first, then an error naming the byte offset, exit 1', async (t) => {
  const r = cli(['replay', '--no-progress', corpus('suricata-bug-1450-04-tls_DER-incomplete-header.pcap')]);
  t.equal(r.code, 1);
  t.match(r.err, /incomplete-header\.pcap: byte \d+: /);
  t.match(r.out, /^packets\s+6$/m, 'the six good records were processed');
  const garbage = path.join(tmp, 'garbage.pcap');
  fs.writeFileSync(garbage, Buffer.from('this is not a capture file at all'));
  const g = cli(['replay', garbage]);
  t.equal(g.code, 1);
  t.match(g.err, /garbage\.pcap: byte 0: /);
  const missing = cli(['replay', path.join(tmp, 'nope.pcap')]);
  t.equal(missing.code, 1);
  t.match(missing.err, /nope\.pcap/);
});

t.test('--keep-going reports a corrupt file and goes on', async (t) => {
  const r = cli(['replay', '--keep-going', '--json', corpus('suricata-bug-1450-04-tls_DER-incomplete-header.pcap'), corpus('tcpdump-dns_udp.pcap')]);
  t.equal(r.code, 1, 'still says something was wrong');
  const s = JSON.parse(r.out);
  t.equal(s.packets, 6 + 2);
  t.match(s.files[0].error, /byte \d+/);
});

t.test('usage errors exit 2', async (t) => {
  t.equal(cli(['replay']).code, 2);
  t.equal(cli(['replay', '--limit', 'x', corpus('tcpdump-dns_udp.pcap')]).code, 2);
  t.equal(cli(['no-such-command']).code, 2);
});

t.test('--write with --limit writes a pcap tshark reads back identically', async (t) => {
  const out = path.join(tmp, 'out.pcap');
  const src = corpus('zeek-pcapng-multi-interface.pcapng');
  const r = cli(['replay', '--no-progress', '--limit', '4', '--write', out, src]);
  t.equal(r.code, 0, r.err);
  const fields = ['-T', 'fields', '-e', 'frame.len', '-e', 'frame.cap_len', '-e', 'frame.time_epoch', '-e', 'ip.src', '-e', 'udp.dstport'];
  const a = spawnSync('tshark', ['-r', out, '-n', ...fields], { encoding: 'utf8' });
  const b = spawnSync('tshark', ['-r', src, '-n', '-c', '4', ...fields], { encoding: 'utf8' });
  t.equal(a.status, 0, a.stderr);
  t.equal(a.stdout.trim().split('\n').length, 4);
  t.equal(a.stdout, b.stdout);
});

t.test('--flows lists the flow table with both directions in one flow', async (t) => {
  const r = cli(['replay', '--flows', corpus('tcpdump-tcp-handshake-nano.pcap')]);
  t.equal(r.code, 0, r.err);
  const lines = r.out.trim().split('\n');
  t.match(lines[0], /^file,proto,client,client_port,server,server_port,packets_c2s,packets_s2c/);
  t.equal(lines.length, 2, 'a three-way handshake is one flow');
  const cols = lines[1].split(',');
  t.equal(cols[1], 'tcp/ipv4');
  t.equal(Number(cols[6]) + Number(cols[7]), 3);
  t.ok(Number(cols[6]) === 2 && Number(cols[7]) === 1, 'SYN and ACK from the client, SYN-ACK from the server');
  const j = JSON.parse(cli(['replay', '--flows', '--json', corpus('tcpdump-tcp-handshake-nano.pcap')]).out);
  t.equal(j.flows.length, 1);
  t.equal(j.flows[0].state, lines[1].split(',').pop());
});

t.test('gen writes a capture that tshark reads, in the benchmark ranges only', async (t) => {
  const out = path.join(tmp, 'gen.pcap');
  const r = cli(['gen', '--packets', '3000', '--flows', '200', out]);
  t.equal(r.code, 0, r.err);
  const ts = spawnSync('tshark', ['-r', out, '-n', '-T', 'fields', '-e', 'ip.src', '-e', 'ip.dst', '-e', 'ipv6.src', '-e', 'ipv6.dst'], { encoding: 'utf8' });
  const addrs = new Set(ts.stdout.split(/\s+/).filter(Boolean));
  t.ok(addrs.size > 100);
  const outside = [...addrs].filter((a) => !(/^198\.(18|19)\./.test(a) || /^fd/.test(a)));
  t.same(outside, [], 'every address is in 198.18.0.0/15 or fd00::/8');
  const s = JSON.parse(cli(['replay', '--json', out]).out);
  t.equal(s.packets, 3000);
  t.same(Object.keys(s.parse), ['ok'], 'every generated packet parses cleanly');
});

t.test('reading and parsing on a worker thread gives exactly what one thread gives', async (t) => {
  const gen = path.join(tmp, 'threads.pcap');
  t.equal(cli(['gen', '--packets', '20000', '--flows', '500', gen]).code, 0);
  const files = [gen, ...captureFiles().map(corpus)];
  const strip = (s: { seconds?: number; packetsPerSecond?: number }) => { delete s.seconds; delete s.packetsPerSecond; return s; };
  const one = await replayFiles(files, { threads: 1, keepGoing: true, progress: false, out: () => {} });
  const two = await replayFiles(files, { threads: 2, keepGoing: true, progress: false, out: () => {} });
  t.ok(one.summary.packets > 20000);
  t.same(strip(two.summary), strip(one.summary), 'same packets, statuses, flows, talkers, counters and errors');
  t.equal(two.code, one.code);
  for (const limit of [1, 300, 1025, 19999]) {
    const a = await replayFiles([gen], { threads: 1, limit, progress: false, out: () => {} });
    const b = await replayFiles([gen], { threads: 2, limit, progress: false, out: () => {} });
    t.equal(b.summary.packets, limit, `--limit ${limit} with a reader thread`);
    t.same(b.summary.parse, a.summary.parse, `--limit ${limit}: statuses of exactly the packets used`);
    t.same(b.summary.flowsByProtocol, a.summary.flowsByProtocol);
  }
});
