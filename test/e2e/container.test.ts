// The appliance as a container (docker/Dockerfile, docker/compose.yaml), run
// by podman inside the gateway namespace of a NatLab (prefix pcc<pid>-,
// 198.18.0.0/15 only) with the settings of compose.yaml: NET_ADMIN and
// NET_RAW, /dev/net/tun, the configuration mounted read-only, the compose
// health check. Checks: a client's curl reaches nginx through the
// container's NAT (nginx logs the pool address, never the client's), the
// health check turns healthy, `podman stop` ends it with exit 0 and its final
// counters (nat_out_translated > 0) in the log, after which the health check
// fails.
//
// The image localhost/portcullis:latest is built (docker/build.sh, layer
// cache) only when it is missing or its sources changed. Docker is not
// used here: it cannot join a named network namespace (podman's --network
// ns:<path>), which is how the container gets the lab's interfaces and TUN.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import YAML from 'yaml';
import { NatLab, LAB } from '../../src/cli/lab.js';
import { probeHealth } from '../../src/cli/health.js';

const REPO = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const IMAGE = process.env.PORTCULLIS_IMAGE ?? 'localhost/portcullis:latest';
/** Every container this test makes is named with this prefix (and the pid). */
const NAME_PREFIX = 'portcullis-e2e-';
/** Where the image reads its configuration (Dockerfile CMD, compose.yaml). */
const CONFIG_IN_CONTAINER = '/etc/portcullis/config.yaml';

function sh(cmd: string, args: string[], timeoutMs = 60000, env?: NodeJS.ProcessEnv): { code: number | null; out: string; err: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 << 20, env: env ?? process.env });
  return { code: r.status, out: r.stdout ?? '', err: (r.stderr ?? '') + (r.error ? `\n${r.error.message}` : '') };
}
const podman = (args: string[], timeoutMs?: number) => sh('podman', args, timeoutMs);
/** podman's stderr without the noise of this machine kind (no systemd for health timers; CNI config of another backend). */
const quiet = (s: string) => s.split('\n').filter((l) => l && !/systemd connection|CNI config|failed to find plugin/.test(l)).join('\n');

function skipReason(): string {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces, TUN, podman)';
  if (!fs.existsSync('/dev/net/tun')) return '/dev/net/tun is missing';
  const v = podman(['--version'], 10000);
  if (v.code !== 0) return 'podman is not installed (scripts/setup.sh installs it; docker cannot join a named network namespace)';
  return '';
}

/**
 * Builds the image when it is missing or was built from other sources: every
 * image docker/build.sh makes carries the hash of its build inputs as a label
 * (content, not modification times, so a fresh clone of the same sources
 * finds its image current). Returns what was done.
 */
function ensureImage(): string {
  const build = path.join(REPO, 'docker/build.sh');
  const want = sh(build, ['--sources-hash']).out.trim();
  const have = podman(['image', 'inspect', '--format', '{{index .Config.Labels "org.portcullis.sources"}}', IMAGE], 30000);
  if (have.code === 0 && want !== '' && have.out.trim() === want) return `image ${IMAGE} is up to date (sources ${want})`;
  const t0 = Date.now();
  const r = sh(build, [], 15 * 60_000, { ...process.env, IMAGE });
  if (r.code !== 0) throw new Error(`docker/build.sh failed (${r.code}):\n${(r.out + r.err).slice(-3000)}`);
  return `${have.code === 0 ? `rebuilt (sources ${want}, image ${have.out.trim() || 'unlabelled'})` : 'built (missing)'} ${IMAGE} in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${r.out.trim().split('\n').pop()}`;
}

/** Removes containers left by earlier runs of this test whose process is gone. */
function removeStale(): void {
  const ls = podman(['ps', '-a', '--filter', `name=^${NAME_PREFIX}`, '--format', '{{.Names}}'], 30000);
  for (const n of ls.out.split('\n').filter(Boolean)) {
    const pid = Number(n.slice(NAME_PREFIX.length));
    let alive = false;
    try { process.kill(pid, 0); alive = true; } catch { /* gone */ }
    if (!alive || !Number.isInteger(pid)) podman(['rm', '-f', '-t', '0', n], 30000);
  }
}

interface ComposeService {
  cap_add: string[];
  devices: string[];
  volumes: string[];
  healthcheck: { test: string[]; interval: string; timeout: string; retries: number; start_period: string };
  stop_signal: string;
  stop_grace_period: string;
}

/**
 * `podman run` arguments from compose.yaml's service, so the test runs what
 * compose would: its capabilities, devices, volumes (the config file
 * replaced by the test's, kept read-only; the admin volume by a directory the
 * test can reach), health check and stop settings. The network is the lab's
 * gateway namespace instead of the host's.
 */
function runArgsFromCompose(svc: ComposeService, cfgFile: string, adminDir: string): string[] {
  const seconds = (d: string) => { const m = /^(\d+)s$/.exec(d); if (!m) throw new Error(`compose duration '${d}': expected <n>s`); return m[1]; };
  const args: string[] = [];
  for (const c of svc.cap_add) args.push('--cap-add', c);
  for (const d of svc.devices) args.push('--device', d);
  for (const v of svc.volumes) {
    const [, target, mode] = v.split(':');
    if (target === CONFIG_IN_CONTAINER) args.push('-v', `${cfgFile}:${target}${mode ? `:${mode}` : ''}`);
    else if (target === path.dirname('/run/portcullis/admin.sock')) args.push('-v', `${adminDir}:${target}`);
    else throw new Error(`compose.yaml volume '${v}': the test does not know it`);
  }
  const hc = svc.healthcheck;
  // podman 4.3 takes --health-cmd as a shell command line (a JSON array would
  // be one word): CMD's words are quoted into one, CMD-SHELL's line is kept.
  const shq = (w: string) => /^[\w./=:@%+-]+$/.test(w) ? w : `'${w.replace(/'/g, `'\\''`)}'`;
  const cmd = hc.test[0] === 'CMD' ? hc.test.slice(1).map(shq).join(' ') : hc.test[0] === 'CMD-SHELL' ? hc.test[1] : null;
  if (cmd === null) throw new Error(`compose.yaml healthcheck.test '${hc.test.join(' ')}': expected CMD or CMD-SHELL`);
  args.push('--health-cmd', cmd, '--health-interval', hc.interval, '--health-timeout', hc.timeout,
    '--health-retries', String(hc.retries), '--health-start-period', hc.start_period);
  args.push('--stop-signal', svc.stop_signal, '--stop-timeout', seconds(svc.stop_grace_period));
  return args;
}

const why = skipReason();
t.test('the appliance in a container (podman) NATs, reports healthy and stops cleanly', { skip: why ? `container e2e: ${why}` : false }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pcc-'));
  const lab = new NatLab(`pcc${process.pid}-`);
  const name = `${NAME_PREFIX}${process.pid}`;
  t.teardown(() => {
    podman(['rm', '-f', '-t', '0', name], 60000);
    lab.destroy();
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  removeStale();
  t.comment(ensureImage());

  // --- compose.yaml: the settings the issue asks for are there ---
  const compose = YAML.parse(fs.readFileSync(path.join(REPO, 'docker/compose.yaml'), 'utf8')) as { services: { portcullis: ComposeService } };
  const svc = compose.services.portcullis;
  t.same([...svc.cap_add].sort(), ['NET_ADMIN', 'NET_RAW'], 'compose: cap_add NET_ADMIN, NET_RAW');
  t.ok(svc.devices.some((d) => d.split(':')[0] === '/dev/net/tun'), 'compose: /dev/net/tun');
  t.ok(svc.volumes.some((v) => v.split(':')[1] === CONFIG_IN_CONTAINER && v.split(':')[2] === 'ro'), 'compose: the config file is mounted read-only');
  t.ok(svc.healthcheck.test.includes('health'), 'compose: the health check is `portcullis health`');
  const imageHealth = podman(['image', 'inspect', '--format', '{{json .Config.Healthcheck}}', IMAGE]);
  t.match(imageHealth.out, /"health"/, 'the image carries a HEALTHCHECK (built in docker format)');

  lab.create();

  // --- nginx in the server namespace ---
  const www = path.join(tmp, 'www');
  fs.mkdirSync(www);
  fs.writeFileSync(path.join(www, 'index.html'), 'portcullis in a container\n');
  const conf = path.join(tmp, 'nginx.conf');
  fs.writeFileSync(conf, `daemon off; master_process off; worker_processes 1;
pid ${tmp}/nginx.pid; error_log ${tmp}/nginx-error.log;
events { worker_connections 64; }
http {
  access_log ${tmp}/access.log; client_body_temp_path ${tmp}/cb; proxy_temp_path ${tmp}/pt;
  fastcgi_temp_path ${tmp}/ft; uwsgi_temp_path ${tmp}/ut; scgi_temp_path ${tmp}/st;
  server { listen ${LAB.server}:80; root ${www}; }
}
`);
  lab.spawn(lab.sv, 'nginx', ['-c', conf, '-p', tmp, '-e', `${tmp}/nginx-error.log`]);

  // --- the container, in the gateway namespace where the lab's TUN waits ---
  const cfg = path.join(tmp, 'config.yaml');
  fs.writeFileSync(cfg, `io: { tun: ${LAB.tun} }\nnat:\n  inside: [${LAB.insidePrefix}]\n  pool: [${LAB.pool}]\nadmin: { socket: /run/portcullis/admin.sock }\nstats: { interval: 0 }\n`);
  const adminDir = path.join(tmp, 'run');
  fs.mkdirSync(adminDir);
  const hostSock = path.join(adminDir, 'admin.sock');
  const run = podman(['run', '-d', '--name', name, '--network', `ns:/run/netns/${lab.gw}`, ...runArgsFromCompose(svc, cfg, adminDir), IMAGE]);
  t.equal(run.code, 0, `podman run: ${quiet(run.err)}`);
  if (run.code !== 0) return;

  const logs = () => { const l = podman(['logs', name]); return l.out + l.err; };
  const state = () => podman(['inspect', '--format', '{{.State.Status}} {{.State.ExitCode}}', name]).out.trim();
  const deadline = Date.now() + 30000;
  while (!/^READY$/m.test(logs()) && Date.now() < deadline && state().startsWith('running')) await new Promise((r) => setTimeout(r, 200));
  if (!t.match(logs(), /^READY$/m, 'the appliance started in the container')) {
    t.comment(`state ${state()}; log:\n${logs().slice(-2000)}`);
    return;
  }

  await t.test('the configuration is mounted read-only', async (t) => {
    const w = podman(['exec', name, 'sh', '-c', `echo x >> ${CONFIG_IN_CONTAINER}`]);
    t.not(w.code, 0, 'writing the config inside the container fails');
    t.match(w.err, /Read-only file system/);
  });

  await t.test("a client's curl reaches nginx through the container's NAT", async (t) => {
    const r = lab.exec(lab.cl, 'curl', ['-sS', '--max-time', '10', `http://${LAB.server}/index.html`]);
    t.equal(r.code, 0, r.err);
    t.equal(r.out, 'portcullis in a container\n');
    const r2 = lab.exec(lab.cl, 'curl', ['-sS', '--max-time', '10', '-o', '/dev/null', '-w', '%{http_code}', `http://${LAB.server}/missing`]);
    t.equal(r2.out, '404', 'a second connection too');
    const log = fs.readFileSync(path.join(tmp, 'access.log'), 'utf8');
    const lines = log.trim().split('\n');
    t.equal(lines.length, 2, 'nginx logged both requests');
    for (const l of lines) t.match(l, /^198\.19\.2\.\d+ /, `nginx saw a pool address: ${l.split(' ')[0]}`);
    t.notMatch(log, new RegExp(LAB.client.replace(/\./g, '\\.')), 'the client address never reached the server');
  });

  await t.test('the health check turns healthy', async (t) => {
    // Without systemd podman schedules no health timers here; `healthcheck
    // run` runs the image's check once and records the result, as the timer would.
    const h = podman(['healthcheck', 'run', name]);
    t.equal(h.code, 0, `podman healthcheck run: ${h.out.trim()} ${quiet(h.err)}`);
    t.notMatch(h.out, /unhealthy/);
    const status = podman(['inspect', '--format', '{{.State.Health.Status}}', name]).out.trim();
    t.equal(status, 'healthy', 'podman inspect: State.Health.Status');
    // The same socket, reached from the host through the mounted directory.
    t.same(await probeHealth(hostSock, 3000), { ok: true }, 'the admin socket answers from the host too');
  });

  await t.test('podman stop ends it with exit 0 and the final counters in the log', async (t) => {
    const s = podman(['stop', name], 60000);
    t.equal(s.code, 0, `podman stop: ${quiet(s.err)}`);
    t.equal(state(), 'exited 0', 'State: exited, exit code 0 (SIGTERM handled, not killed after the grace period)');
    const out = logs();
    t.match(out, /final counters:\n/);
    const m = /^\s+nat_out_translated\s+(\d+)$/m.exec(out);
    t.ok(m && Number(m[1]) > 0, `nat_out_translated ${m?.[1]} in the log`);
    const inb = /^\s+nat_in_translated\s+(\d+)$/m.exec(out);
    t.ok(inb && Number(inb[1]) > 0, `nat_in_translated ${inb?.[1]} in the log (the answers came back through it)`);
    const h = podman(['healthcheck', 'run', name]);
    t.not(h.code, 0, 'no health check on a stopped container');
    t.equal((await probeHealth(hostSock, 1000)).ok, false, 'the admin socket is gone with it');
  });
});
