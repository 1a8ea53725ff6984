// `portcullis guard block|unblock|list`: the running appliance's guard, over
// the admin socket. Exit codes: 0 done, 1 the appliance refused or cannot be
// reached (the message says why), 2 usage (bad address).

import { adminGet, adminPost } from '../control/admin.js';
import { canonical } from '../guard/addr.js';

export interface GuardCliOptions { socket: string; json?: boolean }

function out(s: string): void {
  process.stdout.write(s);
}

export async function runGuardBlock(addr: string, opts: GuardCliOptions & { duration?: number }): Promise<number> {
  const a = canonical(addr);
  if (!a) {
    process.stderr.write(`portcullis: '${addr}' is not an IPv4 or IPv6 address or prefix (examples: 198.18.7.9, 198.18.7.0/24, fd00::1)\n`);
    return 2;
  }
  const r = await adminPost(opts.socket, '/guard/block', { addr: a, duration: opts.duration ?? 0 });
  if (r.status !== 200) {
    process.stderr.write(`portcullis: cannot block ${a}: ${String(r.body.error ?? r.status)}\n`);
    return 1;
  }
  if (opts.json) out(JSON.stringify(r.body, null, 2) + '\n');
  else {
    const e = r.body.entry as { addr: string; until: number };
    out(`blocked ${e.addr} ${e.until ? `until ${new Date(e.until).toISOString()}` : 'until unblocked'}\n`);
  }
  return 0;
}

export async function runGuardUnblock(addr: string, opts: GuardCliOptions): Promise<number> {
  const a = canonical(addr);
  if (!a) {
    process.stderr.write(`portcullis: '${addr}' is not an IPv4 or IPv6 address or prefix\n`);
    return 2;
  }
  const r = await adminPost(opts.socket, '/guard/unblock', { addr: a });
  if (r.status !== 200) {
    process.stderr.write(`portcullis: cannot unblock ${a}: ${String(r.body.error ?? r.status)}\n`);
    return 1;
  }
  if (opts.json) out(JSON.stringify(r.body, null, 2) + '\n');
  else out(`unblocked ${a}\n`);
  return 0;
}

interface Row { addr: string; until: number; rule: string; score: number; nodes: string[]; offences: number; at: number; drops: number }

export async function runGuardList(opts: GuardCliOptions): Promise<number> {
  const r = (await adminGet(opts.socket, '/guard/blacklist')) as { node: string; blacklist: Row[] };
  if (opts.json) {
    out(JSON.stringify(r, null, 2) + '\n');
    return 0;
  }
  const w = Math.max(7, ...r.blacklist.map((e) => e.addr.length));
  out(`${'address'.padEnd(w)}  rule        score  offences  ${'until'.padEnd(24)}  drops  nodes\n`);
  for (const e of r.blacklist) {
    const until = e.until ? new Date(e.until).toISOString() : 'until unblocked';
    out(`${e.addr.padEnd(w)}  ${e.rule.padEnd(10)} ${e.score.toFixed(0).padStart(6)}  ${String(e.offences).padStart(8)}  ${until.padEnd(24)}  ${String(e.drops).padStart(5)}  ${e.nodes.join(',')}\n`);
  }
  out(`${r.blacklist.length} blocked\n`);
  return 0;
}
