// What a SIGHUP may change while the appliance runs (Appliance.reload,
// docs/configuration.md "What SIGHUP reloads"), and the key paths that
// differ between two configurations. Control plane only.

/** Configuration keys a SIGHUP applies while running (docs/configuration.md "What SIGHUP reloads"); a key under one of them counts too. */
export const RELOADABLE = ['lb', 'log.level', 'stats.interval'] as const;

export interface ReloadResult {
  /** Changed key paths that took effect. */
  applied: string[];
  /** Changed key paths that keep their running value until a restart. */
  needsRestart: string[];
}

export function isReloadable(key: string): boolean {
  return RELOADABLE.some((r) => key === r || key.startsWith(`${r}.`) || key.startsWith(`${r}[`));
}

/** Key paths (a.b[2].c) whose values differ between two configurations; an array of another length is one change. */
export function changedKeys(a: unknown, b: unknown, at = ''): string[] {
  if (Array.isArray(a) && Array.isArray(b)) {
    if (a.length !== b.length) return [at];
    return a.flatMap((x, i) => changedKeys(x, b[i], `${at}[${i}]`));
  }
  const obj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  if (obj(a) && obj(b)) {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])];
    return keys.flatMap((k) => (a[k] === undefined && b[k] === undefined ? [] : changedKeys(a[k], b[k], at ? `${at}.${k}` : k)));
  }
  return Object.is(a, b) ? [] : [at];
}
