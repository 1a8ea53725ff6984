// `portcullis run`, `portcullis check-config`, `portcullis nat list`.

import { loadConfig, ConfigError } from '../control/config.js';
import { Appliance } from '../control/appliance.js';
import { Logger } from '../control/log.js';
import { adminGet } from '../control/admin.js';

export async function runCheckConfig(file: string): Promise<number> {
  try {
    const cfg = loadConfig(file);
    const io = cfg.io.mode === 'af-packet' ? `af-packet ${cfg.io.inside} -> ${cfg.io.outside}${cfg.io.vnetHdr ? ' vnet' : ''}` : `tun ${cfg.io.tun}`;
    process.stdout.write(`${file}: ok (${io}, inside ${cfg.nat.inside.join(' ')}, pool ${Array.isArray(cfg.nat.pool) ? cfg.nat.pool.join(' ') : cfg.nat.pool}, filtering ${cfg.nat.filtering})\n`);
    for (const s of cfg.lb?.services ?? []) {
      process.stdout.write(`  lb ${s.name}: ${s.proto}/${s.vip}:${s.port} ${s.tls ? `tls ${s.tls.mode}` : s.mode}, ${s.targets.length} target${s.targets.length === 1 ? '' : 's'}, health ${s.health.type}\n`);
    }
    if (cfg.guard?.enabled) process.stdout.write(`  guard: bus ${cfg.guard.bus}, interval ${cfg.guard.interval} s, monitor ${cfg.guard.monitor ? 'here' : 'elsewhere'}\n`);
    return 0;
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      return 2;
    }
    throw err;
  }
}

export interface RunOptions { config: string; duration?: number }

export async function runAppliance(opts: RunOptions): Promise<number> {
  let cfg;
  try {
    cfg = loadConfig(opts.config);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${err.message}\n`);
      return 2;
    }
    throw err;
  }
  const log = new Logger(cfg.log.level);
  const app = new Appliance(cfg, log);
  try {
    await app.start();
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    log.error('cannot start', { error: e.message, code: e.code });
    process.stderr.write(`portcullis: cannot start: ${e.message}\n`);
    await app.stop().catch(() => {});
    return 1;
  }
  process.stdout.write('READY\n');
  // SIGHUP: read the file again; the distributor's tables are rebuilt and
  // swapped whole (established flows stay on their targets), log.level and
  // stats.interval change, other changed keys are logged as needing a
  // restart (Appliance.reload). A bad file is reported and the running
  // configuration stays. One reload at a time, in signal order.
  let reloading: Promise<void> = Promise.resolve();
  const onHup = () => {
    reloading = reloading.then(async () => {
      try {
        const next = loadConfig(opts.config);
        const r = await app.reload(next);
        log.info('configuration reloaded', { file: opts.config, applied: r.applied, needsRestart: r.needsRestart });
      } catch (err) {
        log.error('configuration not reloaded; the running one stays', { file: opts.config, error: (err as Error).message });
      }
    });
  };
  process.on('SIGHUP', onHup);
  await new Promise<void>((resolve) => {
    const done = () => resolve();
    process.once('SIGINT', done);
    process.once('SIGTERM', done);
    if (opts.duration) setTimeout(done, opts.duration * 1000).unref();
  });
  process.off('SIGHUP', onHup);
  await reloading;
  const final = await app.stop();
  log.info('appliance stopped', { counters: nonZero(final) });
  process.stdout.write('final counters:\n');
  for (const [k, v] of Object.entries(nonZero(final))) process.stdout.write(`  ${k.padEnd(34)} ${v}\n`);
  return 0;
}

function nonZero(o: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== 0));
}

export async function runNatList(opts: { socket: string; json?: boolean }): Promise<number> {
  const r = (await adminGet(opts.socket, '/nat/mappings')) as { mappings: NatRow[] };
  if (opts.json) {
    process.stdout.write(JSON.stringify(r, null, 2) + '\n');
    return 0;
  }
  process.stdout.write('proto  inside                 outside                state         idle  remotes\n');
  for (const m of r.mappings) {
    const rem = m.remotes.map((x) => `${x.address}:${x.port}`).join(' ');
    process.stdout.write(`${m.proto.padEnd(6)} ${`${m.insideAddress}:${m.insidePort}`.padEnd(22)} ${`${m.outsideAddress}:${m.outsidePort}`.padEnd(22)} ${m.state.padEnd(12)} ${m.idle.toFixed(0).padStart(5)}  ${rem}\n`);
  }
  process.stdout.write(`${r.mappings.length} mapping${r.mappings.length === 1 ? '' : 's'}\n`);
  return 0;
}

interface NatRow {
  proto: string; insideAddress: string; insidePort: number; outsideAddress: string; outsidePort: number; state: string; idle: number;
  remotes: { address: string; port: number }[];
}

interface LbRow {
  name: string; vip: string; port: number; proto: string; mode: string; health: string;
  targets: { address: string; port: number; weight: number; effectiveWeight: number; state: string; drain: boolean; lastError: string | null }[];
}

export async function runLbStatus(opts: { socket: string; json?: boolean }): Promise<number> {
  const r = (await adminGet(opts.socket, '/lb')) as { services: LbRow[] };
  if (opts.json) {
    process.stdout.write(JSON.stringify(r, null, 2) + '\n');
    return 0;
  }
  if (r.services.length === 0) process.stdout.write('no lb services configured\n');
  for (const s of r.services) {
    process.stdout.write(`${s.name}  ${s.proto}/${s.vip}:${s.port}  ${s.mode}  health ${s.health}\n`);
    for (const x of s.targets) {
      const w = x.effectiveWeight === x.weight ? `${x.weight}` : `${x.effectiveWeight}/${x.weight}`;
      process.stdout.write(`  ${`${x.address}:${x.port}`.padEnd(22)} ${x.state.padEnd(9)} weight ${w.padEnd(7)}${x.drain ? ' draining' : ''}${x.lastError ? `  ${x.lastError}` : ''}\n`);
    }
  }
  return 0;
}
