// Differential test: every capture in ../shared/pcaps read with our own
// reader (src/io/pcap-file.ts), every frame's fields computed by
// src/wire/fields.ts and compared to the tshark oracle X.fields.csv.
// Divergences are allowed only when listed in divergences.yaml, and a listed
// entry that no longer diverges fails too.
import t from 'tap';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { captureFiles, compareFile, type Divergence } from './corpus.js';
import { FIELD_NAMES } from '../../src/wire/fields.js';

interface Allowed { file: string; frame: number; column: string; reason: string }

const allowedDoc = parseYaml(readFileSync(path.join(path.dirname(new URL(import.meta.url).pathname), 'divergences.yaml'), 'utf8')) as { divergences: Allowed[] | null };
const allowed = allowedDoc.divergences ?? [];
for (const a of allowed) {
  if (!a.file || !Number.isInteger(a.frame) || !(FIELD_NAMES as readonly string[]).includes(a.column) || !a.reason) {
    throw new Error(`divergences.yaml: bad entry ${JSON.stringify(a)} (needs file, frame, column from FIELD_NAMES, reason)`);
  }
}
const key = (d: { file: string; frame: number; column: string }) => `${d.file}#${d.frame}:${d.column}`;

const files = captureFiles();
t.ok(files.length >= 75, `corpus has ${files.length} captures`);
const known = new Set(files);
for (const a of allowed) t.ok(known.has(a.file), `divergences.yaml names an existing capture: ${a.file}`);

let totalCompared = 0;
for (const file of files) {
  const r = compareFile(file);
  totalCompared += r.compared;
  const allowedHere = new Map(allowed.filter((a) => a.file === file).map((a) => [key(a), a]));
  const unexpected: Divergence[] = r.diffs.filter((d) => !allowedHere.has(key(d)));
  const seen = new Set(r.diffs.map(key));
  const stale = [...allowedHere.keys()].filter((k) => !seen.has(k));
  const msg: string[] = [];
  if (r.frames !== r.oracleFrames) msg.push(`read ${r.frames} frames, oracle has ${r.oracleFrames}${r.readError ? ` (${r.readError})` : ''}`);
  for (const d of unexpected.slice(0, 20)) msg.push(`frame ${d.frame} ${d.column}: tshark '${d.expected}', ours '${d.actual}'`);
  if (unexpected.length > 20) msg.push(`... and ${unexpected.length - 20} more`);
  // The hot-path Meta must agree with tshark wherever it describes the same header (no allowances).
  for (const d of r.metaDiffs.slice(0, 20)) msg.push(`Meta frame ${d.frame} ${d.column}: tshark '${d.expected}', parser '${d.actual}'`);
  for (const k of stale) msg.push(`listed divergence no longer diverges: ${k}`);
  t.ok(msg.length === 0,
    `${file}: ${r.frames} frames, ${r.compared} fields compared, ${r.diffs.length} divergences (${r.diffs.length - unexpected.length} allowed)`,
    msg.length ? { diagnostic: true, diff: msg.join('\n') } : {});
}
t.ok(totalCompared > 2385 * 30, `${totalCompared} field values compared`);
