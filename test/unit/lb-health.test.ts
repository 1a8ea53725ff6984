// Health checks (src/lb/health.ts) against real servers on 127.0.0.1:
// rise/fall hysteresis counted check by check, HTTP status and timeout
// verdicts, TLS handshakes (with and without verification and SNI), the
// slow-start ramp (real clock, tolerant; and an injected clock, exact),
// drain, non-overlapping checks, stop(), and the Maglev rebuild a state
// change triggers. Intervals and timeouts are tens to hundreds of ms so the
// file runs in a few seconds; every server and checker is closed in teardown.

import t from 'tap';
import { performance } from 'node:perf_hooks';
import { HealthChecker, type CheckResult, type HealthTarget, type Transition } from '../../src/lb/health.js';
import { MaglevTable } from '../../src/lb/maglev.js';
import { httpServer, makeCert, sleep, tcpServer, tlsServer, waitFor } from '../helpers/lb-health-servers.js';

const LO = '127.0.0.1';

function tcpTarget(id: number, port: number, over: Partial<HealthTarget> = {}, check: Partial<HealthTarget['check']> = {}): HealthTarget {
  return { id, address: LO, port, weight: 10, check: { type: 'tcp', intervalMs: 25, timeoutMs: 200, rise: 1, fall: 1, ...check }, ...over };
}

/** Resolves once every id in `ids` has completed at least `n` checks. */
function checksDone(hc: HealthChecker, ids: number[], n: number, ms = 3000): Promise<void> {
  const seen = new Map<number, number>();
  return waitFor<CheckResult>((fn) => hc.onCheck(fn), (r) => {
    seen.set(r.id, r.checks);
    return ids.every((id) => (seen.get(id) ?? 0) >= n);
  }, ms, `${n} check(s) of targets ${ids.join(',')}`).then(() => {});
}

t.test('validation names the bad key', async (t) => {
  const ok = tcpTarget(1, 80);
  t.throws(() => new HealthChecker([{ ...ok, check: { ...ok.check, rise: 0 } }]), /targets\[0\]\.check\.rise/);
  t.throws(() => new HealthChecker([ok, { ...ok, address: '10.0.0.1' }]), /targets\[1\]\.id 1 is used/);
  t.throws(() => new HealthChecker([ok, { ...ok, id: 2 }]), /key "127\.0\.0\.1:80"/);
  t.throws(() => new HealthChecker([{ ...ok, check: { ...ok.check, type: 'http' } }]), /check\.http\.path/);
  t.throws(() => new HealthChecker([{ ...ok, check: { ...ok.check, type: 'http', http: { path: '/', expectStatus: [399, 200] } } }]), /expectStatus/);
  t.throws(() => new HealthChecker([{ ...ok, weight: 1.5 }]), /targets\[0\]\.weight/);
  t.throws(() => new HealthChecker([ok]).status(9), /no target with id 9/);
});

t.test('tcp: DOWN after exactly `fall` failures, UP after exactly `rise` successes', async (t) => {
  let srv = await tcpServer();
  const port = srv.port;
  const rise = 2, fall = 3;
  const hc = new HealthChecker([tcpTarget(1, port, {}, { rise, fall })], { jitter: 0 });
  const log: CheckResult[] = [], trans: Transition[] = [];
  hc.onCheck((r) => log.push(r));
  hc.onTransition((x) => trans.push(x));
  t.teardown(async () => {
    hc.stop();
    await srv.close();
  });

  t.equal(hc.status(1).state, 'down', 'starts DOWN by default');
  t.equal(hc.effectiveWeights().get(1), 0, 'no weight before it has proven itself');

  const up1 = waitFor<Transition>((fn) => hc.onTransition(fn), (x) => x.to === 'up', 3000, 'first UP');
  hc.start();
  const a = await up1;
  t.equal(a.checks, rise, `UP on check #${rise}`);
  t.same(log.map((r) => r.ok), [true, true]);
  const s1 = hc.status(1);
  t.match(s1, { state: 'up', consecutiveSuccesses: rise, consecutiveFailures: 0, checks: rise, lastResult: 'ok', lastError: null, effectiveWeight: 10 });
  t.ok(s1.lastCheckDurationMs !== null && s1.lastCheckDurationMs >= 0 && s1.lastCheckDurationMs < 200, 'duration recorded');

  const down = waitFor<Transition>((fn) => hc.onTransition(fn), (x) => x.to === 'down', 3000, 'DOWN');
  await srv.close();
  const d = await down;
  t.equal(d.checks, rise + fall, `DOWN on the ${fall}th failure, not before`);
  t.same(log.slice(rise).map((r) => r.ok), [false, false, false], 'exactly three failures');
  t.match(d.error, /ECONNREFUSED/);
  t.match(hc.status(1), { state: 'down', consecutiveFailures: fall, lastResult: 'fail', effectiveWeight: 0 });

  const up2 = waitFor<Transition>((fn) => hc.onTransition(fn), (x) => x.to === 'up', 3000, 'second UP');
  srv = await tcpServer(port);
  const b = await up2;
  const results = log.slice(0, b.checks).map((r) => r.ok);
  t.same(results.slice(-rise - 1), [false, true, true], 'UP on the 2nd success after the last failure');
  t.ok(results.slice(rise).filter((ok) => !ok).length >= fall, 'failed until the server came back');
  t.same(trans.map((x) => x.to), ['up', 'down', 'up'], 'no other transitions');
  t.equal(trans.length, 3);
});

t.test('a broken run of results resets the count (alternating ok/fail never changes state)', async (t) => {
  const mk = async () => {
    let n = 0;
    return httpServer((_req, res) => {
      res.statusCode = n++ % 2 === 0 ? 200 : 500;
      res.end();
    });
  };
  const s1 = await mk(), s2 = await mk();
  const check = { type: 'http' as const, intervalMs: 15, timeoutMs: 200, rise: 2, fall: 2, http: { path: '/' } };
  const up = new HealthChecker([{ id: 1, address: LO, port: s1.port, weight: 1, check }], { initialState: 'up', jitter: 0, firstCheckSpreadMs: 0 });
  const dn = new HealthChecker([{ id: 1, address: LO, port: s2.port, weight: 1, check }], { jitter: 0, firstCheckSpreadMs: 0 });
  const trans: Transition[] = [];
  up.onTransition((x) => trans.push(x));
  dn.onTransition((x) => trans.push(x));
  t.teardown(async () => {
    up.stop();
    dn.stop();
    await Promise.all([s1.close(), s2.close()]);
  });
  const done = Promise.all([checksDone(up, [1], 8), checksDone(dn, [1], 8)]);
  up.start();
  dn.start();
  await done;
  t.same(trans, [], 'no transition');
  t.equal(up.status(1).state, 'up');
  t.equal(dn.status(1).state, 'down');
  t.ok(up.status(1).consecutiveFailures <= 1 && dn.status(1).consecutiveSuccesses <= 1);
});

t.test('http: status ranges, 500, timeout, Host header', async (t) => {
  const hosts: string[] = [];
  const srv = await httpServer((req, res) => {
    hosts.push(String(req.headers.host));
    if (req.url === '/hang') return; // never answers; destroyed at close
    res.statusCode = req.url === '/500' ? 500 : req.url === '/204' ? 204 : 200;
    res.end('x');
  });
  const mk = (id: number, path: string, key: string, http: Record<string, unknown> = {}): HealthTarget => ({
    id, address: LO, port: srv.port, weight: 5, key,
    check: { type: 'http', intervalMs: 5000, timeoutMs: 150, rise: 1, fall: 1, http: { path, ...http } },
  });
  const hc = new HealthChecker([
    mk(1, '/ok', 'ok', { host: 'svc.example' }),
    mk(2, '/500', '500'),
    mk(3, '/hang', 'hang'),
    mk(4, '/204', '204-exact', { expectStatus: 204 }),
    mk(5, '/204', '204-range-miss', { expectStatus: [300, 399] }),
    mk(6, '/500', '500-accepted', { expectStatus: [500, 599] }),
  ], { initialState: 'up', firstCheckSpreadMs: 0 });
  const changes: Array<Map<number, number>> = [];
  hc.onChange((w) => changes.push(w));
  t.teardown(async () => {
    hc.stop();
    await srv.close();
  });
  const done = checksDone(hc, [1, 2, 3, 4, 5, 6], 1);
  hc.start();
  await done;

  t.match(hc.status(1), { state: 'up', lastResult: 'ok', lastError: null, effectiveWeight: 5 });
  t.ok(hosts.includes('svc.example'), 'configured Host header sent');
  t.ok(hosts.includes(`${LO}:${srv.port}`), 'default Host is address:port');
  t.match(hc.status(2), { state: 'down', lastResult: 'fail', lastError: /status 500, expected 200-399/, effectiveWeight: 0 });
  const hang = hc.status(3);
  t.match(hang, { state: 'down', lastResult: 'fail', lastError: /timeout after 150 ms/, effectiveWeight: 0 });
  t.ok(hang.lastCheckDurationMs! >= 140 && hang.lastCheckDurationMs! < 1000, `timed out near 150 ms (${hang.lastCheckDurationMs?.toFixed(1)})`);
  t.match(hc.status(4), { state: 'up', lastResult: 'ok' });
  t.match(hc.status(5), { state: 'down', lastError: /status 204, expected 300-399/ });
  t.match(hc.status(6), { state: 'up', lastResult: 'ok' });
  t.same(hc.effectiveWeights(), new Map([[1, 5], [2, 0], [3, 0], [4, 5], [5, 0], [6, 5]]));
  t.same(changes[changes.length - 1], hc.effectiveWeights(), 'onChange reported the final weights');
});

t.test('tls: handshake passes against TLS (SNI sent, chain verified), fails against plain TCP and bad certificates', async (t) => {
  const cert = makeCert();
  const tlsSrv = await tlsServer(cert);
  const plain = await tcpServer(0, 'HTTP/1.0 400 Bad Request\r\n\r\n');
  const mk = (id: number, port: number, key: string, tlsOpt: HealthTarget['check']['tls']): HealthTarget => ({
    id, address: LO, port, weight: 3, key, check: { type: 'tls', intervalMs: 5000, timeoutMs: 1000, rise: 1, fall: 1, tls: tlsOpt },
  });
  const hc = new HealthChecker([
    mk(1, tlsSrv.port, 'verified', { servername: 'localhost', ca: cert.cert }),
    mk(2, plain.port, 'plain', { rejectUnauthorized: false }),
    mk(3, tlsSrv.port, 'untrusted', { servername: 'localhost' }),
    mk(4, tlsSrv.port, 'wrong-name', { servername: 'wrong.example', ca: cert.cert }),
    mk(5, tlsSrv.port, 'no-verify', { rejectUnauthorized: false }),
  ], { firstCheckSpreadMs: 0 });
  t.teardown(async () => {
    hc.stop();
    await Promise.all([tlsSrv.close(), plain.close()]);
  });
  const done = checksDone(hc, [1, 2, 3, 4, 5], 1, 5000);
  hc.start();
  await done;

  t.match(hc.status(1), { state: 'up', lastResult: 'ok', lastError: null, effectiveWeight: 3 });
  // The server side of a handshake completes a moment after the client's
  // (TLS 1.3: on the client's Finished), so wait for the two that succeed.
  for (let i = 0; i < 200 && tlsSrv.servernames.length < 2; i++) await sleep(5);
  t.ok(tlsSrv.servernames.includes('localhost'), 'SNI localhost reached the server');
  t.match(hc.status(2), { state: 'down', lastResult: 'fail', lastError: /^tls: / });
  t.ok(plain.accepted() >= 1, 'the plain server was contacted');
  t.match(hc.status(3), { state: 'down', lastError: /self[- ]signed|unable to verify/i });
  t.match(hc.status(4), { state: 'down', lastError: /altname|does not match|Hostname/i });
  t.match(hc.status(5), { state: 'up', lastResult: 'ok' });
  t.ok(tlsSrv.servernames.includes(null), 'no SNI sent for an IP address (RFC 6066 §3)');
});

t.test('slow start ramps the effective weight from 1 to the configured weight (real clock)', async (t) => {
  const srv = await tcpServer();
  const slowStartMs = 400, W = 100;
  const hc = new HealthChecker([tcpTarget(1, srv.port, { weight: W, slowStartMs })], { jitter: 0, firstCheckSpreadMs: 0, tickMs: 20 });
  const emitted: number[] = [];
  hc.onChange((w) => emitted.push(w.get(1)!));
  t.teardown(async () => {
    hc.stop();
    await srv.close();
  });
  let tUp = 0;
  const up = waitFor<Transition>((fn) => hc.onTransition(fn), (x) => {
    tUp = performance.now();
    return x.to === 'up';
  }, 3000, 'UP');
  hc.start();
  await up;
  t.equal(emitted[0], 1, 'first weight after UP is 1');
  const expected = (ms: number) => (ms >= slowStartMs ? W : 1 + ((W - 1) * ms) / slowStartMs);
  const samples: Array<[number, number]> = [];
  for (const at of [100, 250]) {
    await sleep(at - (performance.now() - tUp));
    const el = performance.now() - tUp;
    const w = hc.effectiveWeights().get(1)!;
    samples.push([el, w]);
    t.ok(Math.abs(w - expected(el)) <= 6, `at ${el.toFixed(0)} ms weight ${w} ~ ${expected(el).toFixed(1)}`);
    t.ok(Math.abs(hc.status(1).effectiveWeight - w) <= 1, 'status agrees');
    t.ok(hc.status(1).slowStartRemainingMs > 0 || el >= slowStartMs - 5, 'still ramping');
  }
  t.ok(samples[1][1] >= samples[0][1], 'non-decreasing');
  await sleep(slowStartMs + 100 - (performance.now() - tUp));
  t.equal(hc.effectiveWeights().get(1), W, 'full weight after slowStartMs');
  t.equal(hc.status(1).slowStartRemainingMs, 0);
  t.equal(emitted[emitted.length - 1], W, 'onChange reported the full weight');
  t.ok(emitted.length >= 5, `ramp reported in steps by the tick (${emitted.length} changes)`);
  for (let i = 1; i < emitted.length; i++) if (emitted[i] < emitted[i - 1]) t.fail(`weight went down during the ramp: ${emitted.join(',')}`);
  const n = emitted.length;
  await sleep(100);
  t.equal(emitted.length, n, 'no further onChange once the ramp is over');
});

t.test('slow start is linear (injected clock), drain overrides it, none when starting UP', async (t) => {
  const srv = await tcpServer();
  let clock = 0;
  const hc = new HealthChecker([tcpTarget(1, srv.port, { weight: 100, slowStartMs: 1000 }, { intervalMs: 60_000 })], {
    jitter: 0, firstCheckSpreadMs: 0, now: () => clock,
  });
  const hc2 = new HealthChecker([tcpTarget(1, srv.port, { weight: 100, slowStartMs: 1000 })], { initialState: 'up' });
  t.teardown(async () => {
    hc.stop();
    hc2.stop();
    await srv.close();
  });
  clock = 5000;
  const up = waitFor<Transition>((fn) => hc.onTransition(fn), (x) => x.to === 'up', 3000, 'UP');
  hc.start();
  await up;
  const w = () => hc.effectiveWeights().get(1);
  t.equal(w(), 1, 'at the transition');
  clock = 5250;
  t.equal(w(), 25, '1/4 of the way: 1 + floor(99/4)');
  clock = 5500;
  t.equal(w(), 50);
  t.equal(hc.status(1).slowStartRemainingMs, 500);
  hc.setDrain(1, true);
  t.equal(w(), 0, 'drain wins over the ramp');
  hc.setDrain(1, false);
  clock = 5999;
  t.equal(w(), 99);
  clock = 6000;
  t.equal(w(), 100);
  t.equal(hc2.effectiveWeights().get(1), 100, 'a target that starts UP gets its full weight at once');
});

t.test('drain: effective weight 0 while the state stays UP and checks go on', async (t) => {
  const srv = await tcpServer();
  const hc = new HealthChecker([tcpTarget(1, srv.port, { weight: 7 }), tcpTarget(2, srv.port, { weight: 4, key: 'b', drain: true })], {
    initialState: 'up', jitter: 0, firstCheckSpreadMs: 0,
  });
  const changes: Array<Map<number, number>> = [];
  hc.onChange((w) => changes.push(w));
  t.teardown(async () => {
    hc.stop();
    await srv.close();
  });
  t.same(hc.effectiveWeights(), new Map([[1, 7], [2, 0]]), 'configured drain starts at 0');
  t.match(hc.status(2), { state: 'up', draining: true, effectiveWeight: 0 });
  hc.start();
  await checksDone(hc, [1, 2], 1);
  hc.setDrain(1, true);
  t.same(changes.at(-1), new Map([[1, 0], [2, 0]]), 'onChange fired at once with weight 0');
  const before = hc.status(1).checks;
  await checksDone(hc, [1], before + 2);
  t.match(hc.status(1), { state: 'up', draining: true, effectiveWeight: 0, lastResult: 'ok', configuredWeight: 7 });
  t.ok(hc.status(1).checks >= before + 2, 'still checked while draining');
  hc.setDrain(1, false);
  hc.setDrain(2, false);
  t.same(hc.effectiveWeights(), new Map([[1, 7], [2, 4]]), 'undrained: full weight');
  t.same(changes.at(-1), new Map([[1, 7], [2, 4]]));
});

t.test('checks of one target never overlap, even when a check outlasts the interval', async (t) => {
  const srv = await httpServer(() => {}); // never answers
  const hc = new HealthChecker([{ id: 1, address: LO, port: srv.port, weight: 1, check: { type: 'http', intervalMs: 10, timeoutMs: 80, rise: 1, fall: 1, http: { path: '/' } } }], {
    jitter: 0.5, firstCheckSpreadMs: 0,
  });
  t.teardown(async () => {
    hc.stop();
    await srv.close();
  });
  hc.start();
  await checksDone(hc, [1], 4);
  t.equal(srv.peakOpen(), 1, 'at most one connection open at a time');
  t.ok(srv.accepted() >= 4 && srv.accepted() <= 5, `one connection per check (${srv.accepted()})`);
});

t.test('stop() cancels timers and the check in flight; no callback afterwards', async (t) => {
  const srv = await httpServer(() => {});
  const hc = new HealthChecker([{ id: 1, address: LO, port: srv.port, weight: 1, check: { type: 'http', intervalMs: 20, timeoutMs: 150, rise: 1, fall: 1, http: { path: '/' } } }], {
    firstCheckSpreadMs: 0,
  });
  let calls = 0;
  hc.onCheck(() => calls++);
  hc.onChange(() => calls++);
  t.teardown(() => srv.close());
  hc.start();
  for (let i = 0; i < 100 && srv.open() === 0; i++) await sleep(5);
  t.equal(srv.open(), 1, 'a check is in flight');
  hc.stop();
  await sleep(250);
  t.equal(calls, 0, 'no check result or change after stop()');
  t.equal(srv.open(), 0, 'the in-flight connection was closed');
  t.equal(srv.accepted(), 1, 'no new check started');
  hc.stop(); // idempotent
});

t.test('Maglev: after a target goes DOWN, the table rebuilt from effectiveWeights() has no entry for it', async (t) => {
  const a = await tcpServer(), b = await tcpServer();
  const targets = [tcpTarget(0, a.port, { weight: 1 }, { fall: 2 }), tcpTarget(1, b.port, { weight: 1 }, { fall: 2 })];
  const keys = new Map(targets.map((x) => [x.id, `${x.address}:${x.port}`]));
  const hc = new HealthChecker(targets, { initialState: 'up', jitter: 0.2 });
  const table = new MaglevTable();
  const rebuild = (w: Map<number, number>) => table.build([...w].map(([id, weight]) => ({ id, weight, key: keys.get(id)! })));
  hc.onChange(rebuild);
  t.teardown(async () => {
    hc.stop();
    await Promise.all([a.close(), b.close()]);
  });
  const count = (id: number) => table.table.reduce((n, v) => (v === id ? n + 1 : n), 0);
  rebuild(hc.effectiveWeights());
  t.ok(count(0) > 30000 && count(1) > 30000, 'both targets share the table while UP');
  t.same(hc.maglevBackends(), [{ id: 0, weight: 1, key: keys.get(0) }, { id: 1, weight: 1, key: keys.get(1) }]);

  const down = waitFor<Transition>((fn) => hc.onTransition(fn), (x) => x.to === 'down', 3000, 'DOWN');
  hc.start();
  await checksDone(hc, [0, 1], 1);
  const gen = table.generation;
  await b.close();
  const d = await down;
  t.equal(d.id, 1);
  t.ok(table.generation > gen, 'onChange rebuilt the table');
  t.equal(count(1), 0, 'no entry points at the DOWN target');
  t.equal(count(0), table.size, 'every entry goes to the healthy target');
});
