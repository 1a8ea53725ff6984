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

import { execFileSync, spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';

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

/**
 * Namespaces made by one lab, and the processes started in them: all of
 * them carry the caller's unique prefix and go away in destroy().
 */
export class NsLab {
  protected readonly children: ChildProcess[] = [];
  protected made: string[] = [];

  constructor(readonly prefix: string) {
    if (!/^[a-z0-9-]{1,20}$/.test(prefix)) throw new Error(`lab prefix '${prefix}': use 1 to 20 of a-z 0-9 -`);
  }

  /** Creates namespace `name` (which must start with the prefix) with lo up. */
  protected addNs(name: string): void {
    if (!name.startsWith(this.prefix)) throw new Error(`namespace ${name} does not carry the lab prefix ${this.prefix}`);
    ip(['netns', 'add', name]);
    this.made.push(name);
    ip(['-n', name, 'link', 'set', 'lo', 'up']);
  }

  sysctl(ns: string, key: string, value: string): void {
    execFileSync('ip', ['netns', 'exec', ns, 'sysctl', '-qw', `${key}=${value}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  }

  /** Runs a command to completion inside `ns`. */
  exec(ns: string, cmd: string, args: string[], opts: { timeoutMs?: number; input?: string } = {}): { code: number | null; out: string; err: string } {
    const r = spawnSync('ip', ['netns', 'exec', ns, cmd, ...args], { encoding: 'utf8', timeout: opts.timeoutMs ?? 30000, input: opts.input, stdio: ['pipe', 'pipe', 'pipe'], maxBuffer: 64 << 20 });
    return { code: r.status, out: r.stdout ?? '', err: (r.stderr ?? '') + (r.error ? `\n${r.error.message}` : '') };
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

export class NatLab extends NsLab {
  readonly cl: string;
  readonly gw: string;
  readonly sv: string;

  constructor(prefix: string) {
    super(prefix);
    this.cl = `${prefix}cl`;
    this.gw = `${prefix}gw`;
    this.sv = `${prefix}sv`;
  }

  /** Creates the namespaces, links, addresses, routes and (mode tun, the default) the TUN the appliance will open. */
  create(opts: { mode?: 'tun' | 'af-packet' } = {}): this {
    for (const ns of [this.cl, this.gw, this.sv]) this.addNs(ns);
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
}

export const LB_LAB = {
  client: '198.18.1.2',
  gwInside: '198.18.1.1',
  gwOutside: '198.19.1.1',
  vip: '198.19.10.1',
  /** Target i (0-based) is 198.19.1.(11 + i). */
  target: (i: number) => `198.19.1.${11 + i}`,
  insidePrefix: '198.18.1.0/24',
  pool: '198.19.2.0/24',
  tun: 'pcl0',
} as const;

/**
 * The distributor's lab:
 *
 *   <p>cl  client cl0 198.18.1.2/24 ──veth── gwi 198.18.1.1/24  <p>gw  appliance
 *                                             gwo 198.19.1.1/24 ──veth── br0 (bridge in <p>br)
 *   <p>t1 .. <p>tN  targets t0 198.19.1.11.. /24 ──veth── br0
 *
 * The VIP 198.19.10.1 is reached by the client through the gateway. The
 * targets route the client network back through the gateway (nat mode needs
 * its replies back; in dsr-l2 mode the gateway only routes them).
 * - mode tun: as NatLab, policy routing sends what comes in on gwi/gwo into
 *   the TUN, except what is addressed to the gateway's interface addresses;
 *   the VIP is also a local address of the gateway (for the TLS terminator),
 *   so the local table is looked up after the TUN rules, not before.
 * - mode af-packet: the appliance routes (ip_forward=0 in the gateway).
 * - dsr: the targets hold the VIP on lo and neither answer nor announce ARP
 *   for it (arp_ignore=1, arp_announce=2), as IPVS's DR mode requires.
 */
export class LbLab extends NsLab {
  readonly cl: string;
  readonly gw: string;
  readonly br: string;
  readonly targets: string[];

  constructor(prefix: string, readonly targetCount = 3) {
    super(prefix);
    this.cl = `${prefix}cl`;
    this.gw = `${prefix}gw`;
    this.br = `${prefix}br`;
    this.targets = Array.from({ length: targetCount }, (_, i) => `${prefix}t${i + 1}`);
  }

  create(opts: { mode?: 'tun' | 'af-packet'; dsr?: boolean; localVip?: boolean } = {}): this {
    for (const ns of [this.cl, this.gw, this.br, ...this.targets]) this.addNs(ns);
    ip(['-n', this.cl, 'link', 'add', 'cl0', 'type', 'veth', 'peer', 'name', 'gwi', 'netns', this.gw]);
    ip(['-n', this.br, 'link', 'add', 'br0', 'type', 'bridge']);
    ip(['-n', this.br, 'link', 'set', 'br0', 'up']);
    ip(['-n', this.gw, 'link', 'add', 'gwo', 'type', 'veth', 'peer', 'name', 'pgw', 'netns', this.br]);
    ip(['-n', this.br, 'link', 'set', 'pgw', 'master', 'br0', 'up']);
    ip(['-n', this.cl, 'addr', 'add', `${LB_LAB.client}/24`, 'dev', 'cl0']);
    ip(['-n', this.gw, 'addr', 'add', `${LB_LAB.gwInside}/24`, 'dev', 'gwi']);
    ip(['-n', this.gw, 'addr', 'add', `${LB_LAB.gwOutside}/24`, 'dev', 'gwo']);
    for (const [ns, dev] of [[this.cl, 'cl0'], [this.gw, 'gwi'], [this.gw, 'gwo']]) ip(['-n', ns, 'link', 'set', dev, 'up']);
    ip(['-n', this.cl, 'route', 'add', '198.19.0.0/16', 'via', LB_LAB.gwInside]);
    this.targets.forEach((ns, i) => {
      ip(['-n', ns, 'link', 'add', 't0', 'type', 'veth', 'peer', 'name', `p${i + 1}`, 'netns', this.br]);
      ip(['-n', this.br, 'link', 'set', `p${i + 1}`, 'master', 'br0', 'up']);
      ip(['-n', ns, 'addr', 'add', `${LB_LAB.target(i)}/24`, 'dev', 't0']);
      ip(['-n', ns, 'link', 'set', 't0', 'up']);
      ip(['-n', ns, 'route', 'add', '198.18.0.0/16', 'via', LB_LAB.gwOutside]);
      if (opts.dsr) {
        ip(['-n', ns, 'addr', 'add', `${LB_LAB.vip}/32`, 'dev', 'lo']);
        for (const dev of ['all', 't0']) {
          this.sysctl(ns, `net.ipv4.conf.${dev}.arp_ignore`, '1');
          this.sysctl(ns, `net.ipv4.conf.${dev}.arp_announce`, '2');
        }
      }
    });
    for (const dev of ['all', 'default', 'gwi', 'gwo']) this.sysctl(this.gw, `net.ipv4.conf.${dev}.rp_filter`, '0');
    if (opts.localVip) ip(['-n', this.gw, 'addr', 'add', `${LB_LAB.vip}/32`, 'dev', 'lo']);
    if (opts.mode === 'af-packet') {
      this.sysctl(this.gw, 'net.ipv4.ip_forward', '0');
      return this;
    }
    this.sysctl(this.gw, 'net.ipv4.ip_forward', '1');
    ip(['-n', this.gw, 'tuntap', 'add', 'dev', LB_LAB.tun, 'mode', 'tun']);
    ip(['-n', this.gw, 'link', 'set', LB_LAB.tun, 'up']);
    this.sysctl(this.gw, `net.ipv4.conf.${LB_LAB.tun}.rp_filter`, '0');
    ip(['-n', this.gw, 'route', 'add', '198.18.0.0/15', 'dev', LB_LAB.tun, 'table', '100']);
    // The gateway's own interface addresses stay local (health checks, ARP
    // replies' IP peers); everything else from gwi/gwo goes through the
    // appliance first, the VIP included; the local table comes after.
    ip(['-n', this.gw, 'rule', 'add', 'to', LB_LAB.gwInside, 'lookup', 'local', 'pref', '90']);
    ip(['-n', this.gw, 'rule', 'add', 'to', LB_LAB.gwOutside, 'lookup', 'local', 'pref', '91']);
    ip(['-n', this.gw, 'rule', 'add', 'iif', 'gwi', 'lookup', '100', 'pref', '100']);
    ip(['-n', this.gw, 'rule', 'add', 'iif', 'gwo', 'lookup', '100', 'pref', '101']);
    ip(['-n', this.gw, 'rule', 'add', 'lookup', 'local', 'pref', '1000']);
    ip(['-n', this.gw, 'rule', 'del', 'pref', '0']);
    // Early demux would find the terminator's socket for a client's ACK on
    // gwi and skip the routing decision (the TUN first): off, so every packet
    // to the VIP takes the rules above.
    this.sysctl(this.gw, 'net.ipv4.tcp_early_demux', '0');
    this.sysctl(this.gw, 'net.ipv4.ip_early_demux', '0');
    return this;
  }

  /** The MAC of target i's interface. */
  targetMac(i: number): string {
    const out = execFileSync('ip', ['-n', this.targets[i], '-j', 'link', 'show', 't0'], { encoding: 'utf8' });
    return (JSON.parse(out) as { address: string }[])[0].address;
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
