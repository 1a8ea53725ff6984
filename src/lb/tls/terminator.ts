// TLS termination for the workload distributor's secure flows (DESIGN.md,
// lb/tls). Control plane / socket code: one object per connection is fine
// here; the hot path never sees these sockets.
//
// Per accepted connection:
//   0. Classification (config `classify`, absent = every flow is TLS, as
//      before). A flow to a port listed in classify.ports is TLS. Otherwise,
//      with classify.sniff, the first bytes are read (bounded: at most
//      sniffMaxBytes and sniffTimeoutMs after the accept) and judged by
//      wire/tls.ts: a ClientHello (RFC 8446 §4.1.2; a prefix split across TCP
//      segments waits for the rest of its record, one continued in a second
//      TLS record is TLS too) goes to the TLS side with the bytes put back
//      (socket.unshift, then the TLS server's 'connection'); a first byte
//      that cannot start a TLS handshake record is clear traffic, forwarded
//      to a target in clear after a PROXY v2 header WITHOUT the SSL TLV (2.2.5
//      is how the target tells secure from clear); a TLS record that is not a
//      ClientHello or contradicts its own lengths is garbage (counted, reset).
//      A client that stays silent or trickles bytes is reset at the sniff
//      timeout (counted): the deadline runs from the accept, not from the
//      last byte, so a slowloris cannot extend it. Without sniff, flows to
//      the other ports are clear. Sniffing suits client-speaks-first
//      protocols only (HTTP, TLS): a server-speaks-first one (SMTP) would
//      time out.
//   1. node:tls completes the handshake; the certificate is chosen by the
//      client's server_name (RFC 6066 §3) through SNICallback, falling back to
//      the default certificate; ALPN (RFC 7301 §3.2) is negotiated against our
//      list (http/1.1 only by default: we forward bytes, we do not speak h2).
//      Client sessions resume (RFC 8446 §2.2 tickets, RFC 5077 for TLS 1.2);
//      `ticketKeys` shares the ticket keys between workers and nodes.
//   2. The pool of targets is chosen by the SNI from the ClientHello
//      (sniPools: exact name or "*.suffix" for one label, as for
//      certificates; the default pool `targets` otherwise; clear flows have
//      no SNI and use the default pool). Each pool has its own Maglev table;
//      a target is picked over flowHash4(client address, client port,
//      listener address, listener port, TCP): the same client 4-tuple
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
//      admission until the connection to the target closes (with the
//      upstream pool: until the flow gives its leased connection back), and
//      the queue's head is connected as soon as one frees. The decision is
//      taken after the handshake (the PROXY header needs its results), so
//      'reject' is a TCP RST on the accepted connection (resetAndDestroy on
//      the raw TCP socket under the TLS one: no close_notify, the client sees
//      ECONNRESET), not a refusal before the handshake. Each pool of targets
//      has its own limits; the backup targets are appended to every pool
//      (their limits are counted per pool).
//   4. Bytes are piped both ways with backpressure (stream.pipe pauses the
//      reader while the writer's buffer is over its high-water mark);
//      a FIN on one side is passed on as a FIN (half-close), an error or a
//      timeout destroys both sides.
//
// Mode 'tls-to-target' re-encrypts towards the target with tls.connect; the
// PROXY v2 header is then optional and, when enabled, is sent in clear on the
// TCP connection before the target's TLS handshake (what haproxy's
// `server ... ssl send-proxy-v2-ssl` does and what nginx's
// `listen ... ssl proxy_protocol` expects). Clear flows (classification)
// always go in clear, to the target's clearPort.
//
// Shared upstream TLS sessions (mode 'tls-to-target' with `upstreamPool`,
// lb/tls/upstream-pool.ts, one pool per target and upstream server name).
// What "shared" means here, honestly: a TLS connection to a target carries
// ONE client's byte stream at a time; we do not multiplex (HTTP/1.1 cannot,
// and we do not speak h2 upstream). Sharing is therefore
//   (a) sequential reuse: when a client's flow is over, its upstream
//       connection goes back to the pool (keep-alive reuse) and the next
//       client flow, queued or new, gets it with no TCP or TLS handshake;
//   (b) session resumption: new upstream connections resume the target's
//       last TLS session (ticket) from a session cache shared by every pool
//       of the process and movable between workers (exportSessions /
//       importSessions), so even a new connection skips the full handshake.
// We do not parse the application protocol, so "the flow is over and the
// connection is at a request boundary" is inferred: the client finished
// (FIN, or closed) AFTER the target had answered its last bytes, and the
// target then stayed quiet for quietMs (bytes still arriving are drained and
// restart the wait; bytes held back because the client reads slowly stop
// the clock until they are delivered). A client that half-closes right
// after its request still gets the whole answer, then our FIN (its FIN is
// not passed on: the connection outlives the flow). Anything else (the
// client reset or vanished with its last bytes unanswered, the target
// closed or failed, an idle timeout, h2 negotiated upstream) destroys the
// upstream connection instead. A target that answers later than quietMs
// after its last bytes could still write into a reused connection: the
// pool destroys an idle connection that receives bytes, but one already
// handed to the next client is not protected; pick quietMs above the
// targets' worst response gap, or do not enable the pool for protocols that
// are not strict request/response.
// Because one TCP connection carries several clients in turn, its PROXY
// header (sent once, before the TLS handshake) cannot name a client: pooled
// connections carry a LOCAL header (2.2: "the receiver must use the real
// connection endpoints"). A client that presented a certificate (its
// identity) gets a dedicated upstream connection: never pooled, no shared
// session, its own PROXY header with the SSL TLV and CN (we cannot present
// the client's certificate to the target: we do not hold its key). Requests
// waiting for a pooled connection are served FIFO, or by priority from the
// config (per client SNI or per pool of targets).

import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import {
  encode, encodingLength, parseIp4, parseIp6,
  PP2_CMD_PROXY, PP2_CMD_LOCAL, AF_INET, AF_INET6, AF_UNSPEC, STREAM, TRANSPORT_UNSPEC,
  PP2_CLIENT_SSL, PP2_CLIENT_CERT_CONN, PP2_CLIENT_CERT_SESS,
  type ProxyV2Header, type ProxyV2Ssl, type ProxyV2Tlvs,
} from '../../wire/proxy-v2.js';
import { classifyTls, TlsOut, TlsStatus, TLS_OUT_LEN } from '../../wire/tls.js';
import { MaglevTable, NO_BACKEND, flowHash4, flowHash6, type MaglevBackend } from '../maglev.js';
import { Admission, QueueAction, QueueCounters, TargetQueues, parseQueueAction, type QueueActionName, type QueueClock } from '../queue.js';
import {
  UpstreamPool, UpstreamPoolCounters, UpstreamPoolError, sharedSessions,
  type SessionCache, type UpstreamLease, type UpstreamQueueOrder, type UpstreamRequest, type UpstreamWait,
} from './upstream-pool.js';

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
  /** Port for clear flows (classification) on this target. Default: port. */
  clearPort?: number;
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

/** Secure-flow classification on the listeners. */
export interface TlsClassifyConfig {
  /** Local ports whose flows are always TLS (no sniffing). */
  ports?: number[];
  /** Flows to the other ports: read the first bytes and decide (true), or treat them as clear (false, default). */
  sniff?: boolean;
  /** Longest time from the accept to a decision. Default 3000. */
  sniffTimeoutMs?: number;
  /** Most bytes read before a decision (a ClientHello record is at most 5 + 2^14). Default 16389. */
  sniffMaxBytes?: number;
}

/** Shared upstream TLS connections and sessions (mode 'tls-to-target' only). */
export interface TlsUpstreamPoolConfig {
  /** Pooled connections per target (and upstream server name), open or opening. */
  size: number;
  /** Longest wait for a pooled connection; 0 = no limit. Default 5000. */
  waitTimeoutMs?: number;
  /** Requests that may wait per target; 0 = none. Default 1024. */
  maxWaiters?: number;
  /** Service order of waiting requests. Default 'fifo'. */
  order?: UpstreamQueueOrder;
  /**
   * Priorities (higher first) with order 'priority', keyed by the client's SNI
   * (exact, or "*.suffix" for one label) or by the name of the pool of
   * targets ('default' for `targets`); an exact SNI wins over a wildcard,
   * which wins over a pool name. Unlisted: 0.
   */
  priorities?: Record<string, number>;
  /** An idle pooled connection is closed after this long. Default 60000; 0 = never. */
  idleTimeoutMs?: number;
  /** Quiet time from the target after the client finished before its connection is given back for reuse. Default 100. */
  quietMs?: number;
  /** How long a new connection waits for a TLS 1.3 ticket in flight (upstream-pool.ts). Default 250. */
  sessionWaitMs?: number;
  /** Upstream pools at most (one per target and server name); past it flows connect on their own. Default 256. */
  maxPools?: number;
  /** Session cache. Default the process-wide one (upstream-pool.ts sharedSessions, exportSessions/importSessions). */
  sessions?: SessionCache;
}

export interface TlsTerminatorConfig {
  listen: { host: string; port: number };
  /** More listeners, same behaviour (classify.ports tells TLS ports from the others). */
  extraListen?: { host: string; port: number }[];
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
  /** Session ticket keys (48 bytes, or 96 hex characters), the same on every worker and node so each resumes the others' tickets. Default: random per process. */
  ticketKeys?: Buffer | string;
  /** The default pool of targets ('default'). */
  targets: TlsTargetConfig[];
  /** More pools of targets by name (each its own Maglev table and limits), chosen through sniPools. */
  pools?: Record<string, TlsTargetConfig[]>;
  /** Client SNI (exact, or "*.suffix" for one label) → pool name; other flows use the default pool. */
  sniPools?: Record<string, string>;
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
  /** Secure-flow classification. Absent: every flow is TLS. */
  classify?: TlsClassifyConfig;
  /** 'tls-to-target' only: how to verify the target. */
  targetTls?: {
    ca?: PemSource;
    /** SNI sent to the target; default: the client's SNI. */
    servername?: string;
    /** Default true. */
    rejectUnauthorized?: boolean;
    alpn?: string[];
  };
  /** 'tls-to-target' only: share upstream connections and sessions. Absent: one connection per client flow. */
  upstreamPool?: TlsUpstreamPoolConfig;
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
  /** TCP connections accepted by the listeners. */
  connections = 0;
  /** Completed client handshakes. */
  handshakes = 0;
  /** Client handshakes that failed or timed out (tlsClientError). */
  handshakeFailures = 0;
  /** Connections currently open (client side, secure and clear flows). */
  active = 0;
  /** Target connections established (TCP, and TLS in tls-to-target mode; a pooled reuse is not one). */
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
  /** Connections handed to the TLS side (a classify port, a sniffed ClientHello, or no classification configured). */
  classifiedTls = 0;
  /** Connections forwarded as clear traffic (PROXY header without the SSL TLV). */
  classifiedClear = 0;
  /** Sniffed connections with no decision within sniffTimeoutMs (silent or trickling clients): reset. */
  sniffTimeout = 0;
  /** Sniffed connections that were neither TLS nor clear: a TLS record that is not a ClientHello or contradicts its lengths, or closed before a decision: reset. */
  sniffGarbage = 0;
  /** Client handshakes that resumed a session (ticket). */
  clientResumptions = 0;
  /** Upstream pool: new upstream connections with a full handshake. */
  upstreamHandshakes = 0;
  /** Upstream pool: new upstream connections that resumed a cached session. */
  upstreamResumptions = 0;
  /** Upstream pool: flows served on an already open pooled connection. */
  upstreamReuses = 0;
  /** Upstream pool: flows that waited for a pooled connection. */
  upstreamWaits = 0;
  /** Upstream pool: flows that waited waitTimeoutMs without a connection (reset). */
  upstreamWaitTimeouts = 0;
  /** Upstream pool: flows refused because maxWaiters were already waiting (reset). */
  upstreamQueueFull = 0;
  /** Upstream pool: dedicated connections (clients with a certificate). */
  upstreamDedicated = 0;
  /** Upstream pool: connections given back for reuse when their flow ended. */
  upstreamReleased = 0;
  /** Upstream pool: connections destroyed when their flow ended (not at a boundary, target closed, error, h2). */
  upstreamDiscarded = 0;
  /** Upstream pool: flows that connected on their own because maxPools pools already exist. */
  upstreamUnpooled = 0;
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
  clearPort: number;
  weight: number;
  key: string;
  maxconn: number;
  maxqueue: number | undefined;
  queueTimeoutMs: number | undefined;
}

/** A named pool of targets: its own Maglev table and limits (primaries 0..N-1, then the backups). */
class TargetPool {
  targets: Target[] = [];
  queues!: TargetQueues<Waiter>;
  readonly maglev: MaglevTable;
  constructor(readonly name: string, seed: number | undefined) {
    this.maglev = new MaglevTable({ seed });
  }
}

/** A flow waiting for (or being moved to) a target. */
interface Waiter {
  /** The client: a TLSSocket for a secure flow, the accepted TCP socket for a clear one. */
  client: net.Socket;
  secure: boolean;
  header: Buffer | null;
  pool: TargetPool;
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
/** RFC 8446 §5.1: a record header and at most 2^14 bytes of plaintext. */
const MAX_HELLO_RECORD = 5 + (1 << 14);
const DEFAULT_POOL = 'default';

function toTarget(t: TlsTargetConfig, where: string): Target {
  if (!t || typeof t.host !== 'string' || t.host.length === 0) throw new TypeError(`tls terminator: ${where}.host must be a host name or address`);
  const port = checkPort(`${where}.port`, t.port, false);
  const clearPort = t.clearPort === undefined ? port : checkPort(`${where}.clearPort`, t.clearPort, false);
  return { host: t.host, port, clearPort, weight: t.weight ?? 1, key: `${t.host}:${port}`, maxconn: t.maxconn ?? 0, maxqueue: t.maxqueue, queueTimeoutMs: t.queueTimeoutMs };
}

function checkInt(what: string, v: unknown, min: number, max: number): number {
  if (!Number.isInteger(v) || (v as number) < min || (v as number) > max) {
    throw new RangeError(`tls terminator: ${what} must be an integer ${min}..${max}, got ${String(v)}`);
  }
  return v as number;
}

/** Exact names and "*.suffix" (one label) → value, looked up like certificates (RFC 6125 §6.4.3: the wildcard covers one label). */
class NameMap<V> {
  private readonly exact = new Map<string, V>();
  private readonly wild = new Map<string, V>();
  set(name: string, v: V): void {
    const n = name.toLowerCase();
    if (n.startsWith('*.')) this.wild.set(n.slice(2), v); else this.exact.set(n, v);
  }
  get(name: string): V | undefined {
    const n = name.toLowerCase();
    const e = this.exact.get(n);
    if (e !== undefined) return e;
    const dot = n.indexOf('.');
    return dot > 0 ? this.wild.get(n.slice(dot + 1)) : undefined;
  }
}

const noop = (): void => undefined;

/** The client's server_name, or '' (node sets it on server-side TLS sockets; false without SNI). */
function sniOf(s: net.Socket): string {
  const n = (s as tls.TLSSocket & { servername?: string | false }).servername;
  return typeof n === 'string' ? n : '';
}

interface UpstreamSettings {
  size: number;
  waitTimeoutMs: number;
  maxWaiters: number;
  order: UpstreamQueueOrder;
  priorities: NameMap<number>;
  poolPriorities: Map<string, number>;
  idleTimeoutMs: number;
  quietMs: number;
  sessionWaitMs: number;
  maxPools: number;
  sessions: SessionCache;
}

const DIR_NONE = 0, DIR_TO_TARGET = 1, DIR_FROM_TARGET = 2;

export class TlsTerminator {
  readonly counters = new TlsTerminatorCounters();
  /** Limit and queue counters (kept across setTargets, shared by every pool of targets). */
  readonly queueCounters = new QueueCounters();
  readonly mode: TlsTerminatorMode;
  readonly proxyProtocol: boolean;
  /** The pools of targets by name ('default' is `targets`). */
  private readonly pools = new Map<string, TargetPool>();
  private readonly defaultPool: TargetPool;
  private readonly sniPools = new NameMap<TargetPool>();
  private backups: Target[] = [];
  /** Each limits object's targets (primaries then backups): flows of an older list still connect and release there. */
  private readonly generations = new WeakMap<TargetQueues<Waiter>, Target[]>();
  private readonly onFull: QueueAction;
  private readonly onQueueFull: QueueAction;
  private readonly onQueueTimeout: QueueAction;
  private readonly queueClock: QueueClock | undefined;
  /** Runs the handshakes; never listens itself (the net servers hand it connections). */
  private readonly tlsServer: tls.Server;
  private readonly listeners: net.Server[] = [];
  private readonly listenAddrs: { host: string; port: number }[];
  /** Every socket we own (raw accepted, TLS, target), for stop(). */
  private readonly sockets = new Set<net.Socket>();
  private readonly contexts = new Map<string, tls.SecureContext>();
  private readonly wildcards = new Map<string, tls.SecureContext>();
  private readonly defaultContext: tls.SecureContext;
  private readonly connectTimeoutMs: number;
  private readonly idleTimeoutMs: number;
  private readonly targetTls: { ca: string | undefined; servername: string | undefined; rejectUnauthorized: boolean; alpn: string[] | undefined };
  private readonly hash6Scratch = new Uint8Array(32);
  // classification
  private readonly classify: boolean;
  private readonly tlsPorts: Set<number>;
  private readonly sniff: boolean;
  private readonly sniffTimeoutMs: number;
  private readonly sniffMaxBytes: number;
  private readonly tlsOut = new Int32Array(TLS_OUT_LEN);
  // upstream pool
  private readonly upstream: UpstreamSettings | null;
  private readonly upstreamPools = new Map<string, UpstreamPool>();
  /** PROXY v2 LOCAL header for pooled upstream connections (they carry many clients in turn). */
  private readonly localHeader: Buffer | null;
  private listening = false;
  private stopped = false;

  constructor(cfg: TlsTerminatorConfig) {
    if (cfg === null || typeof cfg !== 'object') throw new TypeError('tls terminator: config must be an object');
    if (!cfg.listen || typeof cfg.listen.host !== 'string') throw new TypeError('tls terminator: listen.host must be an address string');
    this.listenAddrs = [{ host: cfg.listen.host, port: checkPort('listen.port', cfg.listen.port, true) }];
    if (cfg.extraListen !== undefined) {
      if (!Array.isArray(cfg.extraListen)) throw new TypeError('tls terminator: extraListen must be an array of { host, port }');
      cfg.extraListen.forEach((l, i) => {
        if (!l || typeof l.host !== 'string') throw new TypeError(`tls terminator: extraListen[${i}].host must be an address string`);
        this.listenAddrs.push({ host: l.host, port: checkPort(`extraListen[${i}].port`, l.port, true) });
      });
    }
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

    // Classification.
    const cl = cfg.classify;
    this.classify = cl !== undefined;
    if (cl !== undefined && (cl === null || typeof cl !== 'object')) throw new TypeError('tls terminator: classify must be an object { ports?, sniff? }');
    if (cl?.ports !== undefined && !Array.isArray(cl.ports)) throw new TypeError('tls terminator: classify.ports must be an array of port numbers');
    this.tlsPorts = new Set((cl?.ports ?? []).map((p, i) => checkPort(`classify.ports[${i}]`, p, false)));
    if (cl?.sniff !== undefined && typeof cl.sniff !== 'boolean') throw new TypeError('tls terminator: classify.sniff must be true or false');
    this.sniff = cl?.sniff ?? false;
    this.sniffTimeoutMs = checkInt('classify.sniffTimeoutMs', cl?.sniffTimeoutMs ?? 3000, 1, 0x7fffffff);
    // At least a record and handshake header (9 bytes: whether it is a ClientHello at all).
    this.sniffMaxBytes = checkInt('classify.sniffMaxBytes', cl?.sniffMaxBytes ?? MAX_HELLO_RECORD, 16, 1 << 20);

    // Upstream pool.
    const up = cfg.upstreamPool;
    if (up !== undefined) {
      if (up === null || typeof up !== 'object') throw new TypeError('tls terminator: upstreamPool must be an object { size, ... }');
      if (this.mode !== 'tls-to-target') throw new RangeError("tls terminator: upstreamPool applies to mode 'tls-to-target' only (in 'tcp' mode the targets are spoken to in clear)");
      const order = up.order ?? 'fifo';
      if (order !== 'fifo' && order !== 'priority') throw new RangeError(`tls terminator: upstreamPool.order must be 'fifo' or 'priority', got ${JSON.stringify(up.order)}`);
      const priorities = new NameMap<number>();
      const poolPriorities = new Map<string, number>();
      if (up.priorities !== undefined) {
        if (up.priorities === null || typeof up.priorities !== 'object') throw new TypeError('tls terminator: upstreamPool.priorities must map an SNI or a pool name to a number');
        for (const [k, v] of Object.entries(up.priorities)) {
          if (typeof v !== 'number' || !Number.isFinite(v)) throw new TypeError(`tls terminator: upstreamPool.priorities.${k} must be a finite number, got ${String(v)}`);
          priorities.set(k, v);
          poolPriorities.set(k, v);
        }
      }
      if (up.sessions !== undefined && !(up.sessions instanceof Map)) throw new TypeError('tls terminator: upstreamPool.sessions must be a Map (a SessionCache)');
      this.upstream = {
        size: checkInt('upstreamPool.size', up.size, 1, 0x7fffffff),
        waitTimeoutMs: checkInt('upstreamPool.waitTimeoutMs', up.waitTimeoutMs ?? 5000, 0, 0x7fffffff),
        maxWaiters: checkInt('upstreamPool.maxWaiters', up.maxWaiters ?? 1024, 0, 65536),
        order,
        priorities,
        poolPriorities,
        idleTimeoutMs: checkInt('upstreamPool.idleTimeoutMs', up.idleTimeoutMs ?? 60_000, 0, 0x7fffffff),
        quietMs: checkInt('upstreamPool.quietMs', up.quietMs ?? 100, 0, 0x7fffffff),
        sessionWaitMs: checkInt('upstreamPool.sessionWaitMs', up.sessionWaitMs ?? 250, 0, 0x7fffffff),
        maxPools: checkInt('upstreamPool.maxPools', up.maxPools ?? 256, 1, 65536),
        sessions: up.sessions ?? sharedSessions,
      };
    } else {
      this.upstream = null;
    }
    if (this.upstream !== null && this.proxyProtocol) {
      const h: ProxyV2Header = { command: PP2_CMD_LOCAL, family: AF_UNSPEC, transport: TRANSPORT_UNSPEC };
      this.localHeader = Buffer.alloc(encodingLength(h));
      encode(h, this.localHeader, 0);
    } else {
      this.localHeader = null;
    }

    if (!Array.isArray(cfg.certificates) || cfg.certificates.length === 0) throw new TypeError('tls terminator: certificates must list at least one { cert, key }');
    const clientCa = cfg.clientCa !== undefined ? loadPem('clientCa', cfg.clientCa) : undefined;
    const ticketKeys = cfg.ticketKeys !== undefined ? parseTicketKeys(cfg.ticketKeys) : undefined;
    const ctxs = cfg.certificates.map((c, i) => {
      const where = `certificates[${i}]`;
      try {
        const ctx = tls.createSecureContext({ cert: loadPem(`${where}.cert`, c.cert), key: loadPem(`${where}.key`, c.key), passphrase: c.passphrase, ca: clientCa });
        // Same keys in every context: a ticket resumes whichever certificate the SNI picks.
        if (ticketKeys !== undefined) (ctx.context as { setTicketKeys(k: Buffer): void }).setTicketKeys(ticketKeys);
        return ctx;
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

    // Pools of targets.
    this.defaultPool = new TargetPool(DEFAULT_POOL, cfg.seed);
    this.pools.set(DEFAULT_POOL, this.defaultPool);
    this.loadPool(this.defaultPool, cfg.targets, 'targets');
    if (cfg.pools !== undefined) {
      if (cfg.pools === null || typeof cfg.pools !== 'object' || Array.isArray(cfg.pools)) throw new TypeError('tls terminator: pools must map a pool name to a list of targets');
      for (const [name, list] of Object.entries(cfg.pools)) {
        if (name === DEFAULT_POOL) throw new RangeError(`tls terminator: pools.${DEFAULT_POOL} is reserved for \`targets\``);
        const p = new TargetPool(name, cfg.seed);
        this.loadPool(p, list, `pools.${name}`);
        this.pools.set(name, p);
      }
    }
    if (cfg.sniPools !== undefined) {
      if (cfg.sniPools === null || typeof cfg.sniPools !== 'object') throw new TypeError('tls terminator: sniPools must map an SNI to a pool name');
      for (const [sni, name] of Object.entries(cfg.sniPools)) {
        const p = typeof name === 'string' ? this.pools.get(name) : undefined;
        if (p === undefined) throw new RangeError(`tls terminator: sniPools.${sni} names pool ${JSON.stringify(name)}, which is not 'default' or one of pools (${[...this.pools.keys()].join(', ')})`);
        this.sniPools.set(sni, p);
      }
    }

    this.tlsServer = tls.createServer({
      cert: loadPem(`certificates[${di}].cert`, def.cert),
      key: loadPem(`certificates[${di}].key`, def.key),
      passphrase: def.passphrase,
      ca: clientCa,
      ticketKeys,
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
    this.tlsServer.on('tlsClientError', (_err, s) => {
      this.counters.handshakeFailures++;
      s.destroy();
    });
    this.tlsServer.on('secureConnection', (s) => this.onSecure(s));
  }

  /** The default pool's Maglev table. */
  get maglev(): MaglevTable { return this.defaultPool.maglev; }
  /** The default pool's limits: primaries 0..N-1, then the backups. Replaced by setTargets. */
  get queues(): TargetQueues<Waiter> { return this.defaultPool.queues; }

  /** Names of the pools of targets ('default' first). */
  poolNames(): string[] { return [...this.pools.keys()]; }

  /** A pool's limits (primaries, then backups). */
  poolQueues(name: string): TargetQueues<Waiter> { return this.poolNamed(name).queues; }

  /** The pool of targets a client SNI is sent to ('default' when no sniPools entry matches). */
  poolForSni(sni: string): string {
    return sni.length > 0 ? (this.sniPools.get(sni) ?? this.defaultPool).name : DEFAULT_POOL;
  }

  /**
   * Rebuilds the default pool's Maglev table and limits for a new target list
   * and swaps them in. Existing flows keep their target and their slot in the
   * old limits (released there when they close), and flows queued under the
   * old list are served by it; new flows count against the new limits from zero.
   */
  setTargets(targets: TlsTargetConfig[]): void {
    this.loadPool(this.defaultPool, targets, 'targets');
  }

  /** setTargets for a named pool ('default' or one of `pools`). */
  setPoolTargets(name: string, targets: TlsTargetConfig[]): void {
    this.loadPool(this.poolNamed(name), targets, name === DEFAULT_POOL ? 'targets' : `pools.${name}`);
  }

  /** Starts every listener; resolves with the first one's bound address (port 0 picks a free one). Restartable after stop(). */
  async start(): Promise<net.AddressInfo> {
    if (this.stopped) {
      // stop() disposed the limits (their timers and queued flows): fresh ones, same targets.
      this.stopped = false;
      for (const p of this.pools.values()) p.queues = this.newQueues(p.targets.concat(this.backups));
    }
    for (const a of this.listenAddrs) {
      const srv = net.createServer({ allowHalfOpen: true, pauseOnConnect: false }, (raw) => this.onAccept(raw));
      await new Promise<void>((resolve, reject) => {
        const onErr = (e: Error): void => reject(new Error(`tls terminator: cannot listen on ${a.host}:${a.port}: ${e.message}`));
        srv.once('error', onErr);
        srv.listen(a.port, a.host, () => {
          srv.off('error', onErr);
          resolve();
        });
      }).catch(async (e: unknown) => {
        await this.stop();
        throw e;
      });
      this.listeners.push(srv);
      this.listening = true;
    }
    return this.listeners[0].address() as net.AddressInfo;
  }

  address(): net.AddressInfo | null {
    return this.listening ? (this.listeners[0].address() as net.AddressInfo) : null;
  }

  /** Every listener's bound address (listen, then extraListen). */
  addresses(): net.AddressInfo[] {
    return this.listening ? this.listeners.map((s) => s.address() as net.AddressInfo) : [];
  }

  /**
   * Target index for a client 4-tuple as seen by the listener, or -1 (NO_BACKEND),
   * in the default pool or the named one.
   * IPv4 (the usual case) hashes with flowHash4; anything else with flowHash6.
   */
  pickTarget(clientAddr: string, clientPort: number, localAddr: string, localPort: number, pool: string = DEFAULT_POOL): number {
    const p = this.poolNamed(pool);
    return this.flowHash(clientAddr, clientPort, localAddr, localPort, p.maglev.seed) ? p.maglev.lookup(this.lastHash) : NO_BACKEND;
  }

  /** The configured target behind an index from pickTarget or redispatchTarget (backups follow the targets). */
  target(i: number, pool: string = DEFAULT_POOL): { host: string; port: number } {
    const p = this.poolNamed(pool);
    const t = i < p.targets.length ? p.targets[i] : this.backups[i - p.targets.length];
    return { host: t.host, port: t.port };
  }

  /**
   * Where the 'redispatch' action sends a flow whose Maglev target `from` is
   * full: the target of the next entries of the Maglev table after the
   * flow's own (hash mod M + 1, + 2, ...) that has a free slot, or -1 when no
   * other weighted target has one. Walking the table keeps the choice
   * deterministic per flow and weight-proportional across flows (each target
   * holds a share of entries proportional to its weight, spread by its
   * permutation, paper §3.4). Default pool unless `pool` is named.
   */
  redispatchTarget(hash: number, from: number, q?: TargetQueues<unknown>, pool: string = DEFAULT_POOL): number {
    const p = this.poolNamed(pool);
    return this.redispatchIn(p, hash, from, q ?? (p.queues as TargetQueues<unknown>));
  }

  /** Per-target upstream pools currently open (mode 'tls-to-target' with upstreamPool), keyed `host:port/servername`. */
  upstreamPoolsByKey(): ReadonlyMap<string, UpstreamPool> {
    return this.upstreamPools;
  }

  /** The counters of every upstream pool, summed (the per-flow view is in `counters.upstream*`). */
  upstreamTotals(): UpstreamPoolCounters {
    const sum = new UpstreamPoolCounters();
    const keys = Object.keys(sum) as (keyof UpstreamPoolCounters)[];
    for (const p of this.upstreamPools.values()) for (const k of keys) sum[k] += p.counters[k];
    return sum;
  }

  /** Closes the listeners, every open socket and the upstream pools; resolves when the listeners are closed. */
  stop(): Promise<void> {
    this.stopped = true;
    for (const p of this.pools.values()) p.queues.dispose(); // their clients are in this.sockets
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
    for (const p of this.upstreamPools.values()) p.close();
    this.upstreamPools.clear();
    const ls = this.listeners.splice(0);
    this.listening = false;
    return Promise.all(ls.map((s) => new Promise<void>((resolve) => s.close(() => resolve())))).then(() => undefined);
  }

  // ----------------------------------------------------------- internals

  private poolNamed(name: string): TargetPool {
    const p = this.pools.get(name);
    if (p === undefined) throw new RangeError(`tls terminator: no pool named ${JSON.stringify(name)} (pools: ${[...this.pools.keys()].join(', ')})`);
    return p;
  }

  private loadPool(p: TargetPool, targets: TlsTargetConfig[], where: string): void {
    if (!Array.isArray(targets) || targets.length === 0) throw new TypeError(`tls terminator: ${where} must list at least one { host, port }`);
    const next: Target[] = targets.map((t, i) => toTarget(t, `${where}[${i}]`));
    const all = next.concat(this.backups);
    const queues = this.newQueues(all); // throws on bad limits, before anything is swapped
    const backends: MaglevBackend[] = next.map((t, id) => ({ id, weight: t.weight, key: t.key }));
    p.maglev.build(backends); // throws (and keeps the old table) on a bad list
    p.targets = next;
    p.queues = queues;
    this.generations.set(queues, all);
  }

  /** Limits for a target list (primaries then backups). */
  private newQueues(all: Target[]): TargetQueues<Waiter> {
    const queues: TargetQueues<Waiter> = new TargetQueues<Waiter>({
      limits: all.map((t) => ({ maxconn: t.maxconn, maxqueue: t.maxqueue, queueTimeoutMs: t.queueTimeoutMs })),
      onFull: this.onFull,
      onQueueFull: this.onQueueFull,
      onQueueTimeout: this.onQueueTimeout,
      counters: this.queueCounters,
      clock: this.queueClock,
      onDequeue: (id, w) => this.onDequeued(queues, id, w),
      onTimeout: (_id, w, action) => this.onQueueTimedOut(queues, w, action),
    });
    this.generations.set(queues, all);
    return queues;
  }

  private redispatchIn(p: TargetPool, hash: number, from: number, q: TargetQueues<unknown>): number {
    let any = false;
    for (let i = 0; i < p.targets.length; i++) {
      if (i !== from && p.targets[i].weight > 0 && i < q.size && q.hasCapacity(i)) { any = true; break; }
    }
    if (!any) return -1; // spares an M-entry walk when every target is full
    const tab = p.maglev.table, m = p.maglev.size;
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
  private flowHash(clientAddr: string, clientPort: number, localAddr: string, localPort: number, seed: number): boolean {
    const c = unmap(clientAddr), l = unmap(localAddr);
    const c4 = ip4(c), l4 = ip4(l);
    if (c4 >= 0 && l4 >= 0) {
      this.lastHash = flowHash4(c4, l4, clientPort, localPort, 6, seed);
      return true;
    }
    const b = this.hash6Scratch;
    if (!parseIp6(clientAddr.includes(':') ? clientAddr : `::ffff:${clientAddr}`, b, 0) ||
        !parseIp6(localAddr.includes(':') ? localAddr : `::ffff:${localAddr}`, b, 16)) return false;
    this.lastHash = flowHash6(b, 0, clientPort, localPort, 6, seed);
    return true;
  }

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

  // ----------------------------------------------------------- classification

  private onAccept(raw: net.Socket): void {
    this.counters.connections++;
    this.track(raw);
    // Errors are seen through 'close' (and counted where they matter); an
    // 'error' without a listener would throw.
    raw.on('error', noop);
    if (!this.classify || this.tlsPorts.has(raw.localPort ?? -1)) {
      this.toTls(raw, null);
    } else if (!this.sniff) {
      this.toClear(raw, null);
    } else {
      this.sniffFirstBytes(raw);
    }
  }

  /**
   * Reads the first bytes until wire/tls.ts can tell a ClientHello from clear
   * traffic. Bounded: sniffMaxBytes of buffering and sniffTimeoutMs from the
   * accept (a deadline, not an idle timer).
   */
  private sniffFirstBytes(raw: net.Socket): void {
    // The bytes so far: the first chunk as it came, then a buffer of our own
    // grown by doubling (a client trickling one byte per segment costs
    // amortised O(1) per byte, not a copy of everything per byte).
    let acc: Buffer | null = null;
    let len = 0;
    let owned = false;
    /** Bytes needed before classifying again (the end of the ClientHello record once known). */
    let want = 0;
    let decided = false;
    const out = this.tlsOut;
    const finish = (): void => {
      decided = true;
      clearTimeout(timer);
      raw.off('data', onData);
      raw.off('end', onEnd);
      raw.off('close', onGone);
      raw.pause();
    };
    const garbage = (): void => {
      finish();
      this.counters.sniffGarbage++;
      resetSocket(raw);
    };
    const timer = setTimeout(() => {
      if (decided) return;
      finish();
      this.counters.sniffTimeout++;
      resetSocket(raw);
    }, this.sniffTimeoutMs);
    const onData = (d: Buffer): void => {
      if (decided) return;
      if (acc === null) {
        acc = d;
        len = d.length;
      } else {
        const need = len + d.length;
        if (!owned || need > acc.length) {
          const nb = Buffer.allocUnsafe(Math.max(need, 2 * len, 1024));
          acc.copy(nb, 0, 0, len);
          acc = nb;
          owned = true;
        }
        d.copy(acc, len);
        len = need;
      }
      if (len < want && len < this.sniffMaxBytes) return;
      const st = classifyTls(acc, 0, len, out);
      if (st === TlsStatus.CLIENT_HELLO || st === TlsStatus.FRAGMENTED) {
        // FRAGMENTED: the ClientHello continues in a second record; OpenSSL joins them.
        finish();
        this.toTls(raw, acc.subarray(0, len));
      } else if (st === TlsStatus.NOT_TLS) {
        finish();
        this.toClear(raw, acc.subarray(0, len));
      } else if (st === TlsStatus.NEED_MORE || st === TlsStatus.TRUNCATED) {
        if (len < this.sniffMaxBytes) {
          // The rest of the record is on its way (a ClientHello split across segments).
          if (st === TlsStatus.NEED_MORE) want = out[TlsOut.RECORD_END];
          return;
        }
        if (st === TlsStatus.NEED_MORE) {
          // A consistent ClientHello prefix longer than we buffer (only with
          // a sniffMaxBytes below a record): OpenSSL takes it from here,
          // bounded by the handshake timeout.
          finish();
          this.toTls(raw, acc.subarray(0, len));
        } else {
          garbage();
        }
      } else {
        // NOT_CLIENT_HELLO, MALFORMED: a TLS record no client starts with.
        garbage();
      }
    };
    // FIN before a decision: nothing to forward, nothing to terminate.
    const onEnd = (): void => { if (!decided) garbage(); };
    const onGone = (): void => { if (!decided) { finish(); this.counters.sniffGarbage++; } };
    raw.on('data', onData);
    raw.once('end', onEnd);
    raw.once('close', onGone);
  }

  /** Hands an accepted connection to the TLS side, with the bytes already read put back first. */
  private toTls(raw: net.Socket, first: Buffer | null): void {
    this.counters.classifiedTls++;
    // node's TLSSocket reads what the wrapped socket already buffered
    // before reading from its handle (_tls_wrap.js initRead).
    if (first !== null) raw.unshift(first);
    this.tlsServer.emit('connection', raw);
  }

  /** Forwards a clear flow: PROXY v2 without the SSL TLV, then its bytes, to the default pool's target (clearPort). */
  private toClear(raw: net.Socket, first: Buffer | null): void {
    this.counters.classifiedClear++;
    this.counters.active++;
    raw.once('close', () => { this.counters.active--; });
    raw.pause();
    let header: Buffer | null = null;
    try {
      header = this.proxyProtocol ? this.clearProxyHeaderFor(raw) : null;
    } catch {
      raw.destroy(); // an unencodable header (cannot happen with socket-provided values)
      return;
    }
    this.admitFlow(raw, false, header, this.defaultPool, first);
  }

  // ----------------------------------------------------------- flows

  /** The PROXY v2 header for an established client connection, in one Buffer. */
  proxyHeaderFor(s: tls.TLSSocket): Buffer {
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
    const sni = sniOf(s);
    if (sni.length > 0) tlvs.authority = sni;
    return addressHeader(s, tlvs);
  }

  /** The PROXY v2 header of a clear flow: addresses only, no SSL TLV (2.2.5: its absence says "not secure"). */
  clearProxyHeaderFor(s: net.Socket): Buffer {
    return addressHeader(s, undefined);
  }

  private onSecure(client: tls.TLSSocket): void {
    this.counters.handshakes++;
    if (client.isSessionReused()) this.counters.clientResumptions++;
    this.counters.active++;
    this.track(client);
    client.on('error', noop); // counted where it matters (splice); never an uncaught 'error'
    client.once('close', () => { this.counters.active--; });
    // Hold client bytes until the target is ready; pipe() resumes.
    client.pause();
    const sni = sniOf(client);
    const pool = sni.length > 0 ? (this.sniPools.get(sni) ?? this.defaultPool) : this.defaultPool;
    let header: Buffer | null = null;
    try {
      header = this.proxyProtocol ? this.proxyHeaderFor(client) : null;
    } catch {
      client.destroy(); // an unencodable header (cannot happen with socket-provided values)
      return;
    }
    this.admitFlow(client, true, header, pool, null);
  }

  /** Maglev choice in the flow's pool, then the target's limits. */
  private admitFlow(client: net.Socket, secure: boolean, header: Buffer | null, pool: TargetPool, first: Buffer | null): void {
    const hashed = this.flowHash(client.remoteAddress ?? '', client.remotePort ?? 0, client.localAddress ?? '', client.localPort ?? 0, pool.maglev.seed);
    const hash = this.lastHash;
    const id = hashed ? pool.maglev.lookup(hash) : NO_BACKEND;
    if (id === NO_BACKEND) {
      this.counters.noTarget++;
      client.destroy();
      return;
    }
    const q = pool.queues;
    const w: Waiter = {
      client, secure, header, pool, hash, hashed, target: id, ticket: -1, onClose: null,
      pending: first !== null ? [first] : [], pendingLen: first !== null ? first.length : 0, onData: null,
    };
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
      this.holdClient(w, () => {
        if (q.cancel(w.ticket, w)) this.unhook(w);
        client.destroy();
      }, true);
    } else {
      this.applyAction(q, a, w);
    }
  }

  /**
   * While a flow waits: read the client into w.pending, and call onGone on
   * its close, and on its FIN too when finIsLeave.
   */
  private holdClient(w: Waiter, onGone: () => void, finIsLeave: boolean): void {
    const client = w.client;
    w.onClose = onGone;
    w.onData = (d: Buffer) => {
      w.pending.push(d);
      w.pendingLen += d.length;
      if (w.pendingLen >= QUEUED_BUFFER_MAX) client.pause();
    };
    if (finIsLeave) client.once('end', w.onClose);
    client.once('close', w.onClose);
    client.on('data', w.onData);
    client.resume();
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

  /** Leaves the waiting state: stop reading (the forwarding resumes later) and drop the waiting listeners. */
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
    if (action === QueueAction.Redispatch && w.hashed && q === w.pool.queues) {
      const alt = this.redispatchIn(w.pool, w.hash, w.target, q as TargetQueues<unknown>);
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
  private reset(client: net.Socket): void {
    if (!(client instanceof tls.TLSSocket)) {
      resetSocket(client); // a clear flow: the accepted TCP socket itself
      return;
    }
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

  /** Opens the connection to target `id` for the flow; the slot held on `id` in `q` is released when it closes. */
  private connectTarget(q: TargetQueues<Waiter>, id: number, w: Waiter): void {
    const client = w.client, header = w.header;
    if (client.destroyed) {
      q.release(id); // the client left as its slot came: hand the slot on
      return;
    }
    const t = (this.generations.get(q) as Target[])[id];
    const tlsOut = w.secure && this.mode === 'tls-to-target';
    if (tlsOut && this.upstream !== null) {
      const up = this.upstreamPoolFor(t, this.upstreamServername(client));
      if (up !== null) {
        this.connectPooled(q, id, w, up);
        return;
      }
      this.counters.upstreamUnpooled++;
    }
    const port = w.secure ? t.port : t.clearPort;
    const raw = net.connect({ host: t.host, port, allowHalfOpen: true });
    this.track(raw);
    raw.on('error', noop); // 'fail' and splice() handle errors; later ones (under a TLS wrap) must not throw
    // The slot is the target connection's: freed when it closes, however (HAProxy counts server connections).
    raw.once('close', () => q.release(id));
    raw.setNoDelay(true);
    let connected = false;
    const connectTimer = setTimeout(() => {
      if (!connected) raw.destroy(new Error(`connect to ${t.host}:${port} timed out`));
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
      if (!tlsOut) {
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
      const sniOut = this.upstreamServername(client);
      const up = tls.connect({
        socket: raw,
        servername: sniOut,
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

  /** SNI towards the target: the configured one, else the client's (never an address, RFC 6066 §3). */
  private upstreamServername(client: net.Socket): string | undefined {
    const n = this.targetTls.servername ?? sniOf(client);
    return n.length > 0 && !isIp(n) ? n : undefined;
  }

  /** The upstream pool of a target and server name, made on first use; null when maxPools exist already. */
  private upstreamPoolFor(t: Target, servername: string | undefined): UpstreamPool | null {
    const u = this.upstream as UpstreamSettings;
    const key = `${t.key}/${servername ?? ''}`;
    const have = this.upstreamPools.get(key);
    if (have !== undefined) return have;
    // Client SNIs are the client's choice: bound the pools they can create.
    if (this.upstreamPools.size >= u.maxPools) return null;
    const p = new UpstreamPool({
      host: t.host,
      port: t.port,
      servername,
      ca: this.targetTls.ca,
      rejectUnauthorized: this.targetTls.rejectUnauthorized,
      maxConnections: u.size,
      idleTimeoutMs: u.idleTimeoutMs,
      queue: u.order,
      maxWaiters: u.maxWaiters,
      waitTimeoutMs: u.waitTimeoutMs,
      connectTimeoutMs: this.connectTimeoutMs,
      sessionWaitMs: u.sessionWaitMs,
      tls: this.targetTls.alpn !== undefined ? { ALPNProtocols: this.targetTls.alpn } : undefined,
      preface: this.localHeader,
      sessions: u.sessions,
    });
    this.upstreamPools.set(key, p);
    return p;
  }

  /** Waiting priority of a flow: its SNI (exact, then wildcard), else its pool's name, else 0. */
  private priorityOf(client: net.Socket, pool: TargetPool): number {
    const u = this.upstream as UpstreamSettings;
    const sni = sniOf(client);
    if (sni.length > 0) {
      const p = u.priorities.get(sni);
      if (p !== undefined) return p;
    }
    return u.poolPriorities.get(pool.name) ?? 0;
  }

  /**
   * A secure flow in tls-to-target mode through the target's upstream pool:
   * a dedicated connection for a client with a certificate, else a pooled one
   * (reused, resumed or new; waiting FIFO or by priority when all are busy).
   * The slot on `id` is held until the flow gives the connection back.
   */
  private connectPooled(q: TargetQueues<Waiter>, id: number, w: Waiter, up: UpstreamPool): void {
    const client = w.client as tls.TLSSocket;
    const c = this.counters;
    let slotHeld = true;
    const releaseSlot = (): void => { if (slotHeld) { slotHeld = false; q.release(id); } };
    const peer = client.getPeerCertificate();
    const identity = peer !== null && typeof peer === 'object' && Object.keys(peer).length > 0;
    const req: UpstreamRequest = identity
      ? { dedicated: true, preface: w.header }
      : { priority: this.priorityOf(client, w.pool) };
    let settled = false;
    let wait: UpstreamWait | null = null;
    const waits0 = up.counters.waits;
    wait = up.acquire(req, (err, lease) => {
      settled = true;
      this.unhook(w);
      if (err !== null || lease === null) {
        const code = err instanceof UpstreamPoolError ? err.code : '';
        if (code === 'EWAITTIMEOUT') c.upstreamWaitTimeouts++;
        else if (code === 'EQUEUEFULL') c.upstreamQueueFull++;
        else if (code !== 'ECLOSED') c.targetConnectFailures++;
        releaseSlot();
        if (code === 'EWAITTIMEOUT' || code === 'EQUEUEFULL') this.reset(client);
        else client.destroy();
        return;
      }
      if (lease.reused) c.upstreamReuses++;
      else {
        c.targetConnects++;
        if (lease.resumed) c.upstreamResumptions++; else c.upstreamHandshakes++;
        if (lease.dedicated ? w.header !== null : this.localHeader !== null) c.proxyHeaders++;
      }
      if (lease.dedicated) c.upstreamDedicated++;
      if (client.destroyed) {
        // Left while its connection came: the connection is untouched, at a boundary.
        if (lease.dedicated) { c.upstreamDiscarded++; lease.release(false); } else { c.upstreamReleased++; lease.release(true); }
        releaseSlot();
        return;
      }
      this.spliceLease(w, lease, releaseSlot);
    });
    if (up.counters.waits > waits0) c.upstreamWaits++;
    if (!settled) {
      // Watch the client while the pool works (a leave is seen by reading, as
      // in the target queue). Unlike there, a FIN is not a leave: a client
      // that half-closes after its request (printf | nc) is common here, and
      // the flow serves it once a connection comes (spliceLease sees the FIN
      // already read); a client gone for good costs its place in the line
      // until then or waitTimeoutMs.
      this.holdClient(w, () => {
        this.unhook(w);
        if (!settled && wait !== null && wait.cancel()) releaseSlot();
        client.destroy();
      }, false);
    }
  }

  /**
   * Forwards a flow over a leased upstream connection and decides, when it
   * ends, whether the connection is at a boundary (file header): the client
   * finished after the target answered, and the target stayed quiet for
   * quietMs. The client's FIN is NOT passed on (the connection outlives the
   * flow); our FIN to the client follows the decision.
   */
  private spliceLease(w: Waiter, lease: UpstreamLease, releaseSlot: () => void): void {
    const client = w.client as tls.TLSSocket;
    const up = lease.socket;
    const c = this.counters;
    const quietMs = (this.upstream as UpstreamSettings).quietMs;
    // An h2 connection has per-connection state (streams, HPACK tables): one client's only.
    const shareable = !lease.dedicated && up.alpnProtocol !== 'h2';
    let lastDir = DIR_NONE;
    let clientEnded = false, clientGone = false, done = false;
    /** We stopped reading the target because the client is slow: the target is not "quiet", we are not listening. */
    let upPaused = false;
    let quiet: ReturnType<typeof setTimeout> | null = null;

    const finish = (reusable: boolean, closeClient: 'end' | 'destroy'): void => {
      if (done) return;
      done = true;
      if (quiet !== null) { clearTimeout(quiet); quiet = null; }
      client.off('data', onClientData);
      client.off('end', onClientEnd);
      client.off('close', onClientClose);
      client.off('drain', onClientDrain);
      client.off('error', onClientError);
      up.off('data', onUpData);
      up.off('end', onUpEnd);
      up.off('close', onUpClose);
      up.off('error', onUpError);
      up.off('drain', onUpDrain);
      if (this.idleTimeoutMs > 0) {
        client.setTimeout(0, onIdle);
        up.setTimeout(0, onIdle);
      }
      const keep = reusable && shareable;
      if (keep) c.upstreamReleased++; else c.upstreamDiscarded++;
      lease.release(keep);
      releaseSlot();
      if (!client.destroyed) {
        if (closeClient === 'destroy') client.destroy(); else client.end();
      }
    };
    const armQuiet = (): void => {
      if (quiet !== null) clearTimeout(quiet);
      quiet = null;
      // Not while the target's bytes wait unread behind a slow client: the
      // rest of the answer would go to the next holder. onClientDrain re-arms.
      if (upPaused) return;
      quiet = setTimeout(() => { quiet = null; if (!upPaused && up.readableLength === 0) finish(true, 'end'); else armQuiet(); }, quietMs);
    };
    const onClientData = (d: Buffer): void => {
      c.bytesToTargets += d.length;
      lastDir = DIR_TO_TARGET;
      if (quiet !== null) { clearTimeout(quiet); quiet = null; }
      if (!up.write(d)) client.pause();
    };
    const onUpDrain = (): void => { if (!done && !clientEnded) client.resume(); };
    const onUpData = (d: Buffer): void => {
      c.bytesFromTargets += d.length;
      lastDir = DIR_FROM_TARGET;
      if (!clientGone && !client.destroyed && client.writable) {
        if (!client.write(d)) { upPaused = true; up.pause(); }
      }
      // Finished client: the exchange ends once the target is quiet.
      if (clientEnded || clientGone) armQuiet();
    };
    const onClientDrain = (): void => {
      if (done || !upPaused) return;
      upPaused = false;
      up.resume();
      if (clientEnded || clientGone) armQuiet();
    };
    const onClientEnd = (): void => {
      clientEnded = true;
      // The target owes no answer (it answered last, or nothing was sent): wait
      // for it to be quiet. Otherwise wait for its answer (the client may have
      // half-closed after its request), then for quiet.
      if (lastDir !== DIR_TO_TARGET) armQuiet();
    };
    const onClientClose = (): void => {
      clientGone = true;
      if (done) return;
      // Gone with its last bytes unanswered: the answer would reach the next client.
      if (lastDir === DIR_TO_TARGET) finish(false, 'destroy');
      else { upPaused = false; up.resume(); armQuiet(); } // drain what is still coming, then reuse
    };
    const onClientError = (): void => { if (!done) c.flowErrors++; };
    // The target finished or failed: the connection cannot be reused.
    const onUpEnd = (): void => finish(false, 'end');
    const onUpClose = (): void => finish(false, 'end');
    const onUpError = (): void => { if (!done) c.flowErrors++; finish(false, 'destroy'); };
    const onIdle = (): void => { if (!done) c.idleTimeouts++; finish(false, 'destroy'); };

    client.on('data', onClientData);
    client.once('end', onClientEnd);
    client.once('close', onClientClose);
    client.on('drain', onClientDrain);
    client.on('error', onClientError);
    up.on('data', onUpData);
    up.once('end', onUpEnd);
    up.once('close', onUpClose);
    up.on('error', onUpError);
    up.on('drain', onUpDrain);
    if (this.idleTimeoutMs > 0) {
      client.setTimeout(this.idleTimeoutMs, onIdle);
      up.setTimeout(this.idleTimeoutMs, onIdle);
    }
    // What the client sent while it waited goes first.
    if (w.pendingLen > 0) {
      lastDir = DIR_TO_TARGET;
      this.flushPending(w, up);
    }
    up.resume();
    if (client.readableEnded) {
      // Its FIN was read while it waited: treat as ended now.
      onClientEnd();
    } else {
      client.resume();
    }
  }

  /** Sends what a queued client sent while it waited, before piping the rest. */
  private flushPending(w: Waiter, up: net.Socket): void {
    for (const d of w.pending) up.write(d);
    this.counters.bytesToTargets += w.pendingLen;
    w.pending = [];
    w.pendingLen = 0;
  }

  /** Pipes both ways with backpressure, passes FINs on, and tears both down on error or idle timeout. */
  private splice(client: net.Socket, up: net.Socket): void {
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

/** A TCP RST when the socket has a TCP handle, else a destroy. */
function resetSocket(s: net.Socket): void {
  if (!s.destroyed && typeof s.resetAndDestroy === 'function') {
    try {
      s.resetAndDestroy();
      return;
    } catch {
      // no TCP handle
    }
  }
  s.destroy();
}

/** 48 bytes as a Buffer, or 96 hex characters (node's ticketKeys: 16 name + 16 HMAC + 16 AES). */
function parseTicketKeys(k: Buffer | string): Buffer {
  const b = typeof k === 'string' && /^[0-9a-fA-F]{96}$/.test(k) ? Buffer.from(k, 'hex') : k;
  if (!Buffer.isBuffer(b) || b.length !== 48) throw new RangeError('tls terminator: ticketKeys must be 48 bytes (a Buffer, or 96 hex characters)');
  return b;
}

/** A PROXY v2 PROXY header with the socket's addresses (client = remote, listener = local) and the given TLVs. */
function addressHeader(s: net.Socket, tlvs: ProxyV2Tlvs | undefined): Buffer {
  const src = unmap(s.remoteAddress ?? ''), dst = unmap(s.localAddress ?? '');
  const v4 = ip4(src) >= 0 && ip4(dst) >= 0;
  const h: ProxyV2Header = {
    command: PP2_CMD_PROXY,
    family: v4 ? AF_INET : AF_INET6,
    transport: STREAM,
    src: v4 ? src : src.includes(':') ? src : `::ffff:${src}`,
    dst: v4 ? dst : dst.includes(':') ? dst : `::ffff:${dst}`,
    srcPort: s.remotePort ?? 0,
    dstPort: s.localPort ?? 0,
  };
  if (tlvs !== undefined) h.tlvs = tlvs;
  const buf = Buffer.allocUnsafe(encodingLength(h));
  encode(h, buf, 0);
  return buf;
}
