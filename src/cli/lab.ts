// A small lab of network namespaces for the demo and the end-to-end tests:
//
//   <p>cl  client   cl0 198.18.1.2/24 ──veth── gwi 198.18.1.1/24   <p>gw  appliance
//                                               gwo 198.19.1.1/24 ──veth── sv0 198.19.1.2/24 (+ .3)  <p>sv  server
//
// The appliance's NAT pool is 198.19.2.0/24, reached from the server through
// the gateway. The gateway's kernel keeps ARP and the interfaces; policy
// routing sends everything arriving on gwi/gwo into the TUN `pcl0`, and what
// the appliance writes back is routed by the main table. Only the benchmark
// range 198.18.0.0/15 is used, and only inside namespaces made here; every
// namespace carries the caller's unique prefix and is deleted by destroy().
// No default routes: each namespace only knows the ranges of the lab.
//
// create({ mode: 'af-packet' }) sets the gateway up for the appliance's
// af-packet mode instead: no TUN and no policy routing; the appliance takes
// the frames from gwi/gwo itself, so the gateway's kernel must not forward
// them too (ip_forward=0: it then only answers ARP and its own addresses,
// and drops the rest silently) and rp_filter is off.

import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';

export const LAB = {
  client: '198.18.1.2',
  gwInside: '198.18.1.1',
  gwOutside: '198.19.1.1',
  server: '198.19.1.2',
  server2: '198.19.1.3',
  pool: '198.19.2.1',
  tunAddress: '198.19.2.254',
  poolPrefix: '198.19.2.0/24',
  insidePrefix: '198.18.1.0/24',
  tun: 'pcl0',
} as const;

function ip(args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

export class NatLab {
  readonly cl: string;
  readonly gw: string;
  readonly sv: string;
  private readonly children: ChildProcess[] = [];
  private made: string[] = [];

  constructor(readonly prefix: string) {
    if (!/^[a-z0-9-]{1,20}$/.test(prefix)) throw new Error(`lab prefix '${prefix}': use 1 to 20 of a-z 0-9 -`);
    this.cl = `${prefix}cl`;
    this.gw = `${prefix}gw`;
    this.sv = `${prefix}sv`;
  }

  /** Creates the namespaces, links, addresses, routes and (mode tun, the default) the TUN the appliance will open. */
  create(opts: { mode?: 'tun' | 'af-packet' } = {}): this {
    for (const ns of [this.cl, this.gw, this.sv]) {
      ip(['netns', 'add', ns]);
      this.made.push(ns);
      ip(['-n', ns, 'link', 'set', 'lo', 'up']);
    }
    ip(['-n', this.cl, 'link', 'add', 'cl0', 'type', 'veth', 'peer', 'name', 'gwi', 'netns', this.gw]);
    ip(['-n', this.gw, 'link', 'add', 'gwo', 'type', 'veth', 'peer', 'name', 'sv0', 'netns', this.sv]);
    ip(['-n', this.cl, 'addr', 'add', `${LAB.client}/24`, 'dev', 'cl0']);
    ip(['-n', this.gw, 'addr', 'add', `${LAB.gwInside}/24`, 'dev', 'gwi']);
    ip(['-n', this.gw, 'addr', 'add', `${LAB.gwOutside}/24`, 'dev', 'gwo']);
    ip(['-n', this.sv, 'addr', 'add', `${LAB.server}/24`, 'dev', 'sv0']);
    ip(['-n', this.sv, 'addr', 'add', `${LAB.server2}/24`, 'dev', 'sv0']);
    for (const [ns, dev] of [[this.cl, 'cl0'], [this.gw, 'gwi'], [this.gw, 'gwo'], [this.sv, 'sv0']]) ip(['-n', ns, 'link', 'set', dev, 'up']);
    // The client knows the outside only through the gateway; the server knows
    // only the pool (never the inside network), so nothing works without NAT.
    ip(['-n', this.cl, 'route', 'add', '198.19.0.0/16', 'via', LAB.gwInside]);
    ip(['-n', this.sv, 'route', 'add', LAB.poolPrefix, 'via', LAB.gwOutside]);
    for (const dev of ['all', 'default', 'gwi', 'gwo']) this.sysctl(this.gw, `net.ipv4.conf.${dev}.rp_filter`, '0');
    if (opts.mode === 'af-packet') {
      this.sysctl(this.gw, 'net.ipv4.ip_forward', '0');
      return this;
    }
    this.sysctl(this.gw, 'net.ipv4.ip_forward', '1');
    // The TUN exists before the appliance attaches to it, so routes can name it.
    ip(['-n', this.gw, 'tuntap', 'add', 'dev', LAB.tun, 'mode', 'tun']);
    ip(['-n', this.gw, 'link', 'set', LAB.tun, 'up']);
    this.sysctl(this.gw, `net.ipv4.conf.${LAB.tun}.rp_filter`, '0');
    ip(['-n', this.gw, 'route', 'add', '198.18.0.0/15', 'dev', LAB.tun, 'table', '100']);
    ip(['-n', this.gw, 'rule', 'add', 'iif', 'gwi', 'lookup', '100', 'pref', '100']);
    ip(['-n', this.gw, 'rule', 'add', 'iif', 'gwo', 'lookup', '100', 'pref', '101']);
    // ICMP errors the gateway's own kernel sends to a pool address (TTL
    // exceeded after translation) go to the appliance, which reverts them.
    // The TUN gets an outside address so that those errors come from the
    // outside side and are translated like any other.
    ip(['-n', this.gw, 'addr', 'add', `${LAB.tunAddress}/32`, 'dev', LAB.tun]);
    ip(['-n', this.gw, 'route', 'add', LAB.poolPrefix, 'dev', LAB.tun]);
    return this;
  }

  sysctl(ns: string, key: string, value: string): void {
    execFileSync('ip', ['netns', 'exec', ns, 'sysctl', '-qw', `${key}=${value}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  }

  /** Runs a command to completion inside `ns`. */
  exec(ns: string, cmd: string, args: string[], opts: { timeoutMs?: number; input?: string } = {}): { code: number | null; out: string; err: string } {
    try {
      const out = execFileSync('ip', ['netns', 'exec', ns, cmd, ...args], { encoding: 'utf8', timeout: opts.timeoutMs ?? 30000, input: opts.input, stdio: ['pipe', 'pipe', 'pipe'], maxBuffer: 64 << 20 });
      return { code: 0, out, err: '' };
    } catch (e) {
      const x = e as { status: number | null; stdout?: string; stderr?: string };
      return { code: x.status ?? null, out: x.stdout ?? '', err: x.stderr ?? '' };
    }
  }

  /** Starts a long-running command inside `ns`; destroy() kills it. */
  spawn(ns: string, cmd: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
    const c = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    this.children.push(c);
    return c;
  }

  /** Kills what it started and deletes the namespaces it made (only those). */
  destroy(): void {
    for (const c of this.children) {
      if (c.exitCode === null && c.signalCode === null) {
        try { c.kill('SIGKILL'); } catch { /* gone */ }
      }
    }
    // Processes still inside a namespace (a server that forked) would keep it alive.
    for (const ns of this.made) {
      try {
        const pids = execFileSync('ip', ['netns', 'pids', ns], { encoding: 'utf8' }).split('\n').filter(Boolean);
        for (const pid of pids) { try { process.kill(Number(pid), 'SIGKILL'); } catch { /* gone */ } }
      } catch { /* ns gone */ }
    }
    for (const ns of this.made.reverse()) {
      try { ip(['netns', 'del', ns]); } catch { /* already gone */ }
    }
    this.made = [];
  }
}

/** Waits until `child` prints a line matching `re` on stdout (or fails after timeoutMs). */
export function waitForLine(child: ChildProcess, re: RegExp, timeoutMs = 15000): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = '';
    let err = '';
    const timer = setTimeout(() => reject(new Error(`no line matching ${re} within ${timeoutMs} ms; stdout: ${buf.slice(-400)} stderr: ${err.slice(-400)}`)), timeoutMs);
    const onData = (d: Buffer) => {
      buf += d.toString();
      const m = buf.split('\n').find((l) => re.test(l));
      if (m !== undefined) {
        clearTimeout(timer);
        child.stdout?.off('data', onData);
        resolve(m);
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', (d: Buffer) => { err += d.toString(); });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`exited with ${code ?? signal} before printing ${re}; stdout: ${buf.slice(-400)} stderr: ${err.slice(-800)}`));
    });
  });
}
