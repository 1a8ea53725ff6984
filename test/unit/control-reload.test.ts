// Appliance.reload (SIGHUP) without devices: the appliance is built from a
// configuration but never started (no TUN is opened). What RELOADABLE names
// takes effect, every other changed key is reported by path as needing a
// restart and keeps its running value, a refused reload changes nothing.
// The end-to-end version with live connections is test/e2e/reload.test.ts.
import t from 'tap';
import { validateConfig, type Config } from '../../src/control/config.js';
import { Appliance } from '../../src/control/appliance.js';
import { changedKeys, isReloadable, RELOADABLE } from '../../src/control/reload.js';
import { Logger } from '../../src/control/log.js';

const target = (i: number, weight = 1) => ({ address: `198.19.1.${11 + i}`, port: 80, weight });
function cfgOf(over: { targets?: object[]; level?: string; udp?: number; flow?: number; lb?: boolean; stats?: number } = {}): Config {
  return validateConfig({
    io: { mode: 'tun', tun: 'pcltest0' },
    nat: { inside: ['198.18.1.0/24'], pool: '198.19.2.0/24', timeouts: { udp: over.udp ?? 300 } },
    flow: { capacity: over.flow ?? 1024 },
    admin: { socket: '/nonexistent/admin.sock' },
    stats: { interval: over.stats ?? 0 },
    log: { level: over.level ?? 'info' },
    ...(over.lb === false ? {} : { lb: { services: [{ name: 'web', vip: '198.19.10.1', port: 80, health: { type: 'none' }, targets: over.targets ?? [target(0), target(1)] }] } }),
  }, 'reload-test.yaml');
}

interface Line { level: string; msg: string; keys?: string[] }

t.test('changedKeys names the paths that differ', async (t) => {
  t.same(changedKeys({ a: 1, b: { c: [1, 2], d: 'x' } }, { a: 1, b: { c: [1, 3], d: 'x' } }), ['b.c[1]']);
  t.same(changedKeys({ a: [1] }, { a: [1, 2] }), ['a'], 'a list of another length is one change');
  t.same(changedKeys({ a: 1 }, { a: 1, b: { c: 2 } }), ['b'], 'an added section');
  t.same(changedKeys({ a: undefined }, {}), [], 'undefined and absent are the same');
  t.ok(isReloadable('lb.services[0].targets') && isReloadable('log.level') && !isReloadable('log') && !isReloadable('lbx'), 'reloadable by prefix, not by substring');
  t.same([...RELOADABLE], ['lb', 'log.level', 'stats.interval']);
});

t.test('reload applies lb, log.level and stats; reports the rest by key path', async (t) => {
  const lines: Line[] = [];
  const log = new Logger('info', (l) => { lines.push(JSON.parse(l) as Line); });
  const app = new Appliance(cfgOf(), log);
  t.teardown(() => app.lb?.stop());
  const weights = () => (app.lb!.status() as { targets: { address: string; weight: number }[] }[])[0].targets.map((x) => `${x.address}=${x.weight}`);
  t.same(weights(), ['198.19.1.11=1', '198.19.1.12=1']);
  const rebuilds0 = app.lb!.rebuilds;

  // Add a target, reweight another, raise the log level, and change two keys that need a restart.
  const r = await app.reload(cfgOf({ targets: [target(0, 3), target(1), target(2)], level: 'warn', udp: 600, flow: 2048 }));
  t.same(r.applied.sort(), ['lb.services[0].targets', 'log.level'], 'applied: the lb targets and the log level');
  t.same(r.needsRestart.sort(), ['flow.capacity', 'nat.timeouts.udp'], 'needs a restart: named by key path');
  t.same(weights(), ['198.19.1.11=3', '198.19.1.12=1', '198.19.1.13=1'], 'the distributor has the new targets and weights');
  t.ok(app.lb!.rebuilds > rebuilds0, 'tables rebuilt');
  const warn = lines.find((l) => l.level === 'warn' && /need a restart/.test(l.msg));
  t.same(warn?.keys?.sort(), ['flow.capacity', 'nat.timeouts.udp'], 'a warn line lists the keys that need a restart');
  t.equal(app.flows.capacity, 1024, 'the flow table keeps its size');
  const n0 = lines.length;
  log.info('an info line after the level went to warn');
  t.equal(lines.length, n0, 'log.level warn took effect: info lines are not written');

  // The same file again: nothing changed that is live, the restart keys are still reported.
  const rebuilds1 = app.lb!.rebuilds;
  const again = await app.reload(cfgOf({ targets: [target(0, 3), target(1), target(2)], level: 'warn', udp: 600, flow: 2048 }));
  t.same(again.applied, [], 'nothing new to apply');
  t.same(again.needsRestart.sort(), ['flow.capacity', 'nat.timeouts.udp'], 'still differs from what runs');
  t.equal(app.lb!.rebuilds, rebuilds1, 'an unchanged lb section is not rebuilt (health state kept)');

  // Removing the whole lb section is refused, and nothing of that file is applied.
  await t.rejects(app.reload(cfgOf({ lb: false, level: 'debug' })), /removing the whole lb section needs a restart/);
  log.info('an info line after the refused reload');
  t.notOk(lines.some((l) => l.msg === 'an info line after the refused reload'), 'the refused file\'s log.level (debug) was not applied');
  t.same(weights(), ['198.19.1.11=3', '198.19.1.12=1', '198.19.1.13=1'], 'the running targets stay');

  // Back to the first file: the lb and the level go back, the restart keys are clean again.
  const back = await app.reload(cfgOf());
  t.same(back.needsRestart, [], 'the running values of the restart keys were never changed');
  t.same(weights(), ['198.19.1.11=1', '198.19.1.12=1']);
  log.info('info again');
  t.ok(lines.some((l) => l.msg === 'info again'), 'log.level info again');
});

t.test('a target keeps its distributor slot when a target before it is removed', async (t) => {
  // Slots key the NAT reply index: a target moved to a new slot while the
  // index still named its old one lost the replies of every new flow.
  const app = new Appliance(cfgOf({ targets: [target(0), target(1)] }), new Logger('error', () => {}));
  t.teardown(() => app.lb?.stop());
  const dist = app.lb!.dist;
  const slotOf = (address: string) => {
    const svc = dist.services[0];
    const tg = svc.targets.find((x) => x.address === address);
    return tg ? dist.slotOfTarget(svc, tg) : -1;
  };
  const t2 = slotOf('198.19.1.12');
  t.ok(t2 >= 0, 't2 has a slot');
  await app.reload(cfgOf({ targets: [target(1), target(2)] }));
  t.equal(slotOf('198.19.1.12'), t2, 't2 keeps its slot after t1 (before it in the list) was removed');
  t.equal(dist.targetCount, 3, 'one new slot, for the added t3; t1 keeps its slot for its established flows');
});
