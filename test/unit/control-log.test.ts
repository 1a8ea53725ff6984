// Structured logs (src/control/log.ts): one valid JSON line per event with
// time, level, msg and the fields; the level filter; fields that cannot
// forge the fixed keys or break the line; repeated warnings and errors
// suppressed within a window and counted on the next line that passes.
import t from 'tap';
import { Logger, type Level } from '../../src/control/log.js';

function capture(level: Level, opts: ConstructorParameters<typeof Logger>[2] = {}) {
  const out: string[] = [];
  const log = new Logger(level, (l) => { out.push(l); }, opts);
  const lines = () => out.map((l) => {
    if (!l.endsWith('\n') || l.indexOf('\n') !== l.length - 1) throw new Error(`not one line: ${JSON.stringify(l)}`);
    return JSON.parse(l) as Record<string, unknown>;
  });
  return { log, out, lines };
}

t.test('JSON lines with time, level, msg and fields', async (t) => {
  const { log, lines } = capture('debug');
  log.info('appliance started', { mode: 'tun', pool: ['198.19.2.1'], n: 3 });
  log.debug('detail', { multi: 'line one\nline two' });
  const [a, b] = lines();
  t.match(a, { level: 'info', msg: 'appliance started', mode: 'tun', pool: ['198.19.2.1'], n: 3 });
  t.ok(!Number.isNaN(Date.parse(a.time as string)) && /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/.test(a.time as string), `ISO 8601 time ${a.time}`);
  t.same(Object.keys(a).slice(0, 3), ['time', 'level', 'msg'], 'the fixed keys first');
  t.equal(b.multi, 'line one\nline two', 'a newline in a field stays inside the one line');
});

t.test('the level filters', async (t) => {
  for (const [level, want] of [['debug', 4], ['info', 3], ['warn', 2], ['error', 1]] as const) {
    const { log, lines } = capture(level);
    log.debug('d');
    log.info('i');
    log.warn('w');
    log.error('e');
    t.equal(lines().length, want, `${level}: ${want} lines`);
    t.ok(lines().every((l) => ['debug', 'info', 'warn', 'error'].indexOf(l.level as string) >= ['debug', 'info', 'warn', 'error'].indexOf(level)));
    t.equal(log.enabled('warn'), level !== 'error');
  }
  const { log, lines } = capture('error');
  log.info('hidden');
  log.setLevel('info');
  log.info('shown');
  t.same(lines().map((l) => l.msg), ['shown'], 'setLevel takes effect');
  t.throws(() => new Logger('loud' as Level), /log level must be one of/);
});

t.test('fields cannot forge the fixed keys or break the line', async (t) => {
  const { log, lines } = capture('info');
  log.info('real', { msg: 'forged', level: 'error', time: 'yesterday' });
  const err = Object.assign(new Error('connect refused'), { code: 'ECONNREFUSED' });
  const cyc: Record<string, unknown> = { a: 1 };
  cyc.self = cyc;
  log.info('odd values', { err, big: 2n ** 70n });
  log.info('cycle', { cyc });
  const [a, b, c] = lines();
  t.match(a, { level: 'info', msg: 'real', _msg: 'forged', _level: 'error', _time: 'yesterday' });
  t.same(b.err, { name: 'Error', message: 'connect refused', code: 'ECONNREFUSED' }, 'an Error keeps its message and code');
  t.equal(b.big, '1180591620717411303424', 'a BigInt as a string');
  t.match(c, { level: 'info', msg: 'cycle', fieldsError: /not serialisable/ }, 'a cycle costs the fields, not the line');
});

t.test('repeated warnings and errors are suppressed, then counted', async (t) => {
  let now = 1_000_000;
  const { log, lines } = capture('info', { burst: 3, windowMs: 10_000, now: () => now });
  for (let i = 0; i < 50; i++) log.error('guard webhook failed', { i });
  log.warn('another message');
  t.equal(lines().length, 4, '3 of the same, then a different message still passes');
  t.equal(log.suppressed, 47);
  now += 10_000;
  log.error('guard webhook failed', { i: 50 });
  const last = lines()[4];
  t.match(last, { msg: 'guard webhook failed', i: 50, repeated: 47 }, 'the next line in a new window says how many were suppressed');
  log.error('guard webhook failed', { i: 51 });
  t.notOk('repeated' in lines()[5], 'and the count starts over');
  for (let i = 0; i < 100; i++) log.info('guard blocked', { addr: `198.18.7.${i}` });
  t.equal(lines().filter((l) => l.msg === 'guard blocked').length, 100, 'info events are never suppressed');
});
