// TLS termination for the workload distributor's secure flows (DESIGN.md,
// lb/tls). Control plane / socket code: one object per connection is fine
// here; the hot path never sees these sockets.
//
// Per accepted connection:
//   1. node:tls completes the handshake; the certificate is chosen by the
//      client's server_name (RFC 6066 §3) through SNICallback, falling back to
//      the default certificate; ALPN (RFC 7301 §3.2) is negotiated against our
//      list (http/1.1 only by default: we forward bytes, we do not speak h2).
//   2. A target is picked with Maglev over flowHash4(client address, client
//      port, listener address, listener port, TCP): the same client 4-tuple
//      reaches the same target on every node built from the same target list
//      (Maglev paper §3.4).
//   3. We connect to the target and send, before any client byte, a PROXY
//      protocol v2 header (haproxy doc/proxy-protocol.txt 2.2) carrying the
//      client's real address and port, AUTHORITY = the SNI (2.2.2), ALPN =
//      the negotiated protocol (2.2.1) and the SSL TLV (2.2.5: client bits,
//      verify result, version, cipher, client CN) so the target knows the
//      flow was secure and how.
//   2b. Per-target limits (lb/queue.ts, HAProxy's maxconn / maxqueue /
//      timeout queue / redispatch / backup): a target at maxconn makes the
//      flow wait in the target's FIFO queue (or be redispatched, sent to a
//      backup target, or rejected, as configured); a full queue and a queue
//      timeout take their own configured action. A slot is held from
//      admission until the connection to the target closes, and the queue's
//      head is connected as soon as one frees. The decision is taken after
//      the handshake (the PROXY header needs its results), so 'reject' is a
//      TCP RST on the accepted connection (resetAndDestroy on the raw TCP
//      socket under the TLS one: no close_notify, the client sees
//      ECONNRESET), not a refusal before the handshake.
//   4. Bytes are piped both ways with backpressure (stream.pipe pauses the
//      reader while the writer's buffer is over its high-water mark);
//      a FIN on one side is passed on as a FIN (half-close), an error or a
//      timeout destroys both sides.
//
// Mode 'tls-to-target' re-encrypts towards the target with tls.connect; the
// PROXY v2 header is then optional and, when enabled, is sent in clear on the
// TCP connection before the target's TLS handshake (what haproxy's
// `server ... ssl send-proxy-v2-ssl` does and what nginx's
// `listen ... ssl proxy_protocol` expects).

import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import {
  encode, encodingLength, parseIp4, parseIp6,
  PP2_CMD_PROXY, AF_INET, AF_INET6, STREAM, PP2_CLIENT_SSL, PP2_CLIENT_CERT_CONN, PP2_CLIENT_CERT_SESS,
  type ProxyV2Header, type ProxyV2Ssl, type ProxyV2Tlvs,
} from '../../wire/proxy-v2.js';
import { MaglevTable, NO_BACKEND, flowHash4, flowHash6, type MaglevBackend } from '../maglev.js';
import { Admission, QueueAction, QueueCounters, TargetQueues, parseQueueAction, type QueueActionName, type QueueClock } from '../queue.js';

// ------------------------------------------------------------- config

/** A PEM string (it contains "-----BEGIN") or a path to a PEM file. */
export type PemSource = string;

export interface TlsCertificateConfig {
  /** Server names this certificate answers for (exact, or "*.example.com" for one label). Empty for the default only. */
  names?: string[];
  cert: PemSource;
  key: PemSource;
  passphrase?: string;
}

export interface TlsTargetConfig {
  host: string;
  port: number;
  /** Relative share of flows (Maglev weight); 0 drains the target. Default 1. */
  weight?: number;
  /** Concurrent connections to this target; 0 (default) = unlimited (HAProxy `maxconn`). */
  maxconn?: number;
  /** Connections that may wait for a slot; 0 = no queue (unlike HAProxy, where 0 is unlimited). Default 1024. */
  maxqueue?: number;
  /** Longest wait in the queue (HAProxy `timeout queue`); 0 = no limit. Default 5000. */
  queueTimeoutMs?: number;
}

/** Actions on the limit events (lb/queue.ts). */
export interface TlsLimitsConfig {
  /** Target at maxconn. Default 'queue'. */
  onFull?: QueueActionName;
  /** Target's queue at maxqueue. Default 'redispatch' (HAProxy maxqueue). */
  onQueueFull?: Exclude<QueueActionName, 'queue'>;
  /** Waited queueTimeoutMs in the queue. Default 'reject' (HAProxy: 503). */
  onQueueTimeout?: Exclude<QueueActionName, 'queue'>;
}

export type TlsTerminatorMode = 'tcp' | 'tls-to-target';

export interface TlsTerminatorConfig {
  listen: { host: string; port: number };
  /** At least one; the one marked default (or the first) answers clients without a matching SNI. */
  certificates: TlsCertificateConfig[];
  /** Index into certificates of the default certificate. Default 0. */
  defaultCertificate?: number;
  /** ALPN protocols we accept, in preference order (RFC 7301 §3.2: the server chooses). Default ['http/1.1']. */
  alpn?: string[];
  /** Ask clients for a certificate (never required: the verify result goes to the target in the SSL TLV). */
  requestClientCert?: boolean;
  /** CA bundle for verifying client certificates. */
  clientCa?: PemSource;
  targets: TlsTargetConfig[];
  /** Backup pool for the 'backup' action: the first with a free slot is used (HAProxy backup servers without allbackups). Not in the Maglev table. */
  backupTargets?: TlsTargetConfig[];
  /** What happens when a target is full, its queue is full, or a queued flow times out. */
  limits?: TlsLimitsConfig;
  /** Clock of the queue timers (tests). */
  queueClock?: QueueClock;
  /** 'tcp' (default): plaintext to the target after a PROXY v2 header. 'tls-to-target': re-encrypt. */
  mode?: TlsTerminatorMode;
  /** Send the PROXY v2 header. Default true in 'tcp' mode, false in 'tls-to-target'. */
  proxyProtocol?: boolean;
  /** 'tls-to-target' only: how to verify the target. */
  targetTls?: {
    ca?: PemSource;
    /** SNI sent to the target; default: the client's SNI. */
    servername?: string;
    /** Default true. */
    rejectUnauthorized?: boolean;
    alpn?: string[];
  };
  /** Default 10 s: a client that does not finish its handshake in time is dropped and counted. */
  handshakeTimeoutMs?: number;
  /** Default 5 s. */
  connectTimeoutMs?: number;
  /** Default 300 s of no traffic in either direction closes both sides. */
  idleTimeoutMs?: number;
  /** Maglev flow-hash seed (the same on every node of the service). */
  seed?: number;
}

// ------------------------------------------------------------- counters

/** Fixed shape, every field a number (STYLE.md 4, 8). */
export class TlsTerminatorCounters {
  /** TCP connections accepted by the listener. */
  connections = 0;
  /** Completed client handshakes. */
  handshakes = 0;
  /** Client handshakes that failed or timed out (tlsClientError). */
  handshakeFailures = 0;
  /** Connections currently open (client side). */
  active = 0;
  /** Target connections established (TCP, and TLS in tls-to-target mode). */
  targetConnects = 0;
  /** Target connections refused, reset, timed out, or (tls-to-target) whose TLS handshake failed. */
  targetConnectFailures = 0;
  /** Flows that found no target (every target drained). */
  noTarget = 0;
  /** Plaintext bytes from clients to targets (PROXY header excluded). */
  bytesToTargets = 0;
  /** Plaintext bytes from targets to clients. */
  bytesFromTargets = 0;
  /** PROXY v2 headers sent. */
  proxyHeaders = 0;
  /** Connections closed by the idle timeout. */
  idleTimeouts = 0;
  /** Errors on established flows (either side). */
  flowErrors = 0;
}

// ------------------------------------------------------------- helpers

function loadPem(what: string, src: PemSource): string {
  if (typeof src !== 'string' || src.length === 0) throw new TypeError(`tls terminator: ${what} must be a PEM string or a path to a PEM file`);
  if (src.includes('-----BEGIN')) return src;
  try {
    return fs.readFileSync(src, 'utf8');
  } catch (e) {
    throw new Error(`tls terminator: ${what}: cannot read ${src}: ${(e as Error).message}`);
  }
}

function checkPort(what: string, p: unknown, allowZero: boolean): number {
  if (!Number.isInteger(p) || (p as number) < (allowZero ? 0 : 1) || (p as number) > 65535) {
    throw new RangeError(`tls terminator: ${what} must be an integer ${allowZero ? 0 : 1}..65535, got ${String(p)}`);
  }
  return p as number;
}

/** "::ffff:a.b.c.d" (a v4 client on a dual-stack socket) as "a.b.c.d". */
function unmap(addr: string): string {
  return addr.startsWith('::ffff:') && addr.indexOf('.') > 0 ? addr.slice(7) : addr;
}

const v4Scratch = new Uint8Array(4);
/** Dotted quad as uint32, or -1 when it is not IPv4. */
function ip4(addr: string): number {
  if (!parseIp4(addr, 0, addr.length, v4Scratch, 0)) return -1;
  return ((v4Scratch[0] << 24) | (v4Scratch[1] << 16) | (v4Scratch[2] << 8) | v4Scratch[3]) >>> 0;
}

// OpenSSL X509_V_ERR_* codes for the error names node reports in
// socket.authorizationError, so the SSL TLV's verify field (2.2.5: "zero if
// the client presented a certificate and it was successfully verified")
// carries the number haproxy would send. Anything else is 1 (UNSPECIFIED).
const VERIFY_CODES: Record<string, number> = {
  UNABLE_TO_GET_ISSUER_CERT: 2,
  CERT_SIGNATURE_FAILURE: 7,
  CERT_NOT_YET_VALID: 9,
  CERT_HAS_EXPIRED: 10,
  DEPTH_ZERO_SELF_SIGNED_CERT: 18,
  SELF_SIGNED_CERT_IN_CHAIN: 19,
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 20,
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 21,
  CERT_REVOKED: 23,
  INVALID_CA: 24,
  CERT_UNTRUSTED: 27,
  CERT_REJECTED: 28,
};
const X509_V_ERR_UNSPECIFIED = 1;

function isIp(s: string): boolean {
  return net.isIP(s) !== 0;
}

// ------------------------------------------------------------- terminator

interface Target {
  host: string;
  port: number;
  weight: number;
  key: string;
  maxconn: number;
  maxqueue: number | undefined;
  queueTimeoutMs: number | undefined;
}

/** A flow waiting for (or being moved to) a target. */
interface Waiter {
  client: tls.TLSSocket;
  header: Buffer | null;
  /** Flow hash (for redispatch along the Maglev table), and whether it is valid. */
  hash: number;
  hashed: boolean;
  /** The Maglev target it was first given. */
  target: number;
  ticket: number;
  onClose: (() => void) | null;
  /** Client bytes read while queued (reading is what shows a client leaving), sent first once connected. */
  pending: Buffer[];
  pendingLen: number;
  onData: ((d: Buffer) => void) | null;
}

/** Client bytes buffered per queued flow; past this the client is paused (and a leave is seen only at the timeout). */
const QUEUED_BUFFER_MAX = 64 * 1024;

function toTarget(t: TlsTargetConfig, where: string): Target {
  if (!t || typeof t.host !== 'string' || t.host.length === 0) throw new TypeError(`tls terminator: ${where}.host must be a host name or address`);
  const port = checkPort(`${where}.port`, t.port, false);
  return { host: t.host, port, weight: t.weight ?? 1, key: `${t.host}:${port}`, maxconn: t.maxconn ?? 0, maxqueue: t.maxqueue, queueTimeoutMs: t.queueTimeoutMs };
}

export class TlsTerminator {
  readonly counters = new TlsTerminatorCounters();
  /** Limit and queue counters (kept across setTargets). */
  readonly queueCounters = new QueueCounters();
  /** Limits of the current target list: primaries 0..N-1, then the backups. Replaced by setTargets. */
  queues!: TargetQueues<Waiter>;
  readonly maglev: MaglevTable;
  readonly mode: TlsTerminatorMode;
  readonly proxyProtocol: boolean;
  private targets: Target[] = [];
  private backups: Target[] = [];
  /** Each limits object's targets (primaries then backups): flows of an older list still connect and release there. */
  private readonly generations = new WeakMap<TargetQueues<Waiter>, Target[]>();
  private readonly onFull: QueueAction;
  private readonly onQueueFull: QueueAction;
  private readonly onQueueTimeout: QueueAction;
  private readonly queueClock: QueueClock | undefined;
  private readonly server: tls.Server;
  /** Every socket we own (raw accepted, TLS, target), for stop(). */
  private readonly sockets = new Set<net.Socket>();
  private readonly contexts = new Map<string, tls.SecureContext>();
  private readonly wildcards = new Map<string, tls.SecureContext>();
  private readonly defaultContext: tls.SecureContext;
  private readonly connectTimeoutMs: number;
  private readonly idleTimeoutMs: number;
  private readonly listenHost: string;
  private readonly listenPort: number;
  private readonly targetTls: { ca: string | undefined; servername: string | undefined; rejectUnauthorized: boolean; alpn: string[] | undefined };
  private readonly hash6Scratch = new Uint8Array(32);
  private listening = false;

  constructor(cfg: TlsTerminatorConfig) {
    if (cfg === null || typeof cfg !== 'object') throw new TypeError('tls terminator: config must be an object');
    if (!cfg.listen || typeof cfg.listen.host !== 'string') throw new TypeError('tls terminator: listen.host must be an address string');
    this.listenHost = cfg.listen.host;
    this.listenPort = checkPort('listen.port', cfg.listen.port, true);
    this.mode = cfg.mode ?? 'tcp';
    if (this.mode !== 'tcp' && this.mode !== 'tls-to-target') throw new RangeError(`tls terminator: mode must be 'tcp' or 'tls-to-target', got ${String(cfg.mode)}`);
    this.proxyProtocol = cfg.proxyProtocol ?? this.mode === 'tcp';
    this.connectTimeoutMs = cfg.connectTimeoutMs ?? 5000;
    this.idleTimeoutMs = cfg.idleTimeoutMs ?? 300_000;
    const tt = cfg.targetTls ?? {};
    this.targetTls = {
      ca: tt.ca !== undefined ? loadPem('targetTls.ca', tt.ca) : undefined,
      servername: tt.servername,
      rejectUnauthorized: tt.rejectUnauthorized ?? true,
      alpn: tt.alpn,
    };

    if (!Array.isArray(cfg.certificates) || cfg.certificates.length === 0) throw new TypeError('tls terminator: certificates must list at least one { cert, key }');
    const clientCa = cfg.clientCa !== undefined ? loadPem('clientCa', cfg.clientCa) : undefined;
    const ctxs = cfg.certificates.map((c, i) => {
      const where = `certificates[${i}]`;
      try {
        return tls.createSecureContext({ cert: loadPem(`${where}.cert`, c.cert), key: loadPem(`${where}.key`, c.key), passphrase: c.passphrase, ca: clientCa });
      } catch (e) {
        throw new Error(`tls terminator: ${where}: ${(e as Error).message}`);
      }
    });
    cfg.certificates.forEach((c, i) => {
      for (const n of c.names ?? []) {
        const name = n.toLowerCase();
        if (name.startsWith('*.')) this.wildcards.set(name.slice(2), ctxs[i]);
        else this.contexts.set(name, ctxs[i]);
      }
    });
    const di = cfg.defaultCertificate ?? 0;
    if (!Number.isInteger(di) || di < 0 || di >= ctxs.length) throw new RangeError(`tls terminator: defaultCertificate must index certificates (0..${ctxs.length - 1}), got ${di}`);
    this.defaultContext = ctxs[di];
    const def = cfg.certificates[di];

    const lim = cfg.limits ?? {};
    this.onFull = parseQueueAction('limits.onFull', lim.onFull ?? 'queue', true);
    this.onQueueFull = parseQueueAction('limits.onQueueFull', lim.onQueueFull ?? 'redispatch', false);
    this.onQueueTimeout = parseQueueAction('limits.onQueueTimeout', lim.onQueueTimeout ?? 'reject', false);
    this.queueClock = cfg.queueClock;
    if (cfg.backupTargets !== undefined && !Array.isArray(cfg.backupTargets)) throw new TypeError('tls terminator: backupTargets must be an array of { host, port }');
    this.backups = (cfg.backupTargets ?? []).map((t, i) => toTarget(t, `backupTargets[${i}]`));
    this.maglev = new MaglevTable({ seed: cfg.seed });
    this.setTargets(cfg.targets);

    this.server = tls.createServer({
      cert: loadPem(`certificates[${di}].cert`, def.cert),
      key: loadPem(`certificates[${di}].key`, def.key),
      passphrase: def.passphrase,
      ca: clientCa,
      // RFC 6066 §3: the certificate follows the client's server_name.
      SNICallback: (servername, cb) => cb(null, this.contextFor(servername)),
      ALPNProtocols: cfg.alpn ?? ['http/1.1'],
      requestCert: cfg.requestClientCert ?? false,
      // Never refuse on the certificate: the target decides, from the verify
      // field of the SSL TLV (2.2.5).
      rejectUnauthorized: false,
      handshakeTimeout: cfg.handshakeTimeoutMs ?? 10_000,
      allowHalfOpen: true,
      pauseOnConnect: false,
    });
    this.server.on('connection', (raw: net.Socket) => {
      this.counters.connections++;
      this.track(raw);
    });
    this.server.on('tlsClientError', (_err, s) => {
      this.counters.handshakeFailures++;
      s.destroy();
    });
    this.server.on('secureConnection', (s) => this.onSecure(s));
  }

  /**
   * Rebuilds the Maglev table and the limits for a new target list and swaps
   * them in. Existing flows keep their target and their slot in the old
   * limits (released there when they close), and flows queued under the old
   * list are served by it; new flows count against the new limits from zero.
   */
  setTargets(targets: TlsTargetConfig[]): void {
    if (!Array.isArray(targets) || targets.length === 0) throw new TypeError('tls terminator: targets must list at least one { host, port }');
    const next: Target[] = targets.map((t, i) => toTarget(t, `targets[${i}]`));
    const all = next.concat(this.backups);
    const queues = new TargetQueues<Waiter>({
      limits: all.map((t) => ({ maxconn: t.maxconn, maxqueue: t.maxqueue, queueTimeoutMs: t.queueTimeoutMs })),
      onFull: this.onFull,
      onQueueFull: this.onQueueFull,
      onQueueTimeout: this.onQueueTimeout,
      counters: this.queueCounters,
      clock: this.queueClock,
      onDequeue: (id, w) => this.onDequeued(queues, id, w),
      onTimeout: (_id, w, action) => this.onQueueTimedOut(queues, w, action),
    }); // throws on bad limits, before anything is swapped
    const backends: MaglevBackend[] = next.map((t, id) => ({ id, weight: t.weight, key: t.key }));
    this.maglev.build(backends); // throws (and keeps the old table) on a bad list
    this.targets = next;
    this.queues = queues;
    this.generations.set(queues, all);
  }

  /** Starts listening; resolves with the bound address (port 0 picks a free one). */
  start(): Promise<net.AddressInfo> {
    return new Promise((resolve, reject) => {
      const onErr = (e: Error) => reject(new Error(`tls terminator: cannot listen on ${this.listenHost}:${this.listenPort}: ${e.message}`));
      this.server.once('error', onErr);
      this.server.listen(this.listenPort, this.listenHost, () => {
        this.server.off('error', onErr);
        this.listening = true;
        resolve(this.server.address() as net.AddressInfo);
      });
    });
  }

  address(): net.AddressInfo | null {
    return this.listening ? (this.server.address() as net.AddressInfo) : null;
  }

  /**
   * Target index for a client 4-tuple as seen by the listener, or -1 (NO_BACKEND).
   * IPv4 (the usual case) hashes with flowHash4; anything else with flowHash6.
   */
  pickTarget(clientAddr: string, clientPort: number, localAddr: string, localPort: number): number {
    return this.flowHash(clientAddr, clientPort, localAddr, localPort) ? this.maglev.lookup(this.lastHash) : NO_BACKEND;
  }

  /** The configured target behind an index from pickTarget or redispatchTarget (backups follow the targets). */
  target(i: number): { host: string; port: number } {
    const t = i < this.targets.length ? this.targets[i] : this.backups[i - this.targets.length];
    return { host: t.host, port: t.port };
  }

  /**
   * Where the 'redispatch' action sends a flow whose Maglev target `from` is
   * full: the target of the next entries of the Maglev table after the
   * flow's own (hash mod M + 1, + 2, ...) that has a free slot, or -1 when no
   * other weighted target has one. Walking the table keeps the choice
   * deterministic per flow and weight-proportional across flows (each target
   * holds a share of entries proportional to its weight, spread by its
   * permutation, paper §3.4).
   */
  redispatchTarget(hash: number, from: number, q: TargetQueues<unknown> = this.queues as TargetQueues<unknown>): number {
    let any = false;
    for (let i = 0; i < this.targets.length; i++) {
      if (i !== from && this.targets[i].weight > 0 && i < q.size && q.hasCapacity(i)) { any = true; break; }
    }
    if (!any) return -1; // spares an M-entry walk when every target is full
    const tab = this.maglev.table, m = this.maglev.size;
    let slot = ((hash >>> 0) % (m >>> 0)) | 0;
    for (let k = 1; k < m; k++) {
      if (++slot === m) slot = 0;
      const id = tab[slot];
      if (id !== from && id >= 0 && id < q.size && q.hasCapacity(id)) return id;
    }
    return -1;
  }

  /** Index of the first backup target with a free slot, or -1. */
  private backupTarget(q: TargetQueues<Waiter>): number {
    const n = q.size - this.backups.length;
    for (let b = 0; b < this.backups.length; b++) if (n + b < q.size && q.hasCapacity(n + b)) return n + b;
    return -1;
  }

  private lastHash = 0;
  /** Sets lastHash to the flow hash of a client 4-tuple; false when an address does not parse. */
  private flowHash(clientAddr: string, clientPort: number, localAddr: string, localPort: number): boolean {
    const c = unmap(clientAddr), l = unmap(localAddr);
    const c4 = ip4(c), l4 = ip4(l);
    if (c4 >= 0 && l4 >= 0) {
      this.lastHash = flowHash4(c4, l4, clientPort, localPort, 6, this.maglev.seed);
      return true;
    }
    const b = this.hash6Scratch;
    if (!parseIp6(clientAddr.includes(':') ? clientAddr : `::ffff:${clientAddr}`, b, 0) ||
        !parseIp6(localAddr.includes(':') ? localAddr : `::ffff:${localAddr}`, b, 16)) return false;
    this.lastHash = flowHash6(b, 0, clientPort, localPort, 6, this.maglev.seed);
    return true;
  }

  /** Closes the listener and every open socket; resolves when the listener is closed. */
  stop(): Promise<void> {
    this.queues.dispose(); // their clients are in this.sockets
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    if (!this.listening) return Promise.resolve();
    this.listening = false;
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  // ----------------------------------------------------------- internals

  private contextFor(servername: string): tls.SecureContext {
    const n = servername.toLowerCase();
    const exact = this.contexts.get(n);
    if (exact) return exact;
    const dot = n.indexOf('.');
    if (dot > 0) {
      const w = this.wildcards.get(n.slice(dot + 1));
      if (w) return w;
    }
    return this.defaultContext;
  }

  private track(s: net.Socket): void {
    this.sockets.add(s);
    s.once('close', () => this.sockets.delete(s));
  }

  /** The PROXY v2 header for an established client connection, in one Buffer. */
  proxyHeaderFor(s: tls.TLSSocket): Buffer {
    const src = unmap(s.remoteAddress ?? ''), dst = unmap(s.localAddress ?? '');
    const v4 = ip4(src) >= 0 && ip4(dst) >= 0;
    const ssl: ProxyV2Ssl = { client: PP2_CLIENT_SSL, verify: 0 };
    const peer = s.getPeerCertificate();
    const hasCert = peer !== null && typeof peer === 'object' && Object.keys(peer).length > 0;
    if (hasCert) {
      // 2.2.5: CERT_CONN = sent on this connection, CERT_SESS = sent at least
      // once in the TLS session (a resumed session carries the old one).
      ssl.client |= PP2_CLIENT_CERT_SESS;
      if (!s.isSessionReused()) ssl.client |= PP2_CLIENT_CERT_CONN;
      ssl.verify = s.authorized ? 0 : (VERIFY_CODES[String(s.authorizationError)] ?? X509_V_ERR_UNSPECIFIED);
      const cn = peer.subject?.CN;
      if (typeof cn === 'string') ssl.cn = cn;
    } else {
      ssl.verify = X509_V_ERR_UNSPECIFIED; // no certificate: "non-zero otherwise"
    }
    const proto = s.getProtocol();
    if (proto) ssl.version = proto;
    const cipher = s.getCipher();
    if (cipher && cipher.name) ssl.cipher = cipher.name;
    const tlvs: ProxyV2Tlvs = { ssl };
    if (typeof s.alpnProtocol === 'string' && s.alpnProtocol.length > 0) tlvs.alpn = s.alpnProtocol;
    const sni = (s as tls.TLSSocket & { servername?: string | false }).servername;
    if (typeof sni === 'string' && sni.length > 0) tlvs.authority = sni;
    const h: ProxyV2Header = {
      command: PP2_CMD_PROXY,
      family: v4 ? AF_INET : AF_INET6,
      transport: STREAM,
      src: v4 ? src : src.includes(':') ? src : `::ffff:${src}`,
      dst: v4 ? dst : dst.includes(':') ? dst : `::ffff:${dst}`,
      srcPort: s.remotePort ?? 0,
      dstPort: s.localPort ?? 0,
      tlvs,
    };
    const buf = Buffer.allocUnsafe(encodingLength(h));
    encode(h, buf, 0);
    return buf;
  }

  private onSecure(client: tls.TLSSocket): void {
    this.counters.handshakes++;
    this.counters.active++;
    this.track(client);
    client.once('close', () => { this.counters.active--; });
    // Hold client bytes until the target is ready; pipe() resumes.
    client.pause();

    const hashed = this.flowHash(client.remoteAddress ?? '', client.remotePort ?? 0, client.localAddress ?? '', client.localPort ?? 0);
    const hash = this.lastHash;
    const id = hashed ? this.maglev.lookup(hash) : NO_BACKEND;
    if (id === NO_BACKEND) {
      this.counters.noTarget++;
      client.destroy();
      return;
    }
    let header: Buffer | null = null;
    try {
      header = this.proxyProtocol ? this.proxyHeaderFor(client) : null;
    } catch {
      client.destroy(); // an unencodable header (cannot happen with socket-provided values)
      return;
    }
    const q = this.queues;
    const w: Waiter = { client, header, hash, hashed, target: id, ticket: -1, onClose: null, pending: [], pendingLen: 0, onData: null };
    const a = q.admit(id, w);
    if (a === Admission.Admitted) {
      this.connectTarget(q, id, w);
    } else if (a === Admission.Queued) {
      w.ticket = q.lastTicket;
      // Client gone while waiting: leave the queue (its slot was never taken).
      // A paused socket never reads its FIN, so a queued client is read into
      // w.pending; its FIN ('end') counts as leaving, as with HAProxy's
      // `option abortonclose` (a client that half-closes right after its
      // request is therefore dropped if it has to queue).
      w.onClose = () => {
        if (q.cancel(w.ticket, w)) this.unhook(w);
        client.destroy();
      };
      w.onData = (d: Buffer) => {
        w.pending.push(d);
        w.pendingLen += d.length;
        if (w.pendingLen >= QUEUED_BUFFER_MAX) client.pause();
      };
      client.once('end', w.onClose);
      client.once('close', w.onClose);
      client.on('data', w.onData);
      client.resume();
    } else {
      this.applyAction(q, a, w);
    }
  }

  /** A slot freed on `id` for a queued flow (the slot is already held). */
  private onDequeued(q: TargetQueues<Waiter>, id: number, w: Waiter): void {
    this.unhook(w);
    this.connectTarget(q, id, w);
  }

  private onQueueTimedOut(q: TargetQueues<Waiter>, w: Waiter, action: QueueAction): void {
    this.unhook(w);
    this.applyAction(q, action, w);
  }

  /** Leaves the queued state: stop reading (pipe() resumes later) and drop the queue's listeners. */
  private unhook(w: Waiter): void {
    w.client.pause();
    if (w.onClose) {
      w.client.off('end', w.onClose);
      w.client.off('close', w.onClose);
    }
    if (w.onData) w.client.off('data', w.onData);
    w.onClose = null;
    w.onData = null;
  }

  /** Applies 'redispatch', 'backup' or 'reject'; the first two fall back to reject when no target has a free slot. */
  private applyAction(q: TargetQueues<Waiter>, action: QueueAction, w: Waiter): void {
    const qc = this.queueCounters;
    if (action === QueueAction.Redispatch && w.hashed && q === this.queues) {
      const alt = this.redispatchTarget(w.hash, w.target, q as TargetQueues<unknown>);
      if (alt >= 0 && q.tryAcquire(alt)) {
        qc.redispatched++;
        this.connectTarget(q, alt, w);
        return;
      }
    } else if (action === QueueAction.Backup) {
      const b = this.backupTarget(q);
      if (b >= 0 && q.tryAcquire(b)) {
        qc.toBackup++;
        this.connectTarget(q, b, w);
        return;
      }
    }
    qc.rejected++;
    this.reset(w.client);
  }

  /**
   * Closes an accepted client with a TCP RST. resetAndDestroy needs the TCP
   * handle, which belongs to the raw socket the TLS socket wraps (node keeps
   * it as _parent on server-side sockets; on the TLS socket itself it throws
   * ERR_INVALID_HANDLE_TYPE). The TLS socket then closes by itself; it must
   * NOT be destroyed in the same tick: destroying the TLS wrap over the
   * just-reset TCP handle crashed node 20.20 with SIGSEGV. Without a TCP
   * handle, a plain destroy (a FIN).
   */
  private reset(client: tls.TLSSocket): void {
    const raw = (client as unknown as { _parent?: net.Socket | null })._parent;
    if (raw && typeof raw.resetAndDestroy === 'function' && !raw.destroyed) {
      try {
        raw.resetAndDestroy();
        return;
      } catch {
        // not a TCP handle: fall through to destroy
      }
    }
    client.destroy();
  }

  /** Opens the connection to target `id` for `client`; the slot held on `id` in `q` is released when it closes. */
  private connectTarget(q: TargetQueues<Waiter>, id: number, w: Waiter): void {
    const client = w.client, header = w.header;
    if (client.destroyed) {
      q.release(id); // the client left as its slot came: hand the slot on
      return;
    }
    const t = (this.generations.get(q) as Target[])[id];
    const raw = net.connect({ host: t.host, port: t.port, allowHalfOpen: true });
    this.track(raw);
    // The slot is the target connection's: freed when it closes, however (HAProxy counts server connections).
    raw.once('close', () => q.release(id));
    raw.setNoDelay(true);
    let connected = false;
    const connectTimer = setTimeout(() => {
      if (!connected) raw.destroy(new Error(`connect to ${t.key} timed out`));
    }, this.connectTimeoutMs);
    const fail = (): void => {
      if (connected) return;
      connected = true; // count once
      clearTimeout(connectTimer);
      this.counters.targetConnectFailures++;
      raw.destroy();
      client.destroy(); // the client sees the connection close, not a hang
    };
    raw.once('error', fail);
    // Client gone before the target answered: drop the target attempt.
    const earlyClose = (): void => { if (!connected) { connected = true; clearTimeout(connectTimer); raw.destroy(); } };
    client.once('close', earlyClose);

    raw.once('connect', () => {
      if (header) {
        raw.write(header);
        this.counters.proxyHeaders++;
      }
      if (this.mode === 'tcp') {
        connected = true;
        clearTimeout(connectTimer);
        raw.off('error', fail);
        client.off('close', earlyClose);
        this.counters.targetConnects++;
        this.flushPending(w, raw);
        this.splice(client, raw);
        return;
      }
      // tls-to-target: TLS over the same TCP connection, after the clear header.
      const sniOut = this.targetTls.servername ?? (typeof (client as { servername?: unknown }).servername === 'string' ? (client as unknown as { servername: string }).servername : undefined);
      const up = tls.connect({
        socket: raw,
        servername: sniOut !== undefined && !isIp(sniOut) ? sniOut : undefined,
        ca: this.targetTls.ca,
        rejectUnauthorized: this.targetTls.rejectUnauthorized,
        ALPNProtocols: this.targetTls.alpn,
      });
      this.track(up);
      up.once('error', fail);
      up.once('secureConnect', () => {
        connected = true;
        clearTimeout(connectTimer);
        raw.off('error', fail);
        up.off('error', fail);
        client.off('close', earlyClose);
        this.counters.targetConnects++;
        this.flushPending(w, up);
        this.splice(client, up);
      });
    });
  }

  /** Sends what a queued client sent while it waited, before piping the rest. */
  private flushPending(w: Waiter, up: net.Socket): void {
    for (const d of w.pending) up.write(d);
    this.counters.bytesToTargets += w.pendingLen;
    w.pending = [];
    w.pendingLen = 0;
  }

  /** Pipes both ways with backpressure, passes FINs on, and tears both down on error or idle timeout. */
  private splice(client: tls.TLSSocket, up: net.Socket): void {
    const c = this.counters;
    client.on('data', (d: Buffer) => { c.bytesToTargets += d.length; });
    up.on('data', (d: Buffer) => { c.bytesFromTargets += d.length; });
    // end: true passes a FIN (a TLS close_notify + FIN towards the client)
    // on when the other side has finished sending; allowHalfOpen keeps the
    // reverse direction open until it finishes too (RFC 9293 §3.6 half-close).
    client.pipe(up);
    up.pipe(client);
    let dead = false;
    const kill = (): void => {
      if (dead) return;
      dead = true;
      client.destroy();
      up.destroy();
    };
    const onError = (): void => { if (!dead) c.flowErrors++; kill(); };
    client.on('error', onError);
    up.on('error', onError);
    // One side fully closed: the other has been given its FIN by pipe();
    // whatever it still has to deliver was written before its end(). A side
    // that is closed while the other has not finished sending (reset, or
    // destroyed locally) leaves nothing to deliver to: tear down.
    client.once('close', () => { if (!up.writableEnded || up.readable) kill(); });
    up.once('close', () => { if (!client.writableEnded || client.readable) kill(); });
    if (this.idleTimeoutMs > 0) {
      const onIdle = (): void => { if (!dead) c.idleTimeouts++; kill(); };
      client.setTimeout(this.idleTimeoutMs, onIdle);
      up.setTimeout(this.idleTimeoutMs, onIdle);
    }
  }
}
