// An open-addressing index of (hash, id + 1) pairs over one Int32Array, as
// the flow table's (src/flow/flow-table.ts): records live elsewhere at
// stable ids, the index only finds them. Linear probing bounded to `probe`
// slots, deletion by backward shift (no tombstones, so probe lengths never
// degrade). Lookups are written inline by the owner (it compares its own
// key arrays): walk `pairs` from `home(h)` for at most `probe` slots,
// stopping at an empty pair (id word 0).

export class IdIndex {
  readonly slots: number;
  readonly mask: number;
  readonly probe: number;
  /** pairs[2s] = hash, pairs[2s + 1] = id + 1 (0 = empty). */
  readonly pairs: Int32Array;

  constructor(slots: number, probe: number) {
    if (!Number.isInteger(slots) || slots < 8 || (slots & (slots - 1)) !== 0) throw new RangeError(`index slots must be a power of two >= 8, got ${slots}`);
    this.slots = slots;
    this.mask = slots - 1;
    this.probe = Math.max(1, Math.min(probe, slots));
    this.pairs = new Int32Array(slots * 2);
  }

  /** Inserts id under hash h in the first empty slot of its window; false when the window is full. */
  insert(h: number, id: number): boolean {
    const pairs = this.pairs, mask = this.mask;
    let s = h & mask;
    for (let p = 0; p < this.probe; p++) {
      if (pairs[2 * s + 1] === 0) {
        pairs[2 * s] = h;
        pairs[2 * s + 1] = id + 1;
        return true;
      }
      s = (s + 1) & mask;
    }
    return false;
  }

  /** Removes id (stored under hash h); false if it was not found in its window. */
  remove(h: number, id: number): boolean {
    const pairs = this.pairs, mask = this.mask;
    let s = h & mask;
    let p = 0;
    for (; p < this.probe; p++) {
      if (pairs[2 * s + 1] === id + 1) break;
      s = (s + 1) & mask;
    }
    if (p === this.probe) return false;
    let hole = s, j = s;
    for (;;) {
      j = (j + 1) & mask;
      const e = pairs[2 * j + 1];
      if (e === 0) break;
      const home = pairs[2 * j] & mask;
      // The pair at j may fill the hole unless its home lies cyclically in (hole, j].
      if (((j - home) & mask) >= ((j - hole) & mask)) {
        pairs[2 * hole] = pairs[2 * j];
        pairs[2 * hole + 1] = e;
        hole = j;
      }
    }
    pairs[2 * hole] = 0;
    pairs[2 * hole + 1] = 0;
    return true;
  }

  clear(): void {
    this.pairs.fill(0);
  }
}
