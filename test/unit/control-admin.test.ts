// The admin API's HTTP layer (src/control/admin.ts), in process: the token
// on every TCP endpoint, the token-free Unix socket, /metrics checked with a
// small parser of the Prometheus text format 0.0.4, /readyz states, the
// dashboard's static files, and hostile clients on raw sockets (garbage,
// oversized heads, slowloris, slow and huge bodies, bad JSON, wrong methods,
// connection floods). A fake target stands in for the data path where the
// HTTP layer is what is tested; a real Appliance (constructed, guard and lb
// on) checks that every value it reports has a metric description.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import net from 'node:net';
import path from 'node:path';
import http from 'node:http';
import { AdminServer, ADMIN_ROUTES, MAX_BODY, resolveAdminToken, adminGet, adminPost, type AdminTarget } from '../../src/control/admin.js';
import { renderMetrics, undescribed, describeValues } from '../../src/control/metrics.js';
import { parseListen } from '../../src/control/listen.js';
import { validateConfig, ConfigError } from '../../src/control/config.js';
import { Logger } from '../../src/control/log.js';
import { Appliance } from '../../src/control/appliance.js';
import { COUNTER_DEFS, Counters } from '../../src/counters.js';
import { NAT_COUNTER_DEFS, NatCounters } from '../../src/nat/counters.js';
import { DIST_COUNTER_DEFS } from '../../src/lb/distributor.js';
import { PARSE_STATUS_NAMES } from '../../src/wire/status.js';
import { TlsTerminatorCounters } from '../../src/lb/tls/terminator.js';

const TOKEN = 'test-token-0123456789abcdef';

// ---------------------------------------------------------------- fakes

function fakeValues(): Record<string, number> {
  const c = new Counters(), n = new NatCounters();
  c.values.forEach((_, i) => { c.values[i] = i + 1; });
  n.values.forEach((_, i) => { n.values[i] = 1000 + i; });
  const o: Record<string, number> = { ...c.toObject(), ...n.toObject() };
  PARSE_STATUS_NAMES.forEach((s, i) => { o[`parse_${s}`] = 10 * i; });
  for (const [k] of DIST_COUNTER_DEFS) o[k] = 7;
  o.tx_packets = 42;
  o.flows = 3;
  o.nat_mappings = 2;
  return o;
}

interface FakeFlow { id: number; proto: number; client: string; clientPort: number; server: string; serverPort: number; bytesFromClient: number; bytesFromServer: number }
function fakeTarget() {
  const flows: FakeFlow[] = [10, 500, 30, 7000, 2].map((b, id) => ({ id, proto: 6, client: '198.18.1.2', clientPort: 40000 + id, server: '198.19.1.2', serverPort: 80, bytesFromClient: b, bytesFromServer: b }));
  const posts: { method: string; path: string; body: unknown }[] = [];
  const state = { ready: false, phase: 'starting' };
  const target: AdminTarget & { posts: typeof posts; state: typeof state } = {
    posts,
    state,
    counterValues: fakeValues,
    napt: {
      listMappings: () => [
        { proto: 'tcp', insideAddress: '198.18.1.2', insidePort: 40000, outsideAddress: '198.19.2.1', outsidePort: 1234, state: 'established', idle: 1, remotes: [{ address: '198.19.1.2', port: 80 }] },
        { proto: 'udp', insideAddress: '198.18.1.9', insidePort: 5353, outsideAddress: '198.19.2.1', outsidePort: 2000, state: 'active', idle: 2, remotes: [{ address: '198.19.1.3', port: 53 }] },
      ],
    },
    flows: {
      capacity: 8,
      isLive: (id: number) => id < flows.length,
      bytes: (id: number, dir: number) => (dir === 0 ? flows[id].bytesFromClient : flows[id].bytesFromServer),
      info: (id: number) => flows[id],
      forEach: (cb: (f: unknown) => void) => flows.forEach(cb),
    },
    lb: { status: () => [{ name: 'web', vip: '198.19.10.1', port: 80, proto: 'tcp', mode: 'nat', targets: [{ address: '198.19.1.11', port: 80, weight: 2, effectiveWeight: 2, state: 'up', flows: 5 }, { address: '198.19.1.12', port: 80, weight: 1, effectiveWeight: 0, state: 'down', flows: 0 }] }] },
    guard: {
      handleAdmin: async (method: string, p: string, _q: URLSearchParams, body: unknown) => {
        if (method === 'POST') posts.push({ method, path: p, body });
        if (p === '/guard/blacklist') return { code: 200, body: { node: 'n1', blacklist: [] } };
        if (p === '/guard/scores') return { code: 200, body: { scores: [] } };
        if (p === '/guard/alerts') return { code: 200, body: { alerts: [] } };
        return { code: 200, body: { ok: p } };
      },
    },
    readiness: () => ({ ready: state.ready, state: state.phase }),
  };
  return target;
}

// ---------------------------------------------------------------- clients

interface Reply { status: number; headers: http.IncomingHttpHeaders; text: string }
function request(port: number, method: string, p: string, opts: { token?: string | null; headers?: Record<string, string>; body?: string } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ...opts.headers };
    if (opts.token !== null) headers.authorization = `Bearer ${opts.token ?? TOKEN}`;
    if (opts.body !== undefined) headers['content-length'] = String(Buffer.byteLength(opts.body));
    const req = http.request({ host: '127.0.0.1', port, method, path: p, headers, agent: false }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text }));
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

/** A raw TCP exchange: writes `chunks` (with delays), collects everything until the server closes or `timeoutMs`. */
function raw(port: number, chunks: (string | Buffer | number)[], timeoutMs = 5000): Promise<{ text: string; closed: boolean; ms: number; error?: string }> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const s = net.connect(port, '127.0.0.1');
    let text = '', done = false, error: string | undefined;
    const finish = (closed: boolean) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ text, closed, ms: Date.now() - t0, error });
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    s.on('data', (d) => { text += d.toString('latin1'); });
    s.on('close', () => finish(true));
    s.on('error', (e) => { error = e.message; });
    s.on('connect', async () => {
      for (const c of chunks) {
        if (done) return;
        if (typeof c === 'number') await new Promise((r) => setTimeout(r, c));
        else if (!s.destroyed) s.write(c);
      }
    });
  });
}

// ---------------------------------------------------------------- Prometheus text format 0.0.4 parser

interface Sample { name: string; labels: Record<string, string>; value: number }
interface Parsed { help: Map<string, string>; type: Map<string, string>; samples: Sample[] }
const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function unescapeHelp(s: string): string {
  return s.replace(/\\(\\|n)/g, (_, c: string) => (c === 'n' ? '\n' : '\\'));
}

/** Parses the exposition strictly: throws on anything format 0.0.4 does not allow. */
function parseExposition(text: string): Parsed {
  if (!text.endsWith('\n')) throw new Error('the exposition must end with a newline');
  const help = new Map<string, string>(), type = new Map<string, string>(), samples: Sample[] = [];
  const closed = new Set<string>();
  let current = '';
  for (const line of text.slice(0, -1).split('\n')) {
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+) (.*)$/.exec(line);
      if (!m) throw new Error(`bad comment line: ${line}`);
      const [, kind, name, rest] = m;
      if (!NAME.test(name)) throw new Error(`bad metric name ${name}`);
      const map = kind === 'HELP' ? help : type;
      if (map.has(name)) throw new Error(`second # ${kind} for ${name}`);
      if (kind === 'TYPE' && !['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(rest)) throw new Error(`bad type ${rest}`);
      if (kind === 'TYPE' && samples.some((s) => s.name === name)) throw new Error(`# TYPE ${name} after its samples`);
      map.set(name, kind === 'HELP' ? unescapeHelp(rest) : rest);
      continue;
    }
    if (line.trim() === '') throw new Error('empty line');
    // name{labels} value [timestamp]
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)( -?\d+)?$/.exec(line);
    if (!m) throw new Error(`bad sample line: ${line}`);
    const labels: Record<string, string> = {};
    if (m[3] !== undefined && m[3] !== '') {
      let rest = m[3];
      while (rest.length > 0) {
        const lm = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"(,|$)/.exec(rest);
        if (!lm || !LABEL.test(lm[1])) throw new Error(`bad labels in ${line}`);
        if (lm[1] in labels) throw new Error(`label ${lm[1]} twice in ${line}`);
        labels[lm[1]] = lm[2].replace(/\\(\\|"|n)/g, (_, c: string) => (c === 'n' ? '\n' : c));
        rest = rest.slice(lm[0].length);
      }
    }
    const v = m[4];
    const value = v === 'NaN' ? NaN : v === '+Inf' ? Infinity : v === '-Inf' ? -Infinity : Number(v);
    if (Number.isNaN(value) && v !== 'NaN') throw new Error(`bad value in ${line}`);
    const name = m[1];
    // All samples of a family are together (0.0.4: "must not be interleaved").
    if (name !== current) {
      if (closed.has(name)) throw new Error(`samples of ${name} are not contiguous`);
      if (current) closed.add(current);
      current = name;
    }
    samples.push({ name, labels, value });
  }
  return { help, type, samples };
}

// ---------------------------------------------------------------- the server

async function startServer(t: { teardown(fn: () => unknown): void }, target: AdminTarget, extra: Record<string, unknown> = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pca-'));
  const lines: string[] = [];
  const log = new Logger('debug', (l) => { lines.push(l); });
  const srv = new AdminServer(target, {
    socket: path.join(dir, 'admin.sock'), listen: '127.0.0.1:0', token: TOKEN,
    headersTimeoutMs: 800, requestTimeoutMs: 1500, keepAliveTimeoutMs: 500, checkIntervalMs: 100, maxConnections: 16, ...extra,
  }, log);
  await srv.listen();
  t.teardown(async () => {
    await srv.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { srv, port: srv.address()!.port, sock: path.join(dir, 'admin.sock'), dir, lines };
}

t.test('every TCP endpoint refuses without the right bearer token', async (t) => {
  const target = fakeTarget();
  target.state.ready = true;
  const { port, lines } = await startServer(t, target);
  const paths = [...Object.keys(ADMIN_ROUTES), '/no/such/thing', '/counters?meta=1', '/flows?top=3'];
  for (const p of paths) {
    const method = ADMIN_ROUTES[p.split('?')[0]]?.[0] ?? 'GET';
    const body = method === 'POST' ? '{"addr":"198.18.7.9"}' : undefined;
    const variants: [string, Record<string, string>, string | null][] = [
      ['no header', {}, null],
      ['wrong token, same length', {}, TOKEN.replace(/.$/, 'X')],
      ['wrong token, shorter', {}, 'short'],
      ['token as a prefix', {}, TOKEN + 'extra'],
      ['Basic scheme', { authorization: `Basic ${Buffer.from(`admin:${TOKEN}`).toString('base64')}` }, null],
      ['token in the query', {}, null],
    ];
    for (const [what, headers, tok] of variants) {
      const q = what === 'token in the query' ? `${p.includes('?') ? '&' : '?'}token=${TOKEN}&access_token=${TOKEN}` : '';
      const r = await request(port, method, p + q, { token: tok, headers, body });
      t.equal(r.status, 401, `${method} ${p}: ${what} -> 401`);
      t.match(r.headers['www-authenticate'] ?? '', /^Bearer realm=/, `${p}: ${what}: WWW-Authenticate names the scheme`);
      t.match(JSON.parse(r.text).error, /bearer token/);
    }
  }
  t.equal(target.posts.length, 0, 'no refused POST reached the guard');
  // With the token: every route answers (and the POSTs reach the guard).
  for (const p of Object.keys(ADMIN_ROUTES)) {
    const method = ADMIN_ROUTES[p][0];
    const r = await request(port, method, p, { body: method === 'POST' ? '{"addr":"198.18.7.9"}' : undefined });
    t.equal(r.status, 200, `${method} ${p} with the token -> 200`);
  }
  t.equal(target.posts.length, 2, 'block and unblock reached the guard');
  const head = await request(port, 'HEAD', '/guard/blacklist');
  t.same([head.status, head.text], [200, ''], 'HEAD on a guard endpoint is its GET without the body');
  t.same(target.posts[0], { method: 'POST', path: '/guard/block', body: { addr: '198.18.7.9' } });
  const lower = await request(port, 'GET', '/healthz', { headers: { authorization: `bearer ${TOKEN}` } });
  t.equal(lower.status, 200, 'the scheme name is case-insensitive (RFC 7235 2.1)');
  const refusedLogs = lines.filter((l) => JSON.parse(l).msg.startsWith('admin request refused'));
  t.ok(refusedLogs.length >= 1 && refusedLogs.length <= 6, `refusals are logged, rate-limited (${refusedLogs.length} lines for ${paths.length * 6} refusals)`);
  t.notOk(lines.some((l) => l.includes(TOKEN)), 'the token never appears in the log');
});

t.test('the Unix socket needs no token; the CLI helpers still work', async (t) => {
  const target = fakeTarget();
  const { sock } = await startServer(t, target);
  const c = (await adminGet(sock, '/counters')) as Record<string, number>;
  t.equal(c.tx_packets, 42);
  const m = (await adminGet(sock, '/nat/mappings')) as { mappings: unknown[]; total: number };
  t.equal(m.mappings.length, 2);
  const r = await adminPost(sock, '/guard/block', { addr: '198.18.7.9', duration: 5 });
  t.equal(r.status, 200);
  t.same(target.posts[0].body, { addr: '198.18.7.9', duration: 5 });
  t.equal((fs.statSync(sock).mode & 0o777), 0o600, 'the socket is 0600');
});

t.test('data endpoints: top flows, mapping search, lb, guard absent', async (t) => {
  const target = fakeTarget();
  const { port } = await startServer(t, target);
  const top = JSON.parse((await request(port, 'GET', '/flows?top=3')).text) as { now: number; flows: FakeFlow[] };
  t.same(top.flows.map((f) => f.id), [3, 1, 2], 'the 3 largest flows by bytes, largest first');
  t.ok(Math.abs(top.now - Date.now() / 1000) < 5, 'the flow clock comes with them');
  const lim = JSON.parse((await request(port, 'GET', '/flows?limit=2')).text) as { flows: FakeFlow[] };
  t.equal(lim.flows.length, 2);
  const q = JSON.parse((await request(port, 'GET', '/nat/mappings?q=5353')).text) as { mappings: { insidePort: number }[]; total: number; matched: number };
  t.same([q.mappings.map((x) => x.insidePort), q.total, q.matched], [[5353], 2, 1], 'search by port');
  const q2 = JSON.parse((await request(port, 'GET', '/nat/mappings?q=198.19.1.2:80')).text) as { matched: number };
  t.equal(q2.matched, 1, 'search by remote endpoint');
  const q3 = JSON.parse((await request(port, 'GET', '/nat/mappings?limit=1')).text) as { mappings: unknown[]; matched: number };
  t.same([q3.mappings.length, q3.matched], [1, 2], 'limit cuts the list, matched says how many there were');
  const lb = JSON.parse((await request(port, 'GET', '/lb')).text) as { services: { targets: { flows: number }[] }[] };
  t.equal(lb.services[0].targets[0].flows, 5);
  const meta = JSON.parse((await request(port, 'GET', '/counters?meta=1')).text) as { counters: { name: string; help: string; drop: boolean; metric: string }[] };
  const byName = new Map(meta.counters.map((c) => [c.name, c]));
  t.equal(byName.get('nat_drop_no_mapping')?.drop, true, 'NAT drops are drop reasons');
  t.equal(byName.get('guard_blocked_drop')?.drop, true);
  t.equal(byName.get('rx_packets')?.drop, false);
  t.equal(byName.get('parse_truncated_tcp')?.metric, 'portcullis_parse_packets_total{status="truncated_tcp"}');
  t.equal(byName.get('rx_packets')?.help, COUNTER_DEFS[0][1], 'help comes from the counter list');

  const noGuard = { ...fakeTarget(), guard: null };
  const s2 = await startServer(t, noGuard);
  const g = await request(s2.port, 'GET', '/guard/blacklist');
  t.equal(g.status, 404);
  t.match(JSON.parse(g.text).error, /guard is not enabled/);
});

t.test('/metrics: Prometheus text format 0.0.4 from the counter lists', async (t) => {
  const target = fakeTarget();
  target.state.ready = true;
  const { port } = await startServer(t, target);
  const r = await request(port, 'GET', '/metrics');
  t.equal(r.status, 200);
  t.equal(r.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8');
  const m = parseExposition(r.text);
  // Every sample's family has HELP and TYPE, and every name carries the prefix.
  for (const s of m.samples) {
    t.ok(s.name.startsWith('portcullis_'), `${s.name} is prefixed`);
    if (!m.help.has(s.name) || !m.type.has(s.name)) t.fail(`${s.name} has no HELP or TYPE`);
    if (m.type.get(s.name) === 'counter' && !s.name.endsWith('_total')) t.fail(`counter ${s.name} does not end in _total`);
  }
  const one = (name: string, labels: Record<string, string> = {}) => m.samples.filter((s) => s.name === name && JSON.stringify(s.labels) === JSON.stringify(labels));
  const values = fakeValues();
  // Every listed counter, with its help text and its value.
  for (const [name, help] of [...COUNTER_DEFS, ...NAT_COUNTER_DEFS, ...DIST_COUNTER_DEFS] as [string, string][]) {
    const fam = `portcullis_${name}_total`;
    const s = one(fam);
    if (s.length !== 1 || s[0].value !== values[name] || m.help.get(fam) !== help || m.type.get(fam) !== 'counter') t.fail(`${fam}: ${JSON.stringify(s)} help ${m.help.get(fam)}`);
  }
  t.pass(`${COUNTER_DEFS.length + NAT_COUNTER_DEFS.length + DIST_COUNTER_DEFS.length} listed counters present with their help`);
  const parse = m.samples.filter((s) => s.name === 'portcullis_parse_packets_total');
  t.equal(parse.length, PARSE_STATUS_NAMES.length, 'one parse sample per status');
  t.same(parse.map((s) => s.labels.status), [...PARSE_STATUS_NAMES], 'labelled by status name');
  t.same(parse.map((s) => s.value), PARSE_STATUS_NAMES.map((_, i) => 10 * i));
  t.equal(m.type.get('portcullis_flows'), 'gauge');
  t.equal(one('portcullis_ready')[0]?.value, 1);
  t.same(one('portcullis_lb_target_up', { service: 'web', target: '198.19.1.12:80' }).map((s) => s.value), [0], 'a down target is 0');
  t.same(one('portcullis_lb_target_flows', { service: 'web', target: '198.19.1.11:80' }).map((s) => s.value), [5]);

  // Labels and help are escaped; the parser reads them back.
  const tlsKey = Object.keys(new TlsTerminatorCounters())[0];
  const odd = renderMetrics({ [`lb_tls_we"i\\rd_${tlsKey}`]: 3, lb_tls_web_active: 2, 'bogus key!': 1 });
  const pm = parseExposition(odd);
  t.same(pm.samples[0].labels, { service: 'we"i\\rd' }, 'label value escaped and read back');
  t.equal(pm.type.get('portcullis_lb_tls_active'), 'gauge', 'active connections are a gauge');
  t.ok(pm.samples.some((s) => s.name === 'portcullis_bogus_key_'), 'an unknown key still becomes a valid name');
  t.same(undescribed({ 'bogus key!': 1, rx_packets: 1 }), ['bogus key!']);
  t.throws(() => parseExposition('portcullis_x 1\nportcullis_y 2\nportcullis_x 3\n'), /not contiguous/, 'the parser catches interleaved families');
});

t.test('a real appliance: every value it reports has a metric description', async (t) => {
  const cfg = validateConfig({
    io: { tun: 'pcl0' }, nat: { inside: ['198.18.1.0/24'], pool: ['198.19.2.1'] }, guard: {},
    lb: { services: [{ name: 'web', vip: '198.19.10.1', port: 80, targets: [{ address: '198.19.1.11', port: 80 }] }] },
  });
  const app = new Appliance(cfg, new Logger('error', () => {}));
  await app.guard!.start(); // the bus and the monitor add their stats once started
  t.teardown(() => app.guard!.stop());
  const values = app.counterValues();
  t.ok(Object.keys(values).length > 100, `${Object.keys(values).length} values`);
  t.same(undescribed(values), [], 'no value without a description (add one to src/control/metrics.ts)');
  const m = parseExposition(renderMetrics(values));
  t.ok(m.samples.length === Object.keys(values).length, 'one sample per value');
  t.ok(describeValues(values).filter((d) => d.drop).length > 20, 'drop reasons found for the dashboard');
  // Not started: not ready.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pca-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const srv = new AdminServer(app, { listen: '127.0.0.1:0', token: TOKEN }, new Logger('error', () => {}));
  await srv.listen();
  t.teardown(() => srv.close());
  const r = await request(srv.address()!.port, 'GET', '/readyz');
  t.equal(r.status, 503);
  t.same(JSON.parse(r.text), { ready: false, state: 'created' });
  const lb = JSON.parse((await request(srv.address()!.port, 'GET', '/lb')).text) as { services: { targets: { flows: number; state: string }[] }[] };
  t.equal(lb.services[0].targets[0].flows, 0, 'a packet-path target reports its live flows');
});

t.test('/readyz follows the data path; /healthz is liveness', async (t) => {
  const target = fakeTarget();
  const { port } = await startServer(t, target);
  for (const [ready, phase, code] of [[false, 'starting', 503], [true, 'running', 200], [false, 'stopping', 503]] as const) {
    target.state.ready = ready;
    target.state.phase = phase;
    const r = await request(port, 'GET', '/readyz');
    t.equal(r.status, code, `${phase}: ${code}`);
    t.same(JSON.parse(r.text), { ready, state: phase });
    const h = await request(port, 'GET', '/healthz');
    t.equal(h.status, 200, `${phase}: alive`);
    const m = parseExposition((await request(port, 'GET', '/metrics')).text);
    t.equal(m.samples.find((s) => s.name === 'portcullis_ready')?.value, ready ? 1 : 0);
  }
  const head = await request(port, 'HEAD', '/readyz');
  t.same([head.status, head.text], [503, ''], 'HEAD: the status without a body');
});

t.test('the dashboard page loads without the token and holds no data', async (t) => {
  const { port } = await startServer(t, fakeTarget());
  for (const p of ['/', '/dashboard']) {
    const r = await request(port, 'GET', p, { token: null });
    t.equal(r.status, 200, `${p} without a token`);
    t.match(r.headers['content-type'], /^text\/html/);
    t.match(r.headers['content-security-policy'], /default-src 'none'/);
    t.match(r.text, /id="token-input"/, 'it asks for the token');
    t.notMatch(r.text, /198\.1[89]\./, 'no data in the page');
  }
  const js = await request(port, 'GET', '/dashboard.js', { token: null });
  t.equal(js.status, 200);
  t.match(js.headers['content-type'], /^text\/javascript/);
  t.match(js.text, /sessionStorage/);
  // Nothing from the internet: no absolute URL but the SVG namespace.
  const page = (await request(port, 'GET', '/', { token: null })).text;
  const urls = (page + js.text).match(/https?:\/\/[^\s'"<>)]+/g) ?? [];
  t.same(urls.filter((u) => u !== 'http://www.w3.org/2000/svg'), [], 'no external URL');
  const post = await request(port, 'POST', '/', { token: null, body: 'x' });
  t.equal(post.status, 405);
});

t.test('wrong methods and bad bodies get clear errors', async (t) => {
  const target = fakeTarget();
  const { port } = await startServer(t, target);
  const del = await request(port, 'DELETE', '/counters');
  t.same([del.status, del.headers.allow], [405, 'GET, HEAD']);
  t.match(JSON.parse(del.text).error, /GET only/);
  t.equal((await request(port, 'POST', '/metrics', { body: '{}' })).status, 405);
  const getBlock = await request(port, 'GET', '/guard/block');
  t.same([getBlock.status, getBlock.headers.allow], [405, 'POST']);
  t.equal((await request(port, 'OPTIONS', '/counters')).status, 405, 'no CORS preflight passes');
  const bad = await request(port, 'POST', '/guard/block', { body: '{"addr": ' });
  t.equal(bad.status, 400);
  t.match(JSON.parse(bad.text).error, /not JSON/);
  t.equal((await request(port, 'POST', '/guard/block', { body: '["198.18.7.9"]' })).status, 400, 'an array is not an object');
  t.equal((await request(port, 'POST', '/guard/block', { body: '' })).status, 400, 'an empty body');
  t.equal(target.posts.length, 0, 'none reached the guard');
  const big = await request(port, 'POST', '/guard/block', { body: `{"addr":"${'a'.repeat(MAX_BODY)}"}` });
  t.equal(big.status, 413);
  t.equal(target.posts.length, 0);
});

t.test('hostile clients on raw sockets: garbage, big heads, slowloris, slow and huge bodies, floods', async (t) => {
  const target = fakeTarget();
  const { port } = await startServer(t, target);
  const heap0 = process.memoryUsage().heapUsed;

  const garbage = await raw(port, [Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]), '\r\n\r\n']);
  t.match(garbage.text, /^HTTP\/1\.1 400 Bad Request\r\n/, 'a TLS ClientHello on the port: 400');
  t.ok(garbage.closed, 'and the connection is closed');
  t.match(garbage.text, /"error":"not an HTTP\/1\.1 request/);

  const junk = await raw(port, ['\x00\x01\x02 hello there \xff\xfe\r\n\r\n']);
  t.match(junk.text, /^HTTP\/1\.1 400 /, 'binary junk: 400');

  const head = await raw(port, [`GET /counters HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`]);
  t.match(head.text, /^HTTP\/1\.1 431 /, 'a 20 KB header: 431');
  t.ok(head.closed);

  const many = await raw(port, [`GET /counters HTTP/1.1\r\nHost: x\r\n${Array.from({ length: 2000 }, (_, i) => `X-${i}: v\r\n`).join('')}\r\n`]);
  t.match(many.text, /^HTTP\/1\.1 431 /, '2000 headers: 431 (the head is too large)');

  // Slowloris: a header line every 150 ms never completes the head.
  const drip: (string | number)[] = ['GET /healthz HTTP/1.1\r\nHost: x\r\n'];
  for (let i = 0; i < 30; i++) drip.push(150, `X-${i}: y\r\n`);
  const slow = await raw(port, drip, 6000);
  t.match(slow.text, /^HTTP\/1\.1 408 /, 'slowloris: 408');
  t.ok(slow.closed && slow.ms < 2500, `closed after ${slow.ms} ms (headers timeout 800 ms)`);

  const silent = await raw(port, [], 6000);
  t.ok(silent.closed && silent.ms < 3500, `a connection that sends nothing is closed (${silent.ms} ms)`);

  // A body that trickles: the whole request must arrive within the request timeout.
  const trickle: (string | number)[] = [`POST /guard/block HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Length: 100\r\n\r\n{"addr"`];
  for (let i = 0; i < 20; i++) trickle.push(200, ' ');
  const tr = await raw(port, trickle, 8000);
  t.match(tr.text, /^HTTP\/1\.1 408 /, 'a trickling body: 408');
  t.ok(tr.closed && tr.ms < 4000, `closed after ${tr.ms} ms (request timeout 1500 ms)`);
  t.equal(target.posts.length, 0);

  // Content-Length over the limit: refused before the body is read.
  const cl = await raw(port, [`POST /guard/block HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nContent-Length: 100000000\r\n\r\n`, Buffer.alloc(4096, 0x20)]);
  t.match(cl.text, /^HTTP\/1\.1 413 /, 'Content-Length 100 MB: 413');
  t.ok(cl.closed, 'and closed');

  // A chunked body that never ends: 413 once past the limit, everything after it thrown away.
  const sent = await new Promise<{ bytes: number; text: string; ms: number }>((resolve) => {
    const t0 = Date.now();
    const s = net.connect(port, '127.0.0.1');
    const chunk = Buffer.alloc(256 * 1024, 0x61);
    const frame = Buffer.concat([Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from('\r\n')]);
    let bytes = 0, text = '', closed = false;
    s.on('data', (d) => { text += d.toString('latin1'); });
    s.on('error', () => { /* reset after the answer */ });
    s.on('close', () => { closed = true; resolve({ bytes, text, ms: Date.now() - t0 }); });
    s.on('connect', async () => {
      s.write(`POST /guard/block HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n`);
      while (!closed && bytes < 256 * 1024 * 1024) {
        bytes += frame.length;
        if (!s.write(frame)) await new Promise((r) => { s.once('drain', r); s.once('close', r); });
      }
      s.destroy();
    });
  });
  t.match(sent.text, /^HTTP\/1\.1 413 /, `an endless chunked body: 413 (${(sent.bytes / 1e6).toFixed(1)} MB sent before the close)`);
  t.ok(sent.ms < 3000, `closed after ${sent.ms} ms`);
  t.equal(target.posts.length, 0);

  // More connections than allowed: the surplus is closed, the server keeps answering.
  const socks = await Promise.all(Array.from({ length: 40 }, () => new Promise<net.Socket>((r) => { const s = net.connect(port, '127.0.0.1', () => r(s)); s.on('error', () => { /* closed by the server */ }); })));
  await new Promise((r) => setTimeout(r, 200));
  const open = socks.filter((s) => !s.destroyed && s.readyState === 'open').length;
  const alive = await Promise.all(socks.map((s) => new Promise<boolean>((r) => {
    if (s.destroyed) return r(false);
    s.once('close', () => r(false));
    setTimeout(() => r(!s.destroyed), 100);
  })));
  t.ok(alive.filter(Boolean).length <= 16, `at most maxConnections (16) stay open (${alive.filter(Boolean).length} of ${open})`);
  for (const s of socks) s.destroy();
  await new Promise((r) => setTimeout(r, 100));
  const ok = await request(port, 'GET', '/healthz');
  t.equal(ok.status, 200, 'still answering afterwards');

  const grew = (process.memoryUsage().heapUsed - heap0) / 1e6;
  t.ok(grew < 16, `heap grew ${grew.toFixed(1)} MB over all of the above (${(sent.bytes / 1e6).toFixed(1)} MB of refused body among it)`);
});

t.test('tokens: given, from a file, or generated into a 0600 file', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pca-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const gen = path.join(dir, 'run', 'admin.token');
  const a = resolveAdminToken({ generatedFile: gen });
  t.equal(a.source, 'generated');
  t.equal(fs.readFileSync(gen, 'utf8'), `${a.token}\n`);
  t.equal(fs.statSync(gen).mode & 0o777, 0o600, 'mode 0600');
  t.ok(a.token.length >= 40, 'a 256-bit token');
  fs.chmodSync(gen, 0o644);
  const b = resolveAdminToken({ generatedFile: gen });
  t.not(b.token, a.token, 'a new one each start');
  t.equal(fs.statSync(gen).mode & 0o777, 0o600, 'written fresh, 0600 again');
  const f = path.join(dir, 'tok');
  fs.writeFileSync(f, 'from-a-file-0123456789\nignored\n', { mode: 0o600 });
  t.same(resolveAdminToken({ tokenFile: f, generatedFile: gen }), { token: 'from-a-file-0123456789', source: 'file', file: f });
  t.throws(() => resolveAdminToken({ tokenFile: path.join(dir, 'missing'), generatedFile: gen }), /admin\.tokenFile: cannot read/);
  fs.writeFileSync(f, 'short\n');
  t.throws(() => resolveAdminToken({ tokenFile: f, generatedFile: gen }), /16 to 1024 printable/);

  // The server with no token configured writes admin.token next to the socket, and the log says where.
  const lines: string[] = [];
  const srv = new AdminServer(fakeTarget(), { socket: path.join(dir, 's', 'admin.sock'), listen: '127.0.0.1:0' }, new Logger('info', (l) => { lines.push(l); }));
  await srv.listen();
  t.teardown(() => srv.close());
  const tok = fs.readFileSync(path.join(dir, 's', 'admin.token'), 'utf8').trim();
  t.equal((await request(srv.address()!.port, 'GET', '/healthz', { token: tok })).status, 200, 'the generated token works');
  const l = lines.map((x) => JSON.parse(x)).find((x) => x.msg === 'admin API listening');
  t.match(l?.token, /^generated, in .*admin\.token$/);
  t.notOk(lines.some((x) => x.includes(tok)), 'the token itself is not logged');
});

t.test('config: admin.listen, token, tokenFile', async (t) => {
  const base = { nat: { inside: ['198.18.1.0/24'], pool: '198.19.2.0/24' } };
  const d = validateConfig(base).admin;
  t.same(d, { socket: '/run/portcullis/admin.sock', listen: '127.0.0.1:9180' }, 'defaults');
  t.same(validateConfig({ ...base, admin: {} }).admin.listen, '127.0.0.1:9180');
  t.same(parseListen('[::1]:9180'), { host: '::1', port: 9180 });
  t.same(parseListen('0.0.0.0:0'), { host: '0.0.0.0', port: 0 });
  t.equal(parseListen('off'), null);
  const problems = (admin: unknown) => {
    try { validateConfig({ ...base, admin }); return []; } catch (e) { return (e as ConfigError).problems; }
  };
  t.match(problems({ listen: 'localhost:9180' }), [/^admin\.listen: expected host:port with an IPv4 or \[IPv6\] literal/]);
  t.match(problems({ listen: '127.0.0.1' }), [/^admin\.listen: expected host:port/]);
  t.match(problems({ listen: '127.0.0.1:70000' }), [/^admin\.listen: port 70000 is out of range/]);
  t.match(problems({ listen: '[127.0.0.1]:80' }), [/^admin\.listen: '127\.0\.0\.1' is not an IPv6 address/]);
  t.match(problems({ listen: '999.1.1.1:80' }), [/^admin\.listen: '999\.1\.1\.1' is not an IPv4 address/]);
  t.match(problems({ token: 'short' }), [/^admin\.token: expected 16 to 1024 printable/]);
  t.match(problems({ token: 'x'.repeat(20), tokenFile: '/etc/tok' }), [/^admin\.tokenFile: give token or tokenFile, not both/]);
  t.match(problems({ port: 1 }), [/^admin: unknown key 'port'/]);
  t.same(problems({ listen: 'off', tokenFile: '/etc/tok' }), []);
});
