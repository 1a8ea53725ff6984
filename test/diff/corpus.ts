// Differential comparison of fields.ts against the tshark oracle of one
// capture (../shared/pcaps/X.fields.csv). Shared by pcaps.test.ts and by ad
// hoc runs (`node --import=tsx test/diff/corpus.ts [file...]`).
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Batch } from '../../src/io/batch.js';
import { openCapture, PcapFormatError } from '../../src/io/pcap-file.js';
import { FIELD_NAMES, fieldValues } from '../../src/wire/fields.js';
import { parseBatch } from '../../src/wire/parse.js';
import { Meta, MetaFlag } from '../../src/wire/meta.js';
import { formatIpv4 } from '../../src/wire/ipv4.js';
import { ParseStatus } from '../../src/wire/status.js';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const CORPUS_DIR = path.resolve(REPO_ROOT, '../shared/pcaps');

export interface Divergence {
  file: string;
  frame: number;
  column: string;
  expected: string;
  actual: string;
}
export interface FileResult {
  file: string;
  frames: number;
  oracleFrames: number;
  compared: number;
  diffs: Divergence[];
  readError: string;
  /** Hot-path Meta values that disagree with the oracle where Meta describes the same (outer) header. */
  metaDiffs: Divergence[];
}

export function captureFiles(): string[] {
  return readdirSync(CORPUS_DIR).filter((f) => /\.(pcap|pcapng)$/.test(f)).sort();
}

function readOracle(file: string): { header: string[]; rows: string[][] } {
  const text = readFileSync(path.join(CORPUS_DIR, `${file}.fields.csv`), 'utf8');
  const lines = text.split('\n').filter((l) => l.length > 0);
  return { header: lines[0].split(','), rows: lines.slice(1).map((l) => l.split(',')) };
}

export function compareFile(file: string): FileResult {
  const { header, rows } = readOracle(file);
  const cols = FIELD_NAMES.map((n) => header.indexOf(n));
  const res: FileResult = { file, frames: 0, oracleFrames: rows.length, compared: 0, diffs: [], readError: '', metaDiffs: [] };
  const meta = new Meta(64);
  const col = (name: string) => header.indexOf(name);
  const reader = openCapture(path.join(CORPUS_DIR, file));
  const batch = new Batch(64, 64 * 270000);
  const out: string[] = [];
  try {
    for (;;) {
      let n: number;
      try {
        n = reader.recv(batch);
      } catch (e) {
        if (e instanceof PcapFormatError) { res.readError = e.message; break; }
        throw e;
      }
      if (n === 0) break;
      parseBatch(batch, meta);
      for (let i = 0; i < n; i++) {
        const frame = ++res.frames;
        fieldValues(batch.arena, batch.off[i], batch.capLen[i], batch.origLen[i], batch.linkType[i],
          batch.tsSec[i], batch.tsNsec[i], frame, out);
        const row = rows[frame - 1];
        if (!row) continue;
        for (let k = 0; k < FIELD_NAMES.length; k++) {
          if (cols[k] < 0) continue;
          res.compared++;
          const exp = row[cols[k]] ?? '';
          if (exp !== out[k]) res.diffs.push({ file, frame, column: FIELD_NAMES[k], expected: exp, actual: out[k] });
        }
        // The hot-path parser against the oracle, for what Meta holds of the outer packet.
        const check = (column: string, actual: string) => {
          const exp = row[col(column)] ?? '';
          if (exp !== actual) res.metaDiffs.push({ file, frame, column, expected: exp, actual });
        };
        const fl = meta.flags[i];
        if (fl & MetaFlag.VLAN) check('vlan.id', String(meta.vlanId[i]));
        if ((fl & MetaFlag.L3) && meta.ipVersion[i] === 4) {
          check('ip.src', formatIpv4(meta.src4[i]));
          // tshark rewrites ip.dst for source routes and omits it when the options were cut (README pitfalls 6, 7);
          // Meta keeps the header field, which is valid in both cases.
          if ((row[col('ip.cur_rt')] ?? '') === '' && meta.status[i] !== ParseStatus.TRUNCATED_IPV4_OPTIONS) check('ip.dst', formatIpv4(meta.dst4[i]));
          check('ip.proto', String(meta.l4Proto[i]));
          check('ip.frag_offset', String(meta.fragOff[i]));
          check('ip.flags.mf', fl & MetaFlag.MF ? '1' : '0');
        }
        if ((fl & MetaFlag.PORTS) && meta.innerKind[i] === 0) {
          const p = meta.l4Proto[i] === 6 ? 'tcp' : 'udp';
          check(`${p}.srcport`, String(meta.srcPort[i]));
          check(`${p}.dstport`, String(meta.dstPort[i]));
        }
        if (fl & MetaFlag.TCP_FLAGS) {
          check('tcp.flags.syn', String((meta.tcpFlags[i] >>> 1) & 1));
          check('tcp.flags.ack', String((meta.tcpFlags[i] >>> 4) & 1));
          check('tcp.flags.fin', String(meta.tcpFlags[i] & 1));
          check('tcp.flags.reset', String((meta.tcpFlags[i] >>> 2) & 1));
        }
        if ((fl & MetaFlag.L4) && (meta.l4Proto[i] === 1 || meta.l4Proto[i] === 58)) {
          const p = meta.l4Proto[i] === 1 ? 'icmp' : 'icmpv6';
          check(`${p}.type`, String(meta.icmpType[i]));
          check(`${p}.code`, String(meta.icmpCode[i]));
        }
      }
    }
  } finally {
    reader.close();
  }
  return res;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const files = process.argv.length > 2 ? process.argv.slice(2) : captureFiles();
  let total = 0;
  for (const f of files) {
    const r = compareFile(path.basename(f));
    total += r.diffs.length + r.metaDiffs.length;
    for (const d of r.metaDiffs.slice(0, 5)) console.log(`  META ${r.file} #${d.frame} ${d.column}: expected '${d.expected}' got '${d.actual}'`);
    if (r.diffs.length || r.frames !== r.oracleFrames) {
      console.log(`${r.file}: frames ${r.frames}/${r.oracleFrames} diffs ${r.diffs.length} ${r.readError}`);
      for (const d of r.diffs.slice(0, 8)) console.log(`  #${d.frame} ${d.column}: expected '${d.expected}' got '${d.actual}'`);
    }
  }
  console.log(`total diffs ${total}`);
}
