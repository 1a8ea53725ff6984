// docs/configuration.md against the real schema (src/control/config.ts), so
// the operator's reference cannot drift from what `check-config` accepts:
//   - every key path of ConfigSchema (walked through zod's own definitions,
//     cross-checked with z.toJSONSchema) has a row in one of the doc's key
//     tables, and every row names a key that exists;
//   - the default each row states is the schema's default (the row's value
//     parsed by the key's own schema equals what that schema gives for an
//     absent key; `required` and `—` are checked too);
//   - the complete example and every per-section example validate;
//   - the "What SIGHUP reloads" table marks live exactly the keys
//     Appliance.reload applies (RELOADABLE) and mentions every section.
// A schema object used in two places (the target of lb.services[].targets[]
// and tls.backupTargets[]) is documented once, where it first appears.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { parse as parseYaml } from 'yaml';
import { ConfigSchema, validateConfig, ConfigError } from '../../src/control/config.js';
import { RELOADABLE } from '../../src/control/reload.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const DOC_PATH = path.join(REPO, 'docs/configuration.md');
const doc = fs.readFileSync(DOC_PATH, 'utf8');

// ---------------------------------------------------------------- the schema

type Schema = z.core.$ZodType;
interface Def { type: string; [k: string]: unknown }
const defOf = (s: Schema): Def => (s as unknown as { _zod: { def: Def } })._zod.def;

/** Wrappers that change presence or defaults but not the keys: unwrapped to the schema that has the keys. */
function core(s: Schema): Schema {
  for (;;) {
    const d = defOf(s);
    if (d.type === 'optional' || d.type === 'default' || d.type === 'prefault' || d.type === 'nullable') s = d.innerType as Schema;
    else if (d.type === 'pipe' && defOf(d.out as Schema).type === 'transform') s = d.in as Schema;
    else return s;
  }
}

const LEAVES = new Set(['string', 'number', 'boolean', 'enum', 'literal', 'tuple']);

interface Key { path: string; schema: Schema }

/** Every key path (a.b[].c, m.<name>) with the key's schema as declared (wrappers kept); aliases: reused objects. */
function walkSchema(root: Schema): { keys: Key[]; aliases: Map<string, string> } {
  const keys: Key[] = [];
  const aliases = new Map<string, string>();
  const seen = new Map<Schema, string>();
  const walk = (s: Schema, at: string): void => {
    const c = core(s);
    const d = defOf(c);
    switch (d.type) {
      case 'object': {
        const first = seen.get(c);
        if (first !== undefined) {
          aliases.set(at, first);
          return;
        }
        seen.set(c, at);
        for (const [k, v] of Object.entries(d.shape as Record<string, Schema>)) {
          const p = at ? `${at}.${k}` : k;
          keys.push({ path: p, schema: v });
          walk(v, p);
        }
        return;
      }
      case 'array': walk(d.element as Schema, `${at}[]`); return;
      case 'record': walk(d.valueType as Schema, `${at}.<name>`); return;
      case 'union': for (const o of d.options as Schema[]) walk(o, at); return;
      default:
        if (!LEAVES.has(d.type)) throw new Error(`the docs walker does not know the zod type '${d.type}' (at ${at || 'top level'}): teach test/unit/docs-config.test.ts`);
    }
  };
  walk(root, '');
  return { keys, aliases };
}

/** The same paths from z.toJSONSchema (input side: defaults and optional keys as a user writes them). */
function jsonSchemaPaths(root: Schema): string[] {
  const js = z.toJSONSchema(root, { io: 'input' }) as Record<string, unknown>;
  const out: string[] = [];
  const walk = (n: Record<string, unknown>, at: string): void => {
    for (const o of (n.anyOf ?? n.oneOf ?? []) as Record<string, unknown>[]) walk(o, at);
    if (n.type === 'object' && n.properties) {
      for (const [k, v] of Object.entries(n.properties as Record<string, Record<string, unknown>>)) {
        const p = at ? `${at}.${k}` : k;
        out.push(p);
        walk(v, p);
      }
    }
    if (n.type === 'object' && n.additionalProperties && typeof n.additionalProperties === 'object') walk(n.additionalProperties as Record<string, unknown>, `${at}.<name>`);
    if (n.type === 'array' && n.items && !Array.isArray(n.items)) walk(n.items as Record<string, unknown>, `${at}[]`);
  };
  walk(js, '');
  return out;
}

// ---------------------------------------------------------------- the doc

interface Row { key: string; type: string; def: string; range: string; what: string; line: number }

function cells(line: string): string[] {
  // Cells hold no '|' (the doc writes none inside a cell).
  return line.trim().replace(/^\|/, '').replace(/\|$/, '').split('|').map((c) => c.trim());
}

/** Rows of the tables whose header is `key | type | default | range / values | what it does`. */
function keyRows(text: string): Row[] {
  const rows: Row[] = [];
  const lines = text.split('\n');
  let inKeyTable = false;
  lines.forEach((line, i) => {
    if (!line.startsWith('|')) {
      inKeyTable = false;
      return;
    }
    const c = cells(line);
    if (c[0] === 'key' && c[2] === 'default') {
      inKeyTable = true;
      return;
    }
    if (!inKeyTable || c.every((x) => /^:?-+:?$/.test(x))) return;
    const m = /^`([^`]+)`$/.exec(c[0]);
    rows.push({ key: m ? m[1] : `(unreadable key cell '${c[0]}')`, type: c[1] ?? '', def: c[2] ?? '', range: c[3] ?? '', what: c[4] ?? '', line: i + 1 });
  });
  return rows;
}

/** The body of a `## heading` section. */
function section(text: string, heading: string): string {
  const start = text.indexOf(`\n## ${heading}\n`);
  if (start < 0) return '';
  const rest = text.slice(start + heading.length + 5);
  const end = rest.search(/\n## /);
  return end < 0 ? rest : rest.slice(0, end);
}

function yamlBlocks(text: string): { yaml: string; line: number }[] {
  const out: { yaml: string; line: number }[] = [];
  const re = /^```yaml\n([\s\S]*?)^```$/gm;
  for (let m = re.exec(text); m; m = re.exec(text)) out.push({ yaml: m[1], line: text.slice(0, m.index).split('\n').length });
  return out;
}

/** Canonical JSON (sorted keys, undefined members dropped) for comparisons. */
function canon(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) => (x && typeof x === 'object' && !Array.isArray(x)
    ? Object.fromEntries(Object.entries(x as Record<string, unknown>).filter(([, y]) => y !== undefined).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
    : x));
}

/** Defaults that depend on the machine: the doc says `computed: ...`, the test says what they must be. */
const COMPUTED: Record<string, () => unknown> = {
  'guard.node': () => os.hostname(),
};

const walked = walkSchema(ConfigSchema as unknown as Schema);
const rows = keyRows(doc);

t.test('the schema walk is complete (cross-checked with z.toJSONSchema)', async (t) => {
  const mine = new Set(walked.keys.map((k) => k.path));
  const underAlias = (p: string) => [...walked.aliases.keys()].some((a) => p.startsWith(`${a}.`));
  const theirs = jsonSchemaPaths(ConfigSchema as unknown as Schema).filter((p) => !underAlias(p));
  t.ok(mine.size > 100, `${mine.size} key paths walked`);
  t.same(theirs.filter((p) => !mine.has(p)), [], 'every key in the JSON Schema was walked');
  t.same([...mine].filter((p) => !theirs.includes(p)), [], 'every walked key is in the JSON Schema');
  t.ok(walked.aliases.has('lb.services[].tls.backupTargets[]'), 'reused target objects are seen as aliases');
});

t.test('every key of the schema has a row in docs/configuration.md, and every row is a key', async (t) => {
  const byKey = new Map<string, Row[]>();
  for (const r of rows) byKey.set(r.key, [...(byKey.get(r.key) ?? []), r]);
  const missing = walked.keys.map((k) => k.path).filter((p) => !byKey.has(p));
  t.same(missing, [], `keys without a row in docs/configuration.md (add a row to the section's table)`);
  const known = new Set(walked.keys.map((k) => k.path));
  t.same(rows.filter((r) => !known.has(r.key)).map((r) => `line ${r.line}: ${r.key}`), [], 'rows naming no key of the schema (stale or misspelt)');
  t.same([...byKey].filter(([, v]) => v.length > 1).map(([k]) => k), [], 'no key documented twice');
  t.same(rows.filter((r) => !r.type || !r.what).map((r) => `line ${r.line}: ${r.key}`), [], 'every row has a type and a description');
});

t.test('every default stated in the doc is the schema\'s', async (t) => {
  const schemaOf = new Map(walked.keys.map((k) => [k.path, k.schema]));
  let checked = 0;
  for (const r of rows) {
    const s = schemaOf.get(r.key);
    if (!s) continue;
    const absent = z.safeParse(s, undefined);
    const where = `${r.key} (docs/configuration.md line ${r.line}, default '${r.def}')`;
    const lit = /^`([^`]*)`/.exec(r.def);
    if (lit) {
      const stated = z.safeParse(s, parseYaml(lit[1]));
      t.ok(stated.success, `${where}: the stated default is a valid value`);
      t.ok(absent.success && absent.data !== undefined, `${where}: the schema has a default`);
      if (stated.success && absent.success) t.equal(canon(stated.data), canon(absent.data), `${where}: equals the schema's default`);
    } else if (r.def === 'required') {
      t.notOk(absent.success, `${where}: the schema requires it`);
    } else if (r.def === '—') {
      t.ok(absent.success && absent.data === undefined, `${where}: optional with no default (schema gives ${absent.success ? canon(absent.data) : 'an error'})`);
    } else if (r.def.startsWith('computed:')) {
      const f = COMPUTED[r.key];
      t.ok(f, `${where}: a computed default the test knows`);
      if (f) t.equal(absent.success ? canon(absent.data) : 'error', canon(f()), `${where}: the computed default`);
    } else {
      t.fail(`${where}: write the default as \`value\`, required, — or computed: ...`);
    }
    checked++;
  }
  t.equal(checked, walked.keys.length, 'one default checked per key');
});

t.test('the examples in the doc validate', async (t) => {
  const blocks = yamlBlocks(doc);
  t.ok(blocks.length >= 8, `${blocks.length} yaml examples`);
  const [full, ...parts] = blocks;
  const problems = (v: unknown): string[] => {
    try {
      validateConfig(v, 'docs/configuration.md');
      return [];
    } catch (e) {
      if (e instanceof ConfigError) return e.problems;
      throw e;
    }
  };
  const whole = parseYaml(full.yaml) as Record<string, unknown>;
  t.same(problems(whole), [], `the complete example (line ${full.line}) passes validateConfig`);
  t.same(Object.keys(whole).sort(), Object.keys((ConfigSchema as unknown as { shape: Record<string, unknown> }).shape).sort(), 'the complete example shows every section');
  for (const b of parts) {
    const v = parseYaml(b.yaml) as Record<string, unknown>;
    // Per-section examples: the required nat section is added when the example is about another one.
    const doc2 = 'nat' in v ? v : { nat: { inside: ['198.18.1.0/24'], pool: '198.19.2.0/24' }, ...v };
    t.same(problems(doc2), [], `the example at line ${b.line} (${Object.keys(v).join(', ')}) validates`);
  }
});

t.test('"What SIGHUP reloads" matches Appliance.reload', async (t) => {
  const body = section(doc, 'What SIGHUP reloads');
  t.ok(body.length > 0, 'the section exists');
  const live = new Set<string>();
  const mentioned = new Set<string>();
  for (const line of body.split('\n')) {
    if (!line.startsWith('|')) continue;
    const c = cells(line);
    const keys = [...c[0].matchAll(/`([^`]+)`/g)].map((m) => m[1]);
    for (const k of keys) mentioned.add(k.split(/[.[]/)[0]);
    if (c[1] === 'live') for (const k of keys) live.add(k);
  }
  t.same([...live].sort(), [...RELOADABLE].sort(), 'the keys marked live are the ones reload applies');
  const sections = Object.keys((ConfigSchema as unknown as { shape: Record<string, unknown> }).shape);
  t.same(sections.filter((s) => !mentioned.has(s)), [], 'every top-level section is said to be live or to need a restart');
});
