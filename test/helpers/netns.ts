// Network namespaces for tests that need real interfaces. Every namespace a
// test creates is named `pcn-<pid>-<tag>` and deleted in t.teardown (also on
// failure); nothing else is touched. Code that must run inside a namespace is
// a helper script started with `ip netns exec NS node --import=tsx script.ts`
// (a process cannot enter a namespace from JS); it prints one JSON line.

import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const NS_PREFIX = `pcn-${process.pid}-`;

/** Why namespace tests cannot run here, or null when they can. */
export function nsSkipReason(needTun = false): string | null {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return 'needs root (network namespaces, raw sockets)';
  if (needTun && !existsSync('/dev/net/tun')) return '/dev/net/tun is missing';
  return null;
}

export function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

interface Teardown {
  teardown(fn: () => void | Promise<void>): void;
}

/** Creates namespace `pcn-<pid>-<tag>` with lo up and registers its deletion; returns its name. */
export function makeNs(t: Teardown, tag: string): string {
  const name = NS_PREFIX + tag;
  t.teardown(() => {
    try {
      sh('ip', ['netns', 'del', name]);
    } catch {
      /* already gone */
    }
  });
  sh('ip', ['netns', 'add', name]);
  sh('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  return name;
}

/** A veth pair: `a` in nsA with addrA, `b` in nsB with addrB (CIDR strings), both up. */
export function vethPair(nsA: string, a: string, addrA: string | null, nsB: string, b: string, addrB: string | null): void {
  sh('ip', ['-n', nsA, 'link', 'add', a, 'type', 'veth', 'peer', 'name', b, 'netns', nsB]);
  if (addrA) sh('ip', ['-n', nsA, 'addr', 'add', addrA, 'dev', a]);
  if (addrB) sh('ip', ['-n', nsB, 'addr', 'add', addrB, 'dev', b]);
  sh('ip', ['-n', nsA, 'link', 'set', a, 'up']);
  sh('ip', ['-n', nsB, 'link', 'set', b, 'up']);
}

export function helperPath(name: string): string {
  return path.join(REPO_ROOT, 'test/helpers', name);
}

export interface Running {
  child: ChildProcess;
  /** Resolves at the first stdout line equal to `READY`. */
  ready: Promise<void>;
  /** Resolves with the parsed last stdout line when the process exits 0. */
  result: Promise<unknown>;
}

/**
 * Starts `script` inside `ns` (or in the current namespace when ns is null)
 * with `arg` as JSON. `dropCaps` runs it as root without any capability
 * (empty bounding and inheritable sets), to see permission errors.
 */
export function startHelper(ns: string | null, script: string, arg: unknown, timeoutMs = 20000, dropCaps = false): Running {
  let node = [process.execPath, '--import=tsx', helperPath(script), JSON.stringify(arg)];
  if (dropCaps) node = ['setpriv', '--inh-caps=-all', '--bounding-set=-all', ...node];
  const cmd: string[] = ns ? ['ip', 'netns', 'exec', ns, ...node] : node;
  const child = spawn(cmd[0], cmd.slice(1), { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let readyResolve: () => void = () => {};
  const ready = new Promise<void>((res) => (readyResolve = res));
  child.stdout!.setEncoding('utf8');
  child.stderr!.setEncoding('utf8');
  child.stdout!.on('data', (d: string) => {
    out += d;
    if (/^READY$/m.test(out)) readyResolve();
  });
  child.stderr!.on('data', (d: string) => (err += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const result = new Promise<unknown>((resolve, reject) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      readyResolve();
      const lines = out.trim().split('\n').filter((l) => l.startsWith('{'));
      if (code !== 0) {
        reject(new Error(`${script} in ${ns ?? 'current ns'} exited ${code ?? signal}: ${err.trim()} ${out.trim()}`));
        return;
      }
      try {
        resolve(JSON.parse(lines[lines.length - 1]));
      } catch {
        reject(new Error(`${script}: no JSON result line in: ${out} ${err}`));
      }
    });
  });
  return { child, ready, result };
}

export function runHelper<T>(ns: string | null, script: string, arg: unknown, timeoutMs = 20000, dropCaps = false): Promise<T> {
  return startHelper(ns, script, arg, timeoutMs, dropCaps).result as Promise<T>;
}
