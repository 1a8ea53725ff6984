// `portcullis replay`: captures through the parser and the flow table, the
// same stages the live appliance runs, at file speed.
//
// Each file is its own time domain: the flow table is drained into the
// summary at the end of a file and cleared, so one capture's timestamps never
// expire another's flows.

import fs from 'node:fs';
import { Batch } from '../io/batch.js';
import type { Meta as MetaT } from '../wire/meta.js';
import { openCapture, PcapFileWriter, PcapFormatError, type PcapFileReader } from '../io/pcap-file.js';
import { Meta } from '../wire/meta.js';
import { parseBatch } from '../wire/parse.js';
import { FIELD_NAMES, fieldValues } from '../wire/fields.js';
import { PARSE_STATUS_NAMES } from '../wire/status.js';
import { FlowTable, type FlowInfo } from '../flow/flow-table.js';
import { Counters } from '../counters.js';
import { protoName, createProgress, type Progress } from './output.js';
import { ThreadedCapture } from '../pipeline/threaded-capture.js';
import { PARSE_STATUS_COUNT } from '../wire/status.js';
import { GuardReplay, formatGuardReport, type GuardReplayReport } from '../guard/replay-guard.js';
import { loadGuardConfig, defaultGuardConfig, GuardConfigError } from '../guard/config.js';

export interface ReplayOptions {
  fields?: boolean;
  flows?: boolean;
  json?: boolean;
  write?: string;
  limit?: number;
  keepGoing?: boolean;
  progress?: boolean;
  /** 1: read, parse and track on this thread; 2 (default): read and parse on a worker thread. */
  threads?: number;
  /** Flow table capacity (power of two). */
  flowCapacity?: number;
  /** Where output goes (tests pass a collector). */
  out?: (s: string) => void;
  /** Run the connection guard's sensor and monitor (src/guard/replay-guard.ts) and report per originating address. */
  guard?: boolean;
  /** Guard configuration (an appliance YAML with a `guard` key, or the guard section alone); defaults when absent. */
  config?: string;
}

export interface FileSummary {
  file: string;
  format: string;
  packets: number;
  bytes: number;
  flows: number;
  error?: string;
  errorOffset?: number;
}

export interface ReplaySummary {
  files: FileSummary[];
  packets: number;
  bytes: number;
  capturedBytes: number;
  seconds: number;
  packetsPerSecond: number;
  parse: Record<string, number>;
  flowsByProtocol: Record<string, number>;
  flowsExpired: number;
  topTalkers: { address: string; bytes: number; packets: number }[];
  counters: Record<string, number>;
  /** With --guard: per originating address, what the guard counted and decided. */
  guard?: GuardReplayReport;
}

/** Replays `files`; returns the summary (also printed unless fields/flows output was asked for). */
export async function replayFiles(files: string[], opts: ReplayOptions = {}): Promise<{ summary: ReplaySummary; code: number }> {
  const out = opts.out ?? ((s: string) => { process.stdout.write(s); });
  const batch = new Batch();
  const meta = new Meta(batch.capacity);
  const counters = new Counters();
  const totalBytes = files.reduce((a, f) => a + (fs.existsSync(f) ? fs.statSync(f).size : 0), 0);
  // A capture cannot hold more flows than packets (~64 bytes each at least):
  // size the table to the input, up to 2^20 flows.
  const flows = new FlowTable({ capacity: opts.flowCapacity ?? tableSizeFor(totalBytes), batchCapacity: batch.capacity }, counters);
  const limit = opts.limit ?? Infinity;
  let writer: PcapFileWriter | null = null;
  let writerLink = -1;
  const summary: ReplaySummary = {
    files: [], packets: 0, bytes: 0, capturedBytes: 0, seconds: 0, packetsPerSecond: 0,
    parse: {}, flowsByProtocol: {}, flowsExpired: 0, topTalkers: [], counters: {},
  };
  const talkers = new Map<string, { bytes: number; packets: number }>();
  let guard: GuardReplay | null = null;
  if (opts.guard) {
    try {
      guard = new GuardReplay(opts.config ? loadGuardConfig(opts.config) : defaultGuardConfig(), counters, batch.capacity);
    } catch (err) {
      if (!(err instanceof GuardConfigError)) throw err;
      process.stderr.write(`portcullis: ${err.message}\n`);
      return { summary, code: 2 };
    }
  }
  const rowVals: string[] = [];
  let frameBase = 0;
  let code = 0;
  const progress: Progress | null = opts.progress !== false && !opts.fields && process.stderr.isTTY ? createProgress(totalBytes) : null;
  let doneBytes = 0;

  if (opts.fields) out(FIELD_NAMES.join(',') + '\n');
  if (opts.flows && !opts.json) out('file,proto,client,client_port,server,server_port,packets_c2s,packets_s2c,bytes_c2s,bytes_s2c,first_seen,last_seen,state\n');
  const flowRows: (FlowInfo & { file: string })[] = [];

  const t0 = process.hrtime.bigint();
  const threaded = (opts.threads ?? 2) > 1;
  const statusTotals = new Float64Array(PARSE_STATUS_COUNT);
  for (const file of files) {
    if (summary.packets >= limit) break;
    let reader: PcapFileReader | null = null;
    let tc: ThreadedCapture | null = null;
    const fs0: FileSummary = { file, format: '', packets: 0, bytes: 0, flows: 0 };
    summary.files.push(fs0);
    try {
      if (threaded) tc = new ThreadedCapture(file);
      else reader = openCapture(file);
    } catch (err) {
      fs0.error = (err as Error).message;
      if (err instanceof PcapFormatError) fs0.errorOffset = err.offset;
      process.stderr.write(`portcullis: ${fs0.error}\n`);
      code = 1;
      if (opts.keepGoing) continue;
      break;
    }
    fs0.format = tc ? tc.format : reader!.format;
    const fileSize = tc ? tc.fileSize : reader!.fileSize;
    frameBase = 0;
    try {
      for (;;) {
        // The next parsed batch: from the worker thread's ring, or read and parsed here.
        let b: Batch = batch, m: MetaT = meta;
        let n: number;
        try {
          if (tc) {
            if (!tc.next()) break;
            b = tc.batch;
            m = tc.meta;
            n = b.count;
          } else {
            n = reader!.recv(batch);
            if (n > 0) parseBatch(batch, meta);
          }
        } catch (err) {
          if (!(err instanceof PcapFormatError)) throw err;
          fs0.error = err.message;
          fs0.errorOffset = err.offset;
          process.stderr.write(`portcullis: ${err.message}\n`);
          code = 1;
          break;
        }
        if (n === 0) break;
        if (summary.packets + n > limit) {
          n = limit - summary.packets;
          b.count = n;
          m.count = n;
        }
        guard?.inspect(b, m, flows);
        flows.trackBatch(b, m, counters);
        guard?.afterTrack(flows);
        // Statuses counted here, for exactly the packets used (the reader
        // thread may have parsed batches past --limit).
        const st = m.status;
        for (let i = 0; i < n; i++) {
          fs0.bytes += b.origLen[i];
          summary.capturedBytes += b.capLen[i];
          statusTotals[st[i]]++;
        }
        fs0.packets += n;
        summary.packets += n;
        if (opts.fields) {
          for (let i = 0; i < n; i++) {
            fieldValues(b.arena, b.off[i], b.capLen[i], b.origLen[i], b.linkType[i], b.tsSec[i], b.tsNsec[i], frameBase + i + 1, rowVals);
            out(rowVals.join(',') + '\n');
          }
        }
        frameBase += n;
        if (opts.write) {
          const lt = b.linkType[0];
          if (!writer) {
            writer = new PcapFileWriter(opts.write, { linkType: lt, nanosecond: true });
            writerLink = lt;
          }
          for (let i = 0; i < n; i++) {
            if (b.linkType[i] !== writerLink) {
              throw new Error(`${file}: packet ${frameBase - n + i + 1} has link type ${b.linkType[i]} but ${opts.write} was started with ${writerLink}; a pcap file holds one link type (write each file separately)`);
            }
            writer.writePacket(b.arena, b.off[i], b.capLen[i], b.origLen[i], b.tsSec[i], b.tsNsec[i]);
          }
        }
        if (tc) tc.release();
        if (progress) progress.update(doneBytes + (tc ? tc.bytesRead : reader!.bytesRead));
        if (summary.packets >= limit) break;
      }
    } finally {
      doneBytes += fileSize;
      tc?.close();
      reader?.close();
    }
    summary.bytes += fs0.bytes;
    // Drain the table into the summary: this file's flows end here.
    flows.forEach((f) => {
      fs0.flows++;
      const p = protoName(f.proto, f.family);
      summary.flowsByProtocol[p] = (summary.flowsByProtocol[p] ?? 0) + 1;
      addTalker(talkers, f.client, f.bytesFromClient, f.packetsFromClient);
      addTalker(talkers, f.server, f.bytesFromServer, f.packetsFromServer);
      if (opts.flows) flowRows.push({ ...f, file });
    });
    if (opts.flows && !opts.json) {
      for (const f of flowRows) out(flowCsv(f) + '\n');
      flowRows.length = 0;
    }
    guard?.endFile(flows);
    flows.clear();
    if (fs0.error && !opts.keepGoing) break;
  }
  const t1 = process.hrtime.bigint();
  progress?.stop();
  writer?.close();

  summary.seconds = Number(t1 - t0) / 1e9;
  summary.packetsPerSecond = summary.seconds > 0 ? Math.round(summary.packets / summary.seconds) : 0;
  for (let s = 0; s < PARSE_STATUS_NAMES.length; s++) {
    const v = statusTotals[s];
    if (v) summary.parse[PARSE_STATUS_NAMES[s]] = v;
  }
  summary.counters = counters.toObject();
  summary.flowsExpired = counters.get('flow_expired');
  summary.topTalkers = [...talkers.entries()].sort((a, b) => b[1].bytes - a[1].bytes).slice(0, 10).map(([address, v]) => ({ address, ...v }));
  if (guard) summary.guard = guard.report();

  if (opts.json) {
    if (opts.flows) out(JSON.stringify({ flows: flowRows }, null, 2) + '\n');
    else if (!opts.fields) out(JSON.stringify(summary, null, 2) + '\n');
  } else if (!opts.fields && !opts.flows) {
    out(formatSummary(summary));
    if (summary.guard) out(formatGuardReport(summary.guard));
  }
  return { summary, code };
}

export async function runReplay(files: string[], opts: ReplayOptions): Promise<number> {
  return (await replayFiles(files, opts)).code;
}

function tableSizeFor(bytes: number): number {
  let cap = 4096;
  while (cap < 1 << 20 && cap * 64 < bytes) cap *= 2;
  return cap;
}

function addTalker(m: Map<string, { bytes: number; packets: number }>, a: string, bytes: number, packets: number): void {
  const t = m.get(a);
  if (t) { t.bytes += bytes; t.packets += packets; } else m.set(a, { bytes, packets });
}

function flowCsv(f: FlowInfo & { file: string }): string {
  return [f.file, protoName(f.proto, f.family), f.client, f.clientPort, f.server, f.serverPort, f.packetsFromClient, f.packetsFromServer,
    f.bytesFromClient, f.bytesFromServer, f.firstSeen.toFixed(6), f.lastSeen.toFixed(6), f.state].join(',');
}

const nf = new Intl.NumberFormat('en-US');

export function formatSummary(s: ReplaySummary): string {
  const lines: string[] = [];
  const bad = s.files.filter((f) => f.error);
  lines.push(`files        ${s.files.length}${bad.length ? ` (${bad.length} with errors)` : ''}`);
  lines.push(`packets      ${nf.format(s.packets)}`);
  lines.push(`bytes        ${nf.format(s.bytes)} on the wire, ${nf.format(s.capturedBytes)} captured`);
  lines.push(`time         ${s.seconds.toFixed(3)} s, ${nf.format(s.packetsPerSecond)} packets/s, ${((s.capturedBytes * 8) / Math.max(s.seconds, 1e-9) / 1e9).toFixed(2)} Gbit/s read`);
  lines.push('parse');
  const parse = Object.entries(s.parse).sort((a, b) => b[1] - a[1]);
  for (const [k, v] of parse) lines.push(`  ${k.padEnd(26)} ${nf.format(v).padStart(12)}`);
  lines.push('flows by protocol');
  const fl = Object.entries(s.flowsByProtocol).sort((a, b) => b[1] - a[1]);
  if (!fl.length) lines.push('  (none)');
  for (const [k, v] of fl) lines.push(`  ${k.padEnd(26)} ${nf.format(v).padStart(12)}`);
  const fc = s.counters;
  const refused = (fc.flow_table_full ?? 0) + (fc.flow_flood_guard ?? 0);
  lines.push(`  expired ${nf.format(s.flowsExpired)}, refused ${nf.format(refused)} (table full ${nf.format(fc.flow_table_full ?? 0)}, flood guard ${nf.format(fc.flow_flood_guard ?? 0)})`);
  lines.push(`  fragments: matched ${nf.format(fc.frag_matched ?? 0)}, unmatched ${nf.format(fc.frag_unmatched ?? 0)}`);
  lines.push('top talkers (bytes sent)');
  for (const t of s.topTalkers) lines.push(`  ${t.address.padEnd(40)} ${nf.format(t.bytes).padStart(14)} B ${nf.format(t.packets).padStart(10)} pkts`);
  if (bad.length) {
    lines.push('errors');
    for (const f of bad) lines.push(`  ${f.error}`);
  }
  return lines.join('\n') + '\n';
}
