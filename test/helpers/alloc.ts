// Heap growth per packet of a loop, robust against a fixed amount of heap
// that V8 may add during any measuring window (feedback, code, the
// measurement itself: ~100 KB seen on Node 20 whatever the loop does). Two
// windows of R and 3R rounds: g1 = c + a*R, g2 = c + a*3R, so the per-round
// allocation a = (g2 - g1) / 2R, whatever c is. An attempt in which a
// collection ran (a window shrank) does not count; the best of three is
// kept (JIT work in one attempt is transient).

export interface AllocResult {
  /** Bytes per packet (Infinity when no attempt counted). */
  perPacket: number;
  /** Attempts without a collection. */
  counted: number;
}

export function heapGrowthPerPacket(round: () => void, packetsPerRound: number, rounds = 300): AllocResult {
  let perPacket = Infinity, counted = 0;
  for (let attempt = 0; attempt < 12 && counted < 3 && perPacket >= 0.5; attempt++) {
    globalThis.gc?.();
    const m0 = process.memoryUsage().heapUsed;
    for (let k = 0; k < rounds; k++) round();
    const m1 = process.memoryUsage().heapUsed;
    for (let k = 0; k < 3 * rounds; k++) round();
    const m2 = process.memoryUsage().heapUsed;
    const g1 = m1 - m0, g2 = m2 - m1;
    if (g1 < 0 || g2 < 0) continue;
    counted++;
    perPacket = Math.min(perPacket, Math.max(0, (g2 - g1) / (2 * rounds * packetsPerRound)));
  }
  return { perPacket, counted };
}
