// `portcullis check-config` as an operator runs it: the real command
// (bin/portcullis.js over the compiled dist/, built by `make build`) on
// broken files and good ones. A broken file exits 2 and stderr names the
// file and the key path of each problem (STYLE.md 12); a good one exits 0
// with a one-line summary on stdout. The exit codes are the ones
// docs/configuration.md documents.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.join(REPO, 'bin/portcullis.js');
const built = fs.existsSync(path.join(REPO, 'dist/cli/main.js'));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pcl-cc-'));
t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Runs the command (asynchronously, so that the cases of a subtest run side by side: each start loads the whole CLI). */
function checkConfig(...args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, [BIN, 'check-config', ...args], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'], timeout: 30000 });
    let out = '', err = '';
    c.stdout.on('data', (d) => { out += d; });
    c.stderr.on('data', (d) => { err += d; });
    c.on('error', reject);
    c.on('close', (code) => resolve({ code, out, err }));
  });
}
function file(name: string, text: string): string {
  const f = path.join(tmp, name);
  fs.writeFileSync(f, text);
  return f;
}
const NAT = 'nat: { inside: [198.18.1.0/24], pool: 198.19.2.0/24 }\n';
const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

t.test('check-config', { skip: built ? false : 'dist/ is not built (make build)' }, async (t) => {
  t.test('broken files: exit 2, stderr names the file and the key path', async (t) => {
    const cases: { name: string; text: string; expect: RegExp[] }[] = [
      {
        name: 'syntax.yaml',
        text: 'nat:\n  inside: [198.18.1.0/24\n  pool: 198.19.2.0/24\n',
        expect: [/YAML syntax: .* at line 3, column \d+/],
      },
      {
        name: 'lb-unknown-key.yaml',
        text: `${NAT}lb:\n  services:\n    - name: web\n      vip: 198.19.10.1\n      port: 80\n      targets:\n        - { address: 198.19.1.11, port: 80 }\n        - { address: 198.19.1.12, port: 80, wieght: 2 }\n`,
        expect: [/^ {2}lb\.services\[0\]\.targets\[1\]: unknown key 'wieght'$/m],
      },
      {
        name: 'lb-deep-tls.yaml',
        text: `${NAT}lb:\n  services:\n    - name: web\n      vip: 198.19.10.1\n      port: 443\n      targets: [{ address: 198.19.1.11, port: 80 }]\n      tls:\n        certificates: [{ cert: c.pem, key: k.pem }]\n        upstreamPool: { size: 4, order: random }\n`,
        expect: [/^ {2}lb\.services\[0\]\.tls\.upstreamPool\.order: /m],
      },
      {
        name: 'guard-type.yaml',
        text: `${NAT}guard:\n  thresholds:\n    concurrent: lots\n`,
        expect: [/^ {2}guard\.thresholds\.concurrent: .*expected number, received string$/m],
      },
      {
        name: 'afpacket.yaml',
        text: `io: { mode: af-packet }\n${NAT}`,
        expect: [/^ {2}io\.inside: io\.mode af-packet needs the inside interface name$/m, /^ {2}io\.outside: io\.mode af-packet needs the outside interface name$/m],
      },
      {
        name: 'nat-rfc-minimum.yaml',
        text: 'nat:\n  inside: [198.18.1.0/24]\n  pool: 198.19.2.0/24\n  timeouts: { udp: 60 }\n',
        expect: [/^ {2}nat\.timeouts\.udp: must be at least 120 s$/m],
      },
      {
        name: 'no-nat.yaml',
        text: 'log: { level: info }\n',
        expect: [/^ {2}nat: /m],
      },
    ];
    const results = await Promise.all(cases.map((c) => checkConfig(file(c.name, c.text))));
    for (const [k, c] of cases.entries()) {
      const f = path.join(tmp, c.name);
      const r = results[k];
      t.equal(r.code, 2, `${c.name}: exit code 2 (${r.err.trim().split('\n').slice(1).join(' / ')})`);
      t.match(r.err, new RegExp(`^${esc(f)}: invalid configuration:$`, 'm'), `${c.name}: stderr names the file`);
      for (const e of c.expect) t.match(r.err, e, `${c.name}: ${e}`);
      t.equal(r.out, '', `${c.name}: nothing on stdout`);
    }
  });

  t.test('several problems in one file are all reported', async (t) => {
    const f = file('many.yaml', `io: { mode: af-packet, inside: eth0, outside: eth0 }\nnat: { inside: [198.18.1.0/24], pool: 198.19.2.0/24, capacity: 1000 }\nstats: { interval: -1 }\n`);
    const r = await checkConfig(f);
    t.equal(r.code, 2);
    t.match(r.err, /^ {2}io\.outside: inside and outside must be two different interfaces$/m);
    t.match(r.err, /^ {2}nat\.capacity: must be a power of two$/m);
    t.match(r.err, /^ {2}stats\.interval: /m);
  });

  t.test('an unreadable file and a missing argument: exit 2', async (t) => {
    const missing = path.join(tmp, 'nope.yaml');
    const [r, u] = await Promise.all([checkConfig(missing), checkConfig()]);
    t.equal(r.code, 2);
    t.match(r.err, new RegExp(`^${esc(missing)}: invalid configuration:\\n {2}cannot read the file: ENOENT`, 'm'));
    t.equal(u.code, 2, 'usage error');
    t.match(u.err, /missing required argument 'file'/);
  });

  t.test('valid files: exit 0 and a summary', async (t) => {
    const small = file('small.yaml', NAT);
    const doc = fs.readFileSync(path.join(REPO, 'docs/configuration.md'), 'utf8');
    const example = /^```yaml\n([\s\S]*?)^```$/m.exec(doc);
    t.ok(example, 'the doc has a yaml example');
    const ex = file('example.yaml', example![1]);
    const [r, e] = await Promise.all([checkConfig(small), checkConfig(ex)]);
    t.equal(r.code, 0, r.err);
    t.equal(r.out, `${small}: ok (tun pcl0, inside 198.18.1.0/24, pool 198.19.2.0/24, filtering address-dependent)\n`);
    t.equal(r.err, '');
    // The documentation's complete example is a valid file too.
    t.equal(e.code, 0, `docs/configuration.md's example: ${e.err}`);
    t.match(e.out, /: ok \(tun pcl0, inside 198\.18\.1\.0\/24, pool 198\.19\.2\.0\/24/);
  });

  t.test('the exit codes are the documented ones', async (t) => {
    const doc = fs.readFileSync(path.join(REPO, 'docs/configuration.md'), 'utf8');
    t.match(doc, /^\| 0 \| the file is valid \|/m);
    t.match(doc, /^\| 2 \| the file is invalid .*\|/m);
  });
});
