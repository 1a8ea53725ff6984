// The workload distributor's control plane inside the appliance: it turns
// the `lb:` section of the configuration into
//   - the packet-path Distributor's services (nat, dsr-l2, dsr-ipip), with
//     effective weights from the health checks, rebuilt and swapped in whole
//     whenever a weight changes (DESIGN.md "Control plane builds, data plane
//     reads");
//   - one TLS terminator per secure service, listening on the VIP:port of
//     this host; the data path marks those VIP:ports 'local' so the host's
//     stack (and not the NAT) gets their packets;
//   - one health checker per service (HAProxy's rise/fall/slowstart/drain).
// A reload (SIGHUP) builds the new services beside the old ones and swaps
// them: the Distributor keeps its target slots and its per-flow memory, so
// established flows stay on their targets across a reload.

import type { FlowTable } from '../flow/flow-table.js';
import { formatIpv4, parseIpv4 } from '../wire/ipv4.js';
import { Distributor, type DistService, type DistTarget } from '../lb/distributor.js';
import { HealthChecker, type HealthTarget, type TargetStatus } from '../lb/health.js';
import { TlsTerminator, type TlsTargetConfig, type TlsTerminatorConfig } from '../lb/tls/terminator.js';
import type { LbConfig, LbServiceConfig } from './config.js';
import type { Logger } from './log.js';

export interface LbEnvironment {
  /** MAC of a directly connected target (af-packet mode: the kernel's neighbour table), or undefined when unknown yet. */
  resolveMac?: (address: string) => string | undefined;
  /** Default outer source of dsr-ipip packets. */
  localAddress?: string;
  /** Health checks start with targets UP (HAProxy's default) or DOWN. */
  initialState?: 'up' | 'down';
}

interface ServiceRuntime {
  cfg: LbServiceConfig;
  checker: HealthChecker | null;
  terminator: TlsTerminator | null;
}

const MAC_RETRY_MS = 500;

export class LbControl {
  readonly dist: Distributor;
  private services: ServiceRuntime[] = [];
  private macTimer: NodeJS.Timeout | null = null;
  private running = false;
  /** Table rebuilds (health changes, reloads, MACs learned). */
  rebuilds = 0;
  transitions = 0;

  constructor(private cfg: LbConfig, flows: FlowTable, private readonly log: Logger, private readonly env: LbEnvironment = {}) {
    this.dist = new Distributor({ flows, localAddress: cfg.localAddress ?? env.localAddress, seed: cfg.seed });
    this.services = cfg.services.map((s) => this.makeRuntime(s));
    this.rebuild(); // throws on a bad service before anything runs
  }

  private makeRuntime(s: LbServiceConfig): ServiceRuntime {
    const h = s.health;
    let checker: HealthChecker | null = null;
    if (h.type !== 'none') {
      const targets: HealthTarget[] = s.targets.map((t, i) => ({
        id: i,
        address: t.address,
        port: t.port,
        weight: t.weight,
        drain: t.drain,
        slowStartMs: h.slowStart * 1000,
        check: {
          type: h.type as 'tcp' | 'http' | 'tls',
          intervalMs: h.interval * 1000,
          timeoutMs: h.timeout * 1000,
          rise: h.rise,
          fall: h.fall,
          http: { path: h.path, expectStatus: h.expectStatus },
          tls: { servername: h.servername, rejectUnauthorized: h.verify, ca: h.ca },
        },
      }));
      checker = new HealthChecker(targets, { initialState: this.env.initialState ?? 'up' });
      checker.onTransition((tr) => {
        this.transitions++;
        const t = s.targets[tr.id];
        this.log[tr.to === 'down' ? 'warn' : 'info']('lb target health changed', { service: s.name, target: `${t.address}:${t.port}`, from: tr.from, to: tr.to, checks: tr.checks, error: tr.error });
      });
      checker.onChange(() => this.rebuildSafe('health'));
    }
    let terminator: TlsTerminator | null = null;
    if (s.tls) terminator = new TlsTerminator(this.terminatorConfig(s, checker));
    return { cfg: s, checker, terminator };
  }

  private terminatorConfig(s: LbServiceConfig, checker: HealthChecker | null): TlsTerminatorConfig {
    const tlsCfg = s.tls!;
    return {
      listen: { host: s.vip, port: s.port },
      certificates: tlsCfg.certificates.map((c) => ({ names: c.names, cert: c.cert, key: c.key })),
      alpn: tlsCfg.alpn,
      requestClientCert: tlsCfg.requestClientCert,
      clientCa: tlsCfg.clientCa,
      targets: this.tlsTargets(s, checker),
      backupTargets: tlsCfg.backupTargets.map((t) => tlsTarget(t, t.weight)),
      limits: { onFull: tlsCfg.onFull, onQueueFull: tlsCfg.onQueueFull, onQueueTimeout: tlsCfg.onQueueTimeout },
      mode: tlsCfg.mode === 'tls-to-target' ? 'tls-to-target' : 'tcp',
      proxyProtocol: tlsCfg.proxyProtocol,
      targetTls: tlsCfg.mode === 'tls-to-target' ? { ca: tlsCfg.targetCa, rejectUnauthorized: tlsCfg.targetVerify } : undefined,
      classify: tlsCfg.classify ? { sniff: tlsCfg.classify.sniff, ports: tlsCfg.classify.ports, sniffTimeoutMs: tlsCfg.classify.sniffTimeout * 1000 } : undefined,
      extraListen: tlsCfg.classify?.ports.map((p) => ({ host: s.vip, port: p })),
      pools: Object.fromEntries(Object.entries(tlsCfg.pools).map(([k, v]) => [k, v.map((t) => tlsTarget(t, t.drain ? 0 : t.weight))])),
      sniPools: tlsCfg.sniPools,
      upstreamPool: tlsCfg.upstreamPool ? {
        size: tlsCfg.upstreamPool.size,
        waitTimeoutMs: tlsCfg.upstreamPool.waitTimeout * 1000,
        order: tlsCfg.upstreamPool.order,
        priorities: tlsCfg.upstreamPool.priorities,
        idleTimeoutMs: tlsCfg.upstreamPool.idleTimeout * 1000,
        quietMs: tlsCfg.upstreamPool.quiet * 1000,
      } : undefined,
      ticketKeys: tlsCfg.ticketKeys,
      handshakeTimeoutMs: tlsCfg.handshakeTimeout * 1000,
      connectTimeoutMs: tlsCfg.connectTimeout * 1000,
      idleTimeoutMs: tlsCfg.idleTimeout * 1000,
      seed: this.cfg.seed,
    };
  }

  private tlsTargets(s: LbServiceConfig, checker: HealthChecker | null): TlsTargetConfig[] {
    const w = checker?.effectiveWeights();
    return s.targets.map((t, i) => tlsTarget(t, t.drain ? 0 : (w?.get(i) ?? t.weight)));
  }

  /** Packet-path services from the configuration and the current weights. */
  private distServices(): { services: DistService[]; missingMac: number } {
    const out: DistService[] = [];
    let missingMac = 0;
    for (const rt of this.services) {
      const s = rt.cfg;
      const proto = s.proto === 'udp' ? 17 : 6;
      if (s.tls) {
        // The terminator listens on these: the host's stack gets their packets.
        for (const p of [s.port, ...(s.tls.classify?.ports ?? [])]) out.push({ vip: s.vip, port: p, proto, mode: 'local', targets: [] });
        continue;
      }
      const w = rt.checker?.effectiveWeights();
      const distTarget = (t: LbServiceConfig['targets'][number], i: number, weight: number): DistTarget => {
        let macAddr = t.mac;
        if (macAddr === undefined && s.mode !== 'nat' && this.env.resolveMac) macAddr = this.env.resolveMac(t.address);
        if (macAddr === undefined && s.mode === 'dsr-l2') {
          // Not in the neighbour table yet: no new flows until it is (a retry timer rebuilds).
          missingMac++;
          weight = 0;
          macAddr = '00:00:00:00:00:00';
        }
        // Per-target limits (TCP; config.ts refuses a maxconn on UDP): src/lb/distributor.ts "Limits".
        return { id: i, address: t.address, port: t.port, weight, mac: macAddr, maxconn: t.maxconn, maxqueue: t.maxqueue, queueTimeoutMs: t.queueTimeout * 1000 };
      };
      // The distributor's id is the endpoint's ordinal, not the list index: see endpointOrdinal.
      const targets: DistTarget[] = s.targets.map((t, i, all) => distTarget(t, endpointOrdinal(all, i), t.drain ? 0 : (w?.get(i) ?? t.weight)));
      // Backups are not health-checked (as the TLS terminator's): drain or weight 0 leaves one out.
      const backupTargets = s.backupTargets?.map((t, i, all) => distTarget(t, endpointOrdinal(all, i), t.drain ? 0 : t.weight));
      out.push({ vip: s.vip, port: s.port, proto, mode: s.mode, targets, gue: s.gue, limits: s.limits, backupTargets });
    }
    return { services: out, missingMac };
  }

  /** Builds the packet-path tables and the terminators' target lists, and swaps them in. Throws on a bad list. */
  rebuild(): void {
    const { services, missingMac } = this.distServices();
    this.dist.configure(services);
    for (const rt of this.services) if (rt.terminator) rt.terminator.setTargets(this.tlsTargets(rt.cfg, rt.checker));
    this.rebuilds++;
    if (missingMac > 0 && this.running && this.macTimer === null) {
      this.macTimer = setTimeout(() => {
        this.macTimer = null;
        this.rebuildSafe('mac');
      }, MAC_RETRY_MS);
    }
  }

  private rebuildSafe(why: string): void {
    try {
      this.rebuild();
    } catch (err) {
      this.log.error('lb tables not rebuilt; the old ones stay', { why, error: (err as Error).message });
    }
  }

  async start(): Promise<void> {
    this.running = true;
    for (const rt of this.services) {
      if (rt.terminator) await rt.terminator.start();
      rt.checker?.start();
    }
    this.rebuildSafe('start');
    this.log.info('lb started', { services: this.services.map((rt) => `${rt.cfg.name} ${rt.cfg.proto}/${rt.cfg.vip}:${rt.cfg.port} ${rt.cfg.tls ? 'tls' : rt.cfg.mode} x${rt.cfg.targets.length}`) });
  }

  /**
   * SIGHUP: the new services replace the old ones. Terminators of services
   * that keep their VIP:port are kept (their listening socket and the
   * connections on it live on) and get the new targets.
   */
  async reload(cfg: LbConfig): Promise<void> {
    const old = this.services;
    const kept = new Set<TlsTerminator>();
    const next: ServiceRuntime[] = cfg.services.map((s) => {
      const same = s.tls ? old.find((rt) => rt.terminator && rt.cfg.vip === s.vip && rt.cfg.port === s.port) : undefined;
      if (!same) return this.makeRuntime(s);
      // Keep the listening terminator; it gets the new targets in rebuild().
      const rt = this.makeRuntime({ ...s, tls: undefined });
      rt.cfg = s;
      rt.terminator = same.terminator;
      kept.add(same.terminator!);
      return rt;
    });
    const prevCfg = this.cfg;
    this.cfg = cfg;
    this.services = next;
    try {
      this.rebuild();
    } catch (err) {
      this.services = old;
      this.cfg = prevCfg;
      for (const rt of next) rt.checker?.stop();
      throw err;
    }
    for (const rt of old) {
      rt.checker?.stop();
      if (rt.terminator && !kept.has(rt.terminator)) await rt.terminator.stop();
    }
    for (const rt of next) {
      if (rt.terminator && !kept.has(rt.terminator)) await rt.terminator.start();
      rt.checker?.start();
    }
    this.log.info('lb reloaded', { services: next.length });
  }

  /** Admin API: services, targets with health, weights and the flows assigned. */
  status(): unknown {
    const perSlot = this.flowsPerSlot();
    return this.services.map((rt) => {
      const s = rt.cfg;
      const st: (TargetStatus | null)[] = rt.checker ? rt.checker.statuses() : s.targets.map(() => null);
      // Load: TLS services, connections open and queued per target (the terminator's limits, default
      // pool: primaries first); packet-path services, the live flows the distributor sent to each.
      const q = rt.terminator ? rt.terminator.poolQueues('default') : null;
      const load = (t: LbServiceConfig['targets'][number], i: number) => q !== null
        ? { active: q.activeCount(i), queued: q.queueLength(i), maxconn: q.maxconnOf(i) }
        : { flows: this.flowsOf(perSlot, s, t), ...this.limitLoadOf(s, t) };
      return {
        name: s.name,
        vip: s.vip,
        port: s.port,
        proto: s.proto,
        mode: s.tls ? `tls/${s.tls.mode}` : s.mode,
        health: s.health.type,
        targets: s.targets.map((t, i) => ({
          address: t.address,
          port: t.port,
          weight: t.weight,
          drain: t.drain,
          state: st[i]?.state ?? 'unchecked',
          effectiveWeight: st[i]?.effectiveWeight ?? (t.drain ? 0 : t.weight),
          lastError: st[i]?.lastError ?? null,
          checks: st[i]?.checks ?? 0,
          ...load(t, i),
        })),
        tls: rt.terminator ? { ...rt.terminator.counters, queue: { ...rt.terminator.queueCounters } } : undefined,
        /** TLS services: every pool of targets (default, the SNI pools), backups after the primaries, with their queues. */
        pools: rt.terminator ? rt.terminator.poolNames().map((name) => {
          const pq = rt.terminator!.poolQueues(name);
          return { name, targets: Array.from({ length: pq.size }, (_, i) => ({ ...rt.terminator!.target(i, name), active: pq.activeCount(i), queued: pq.queueLength(i), maxconn: pq.maxconnOf(i) })) };
        }) : undefined,
      };
    });
  }

  /**
   * Live flows per distributor target slot: forward entries of live flows
   * whose tuple still goes to that slot's VIP:port (a flow id reused by
   * another flow keeps the old memory until it is overwritten). Control
   * plane, one pass over the flow table per admin request.
   */
  private flowsPerSlot(): Int32Array {
    const d = this.dist, f = d.flows;
    const counts = new Int32Array(d.targetCount);
    for (let id = 0; id < f.capacity; id++) {
      const t = d.targetOfFlow(id);
      if (t < 0 || t >= counts.length || !f.isLive(id)) continue;
      const fi = f.info(id);
      if (fi.server !== formatIpv4(d.tVip[t]) || fi.serverPort !== d.tVport[t]) continue;
      counts[t]++;
    }
    return counts;
  }

  /** The live flows of one configured target (its slot in the distributor), or 0. */
  private flowsOf(perSlot: Int32Array, s: LbServiceConfig, t: LbServiceConfig['targets'][number]): number {
    const d = this.dist, proto = s.proto === 'udp' ? 17 : 6;
    const vip = parseIpv4(s.vip) | 0, addr = parseIpv4(t.address) | 0;
    for (let k = 0; k < perSlot.length; k++) {
      if ((d.tVip[k] | 0) === vip && d.tVport[k] === s.port && (d.tAddr[k] | 0) === addr && d.tPort[k] === t.port && d.tProto[k] === proto) return perSlot[k];
    }
    return 0;
  }

  /** Packet-path limits: connections counted, SYNs held and maxconn of the target's newest slot. */
  private limitLoadOf(s: LbServiceConfig, t: LbServiceConfig['targets'][number]): { active: number; queued: number; maxconn: number } {
    const d = this.dist, proto = s.proto === 'udp' ? 17 : 6;
    const vip = parseIpv4(s.vip) | 0, addr = parseIpv4(t.address) | 0;
    for (let k = d.targetCount - 1; k >= 0; k--) {
      if ((d.tVip[k] | 0) === vip && d.tVport[k] === s.port && (d.tAddr[k] | 0) === addr && d.tPort[k] === t.port && d.tProto[k] === proto) {
        const l = d.targetLoad(k);
        return { active: l.conns, queued: l.queued, maxconn: l.maxconn };
      }
    }
    return { active: 0, queued: 0, maxconn: t.maxconn };
  }

  counterValues(): Record<string, number> {
    const o: Record<string, number> = { ...this.dist.counters.toObject(), lb_rebuilds: this.rebuilds, lb_health_transitions: this.transitions };
    for (const rt of this.services) {
      if (!rt.terminator) continue;
      for (const [k, v] of Object.entries(rt.terminator.counters as unknown as Record<string, unknown>)) {
        if (typeof v === 'number') o[`lb_tls_${rt.cfg.name}_${k}`] = v;
      }
      for (const [k, v] of Object.entries(rt.terminator.queueCounters as unknown as Record<string, unknown>)) {
        if (typeof v === 'number') o[`lb_queue_${rt.cfg.name}_${k}`] = v;
      }
    }
    return o;
  }

  async stop(): Promise<void> {
    this.running = false;
    if (this.macTimer) clearTimeout(this.macTimer);
    this.macTimer = null;
    for (const rt of this.services) {
      rt.checker?.stop();
      if (rt.terminator) await rt.terminator.stop();
    }
  }
}

/**
 * The distributor's id of list[i]: how many earlier entries name the same
 * address:port (0 for the first). Target slots, the NAT reply index and the
 * Maglev permutations are keyed by it, so a target keeps its slot (and the
 * replies of new flows find it) when others are added, removed or reordered
 * around it on a reload. With the list index as id, removing t1 from
 * [t1, t2] moved t2 to a new slot while the reply index still named its old
 * one, and every new connection to t2 lost its replies.
 */
function endpointOrdinal(list: readonly { address: string; port: number }[], i: number): number {
  let n = 0;
  for (let k = 0; k < i; k++) if (list[k].address === list[i].address && list[k].port === list[i].port) n++;
  return n;
}

function tlsTarget(t: LbServiceConfig['targets'][number], weight: number): TlsTargetConfig {
  return { host: t.address, port: t.port, weight, maxconn: t.maxconn, maxqueue: t.maxqueue, queueTimeoutMs: t.queueTimeout * 1000 };
}
