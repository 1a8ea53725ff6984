// The `lb:` section of the configuration: every mistake is reported with the
// key path of the bad value (STYLE.md 12), and a good section becomes the
// distributor's services (src/control/lb.ts) without running anything.
import t from 'tap';
import { validateConfig, ConfigError } from '../../src/control/config.js';
import { LbControl } from '../../src/control/lb.js';
import { FlowTable } from '../../src/flow/flow-table.js';
import { Logger } from '../../src/control/log.js';

const base = { nat: { inside: ['198.18.1.0/24'], pool: '198.19.2.0/24' } };
const svc = (over: Record<string, unknown> = {}) => ({ name: 'web', vip: '198.19.10.1', port: 80, targets: [{ address: '198.19.1.11', port: 80 }], ...over });

function problems(doc: unknown): string[] {
  try {
    validateConfig(doc, 'test.yaml');
  } catch (e) {
    if (e instanceof ConfigError) return e.problems;
    throw e;
  }
  return [];
}

t.test('errors name the key path', async (t) => {
  t.match(problems({ ...base, lb: { services: [svc({ mode: 'dsr-l2' })] } }), [/^lb\.services\[0\]\.mode: dsr-l2 rewrites MAC addresses: it needs io\.mode af-packet$/]);
  t.match(problems({ ...base, lb: { services: [svc(), svc({ name: 'b' })] } }), [/^lb\.services\[1\]: tcp\/198\.19\.10\.1:80 is already services\[0\]$/]);
  t.match(problems({ ...base, io: { mode: 'af-packet', inside: 'a', outside: 'b' }, lb: { services: [svc({ mode: 'dsr-l2', targets: [{ address: '198.19.1.11', port: 8080 }] })] } }),
    [/^lb\.services\[0\]\.targets\[0\]\.port: must equal the service port 80/]);
  t.match(problems({ ...base, lb: { services: [svc({ targets: [{ address: '198.19.1.11', port: 80, mac: 'zz' }] })] } }), [/^lb\.services\[0\]\.targets\[0\]\.mac: expected a MAC address/]);
  t.match(problems({ ...base, lb: { services: [svc({ targets: [{ address: '198.19.1.300', port: 80 }] })] } }), [/^lb\.services\[0\]\.targets\[0\]\.address: expected an IPv4 address/]);
  t.match(problems({ ...base, lb: { services: [svc({ targets: [] })] } }), [/^lb\.services\[0\]\.targets: give at least one target$/]);
  t.match(problems({ ...base, lb: { services: [svc({ health: { type: 'http', fall: 0 } })] } }), [/^lb\.services\[0\]\.health\.fall: /]);
  t.match(problems({ ...base, lb: { services: [svc({ weight: 3 })] } }), [/^lb\.services\[0\]: unknown key 'weight'$/]);
  const tls = { certificates: [{ cert: 'c.pem', key: 'k.pem' }] };
  t.match(problems({ ...base, lb: { services: [svc({ port: 443, tls: { ...tls, sniPools: { 'a.test': 'nope' } } })] } }), [/^lb\.services\[0\]\.tls\.sniPools\.a\.test: no pool 'nope' \(have: default\)$/]);
  t.match(problems({ ...base, lb: { services: [svc({ port: 443, tls: { ...tls, upstreamPool: { size: 4 } } })] } }), [/^lb\.services\[0\]\.tls\.upstreamPool: only with mode tls-to-target/]);
  t.match(problems({ ...base, lb: { services: [svc({ port: 443, proto: 'udp', tls })] } }), [/^lb\.services\[0\]\.proto: a TLS service is TCP$/]);
  t.match(problems({ ...base, lb: { services: [svc({ port: 443, tls: { ...tls, ticketKeys: 'abc' } })] } }), [/^lb\.services\[0\]\.tls\.ticketKeys: expected 96 hex digits/]);
  t.same(problems({ ...base, lb: { services: [svc()] } }), [], 'a minimal service is valid');
});

t.test('a valid section becomes the distributor\'s services; health none keeps the configured weights', async (t) => {
  const cfg = validateConfig({ ...base, lb: { services: [svc({ health: { type: 'none' }, targets: [{ address: '198.19.1.11', port: 8080, weight: 2 }, { address: '198.19.1.12', port: 8080, drain: true }] })] } });
  const lb = new LbControl(cfg.lb!, new FlowTable({ capacity: 1024 }), new Logger('error'));
  const d = lb.dist.services[0];
  t.equal(d.mode, 'nat');
  t.equal(d.proto, 6);
  t.same(d.targets.map((x) => [x.address, x.port, x.weight]), [['198.19.1.11', 8080, 2], ['198.19.1.12', 8080, 0]], 'drained target: weight 0');
  const st = lb.status() as { targets: { state: string; effectiveWeight: number }[] }[];
  t.same(st[0].targets.map((x) => [x.state, x.effectiveWeight]), [['unchecked', 2], ['unchecked', 0]]);
  t.equal(lb.counterValues().lb_rebuilds, 1);
  await lb.stop();
});
