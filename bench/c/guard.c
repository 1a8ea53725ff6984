/* C floor for bench/guard.ts: the guard sensor's per-packet work as
 * src/guard/sensor.ts + src/guard/blocklist.ts do it, over the same
 * structure-of-arrays packet metadata and the same packet stream (same LCG):
 *   - skip packets whose verdict is not FORWARD or without L3;
 *   - the enforcement table: for each prefix length present (longest
 *     first), a 2^16-bit bitmap indexed by a multiplicative hash of the
 *     masked source (a clear bit: not blocked at this length), and on a set
 *     bit MurmurHash3 of the masked source with the length and a linear probe
 *     until an empty slot (load <= 1/2);
 *   - TCP SYN without ACK: MurmurHash3 of the source, linear probe in the
 *     per-interval address table, count.
 *
 * Build: cc -O2 -o bench/c/guard.bin bench/c/guard.c
 * Run:   bench/c/guard.bin <packets> <sources> <blocked-exact> <prefixes 0|1> -> one JSON line
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static inline uint32_t rotl(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }
static inline uint32_t mix32(uint32_t h, uint32_t k) {
  k *= 0xcc9e2d51u; k = rotl(k, 15); k *= 0x1b873593u;
  h ^= k; h = rotl(h, 13); return h * 5 + 0xe6546b64u;
}
static inline uint32_t fmix32(uint32_t h) {
  h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u; h ^= h >> 16; return h;
}
static inline uint32_t mask_of(int len) { return len <= 0 ? 0 : len >= 32 ? 0xffffffffu : ~0u << (32 - len); }

/* enforcement table */
static uint32_t *bkey, *btag, bmask, bseed = 99;
static int lens[3], nlens;
static uint32_t bits[3][2048]; /* 2^16 bits per length */
static inline uint32_t bitidx(uint32_t m, int len) { return (uint32_t)((m ^ (uint32_t)len) * 0x9e3779b1u) >> 16; }
static uint32_t bhash(uint32_t a, uint32_t t) { return fmix32(mix32(mix32(bseed, a), t) ^ 8); }
static void binsert(uint32_t a, int len) {
  uint32_t t = (4u << 8) | (uint32_t)len, m = a & mask_of(len);
  uint32_t s = bhash(m, t) & bmask;
  while (btag[s] != 0) { if (btag[s] == t && bkey[s] == m) return; s = (s + 1) & bmask; }
  btag[s] = t; bkey[s] = m;
  int li = 0;
  while (lens[li] != len) li++;
  uint32_t h = bitidx(m, len);
  bits[li][h >> 5] |= 1u << (h & 31);
}
static inline int blookup(uint32_t a) {
  for (int k = 0; k < nlens; k++) {
    int len = lens[k];
    uint32_t t = (4u << 8) | (uint32_t)len, m = a & mask_of(len);
    uint32_t h = bitidx(m, len);
    if ((bits[k][h >> 5] & (1u << (h & 31))) == 0) continue;
    uint32_t s = bhash(m, t) & bmask;
    for (;;) {
      uint32_t g = btag[s];
      if (g == 0) break;
      if (g == t && bkey[s] == m) return 1;
      s = (s + 1) & bmask;
    }
  }
  return 0;
}

/* address table */
#define CAP (1u << 16)
#define PROBE 32
static uint32_t akey[CAP]; static uint8_t afam[CAP]; static uint32_t acnt[CAP * 4];
static uint32_t aseed = 5;

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 1 << 20;
  int sources = argc > 2 ? atoi(argv[2]) : 10000;
  int blocked = argc > 3 ? atoi(argv[3]) : 1000;
  int prefixes = argc > 4 ? atoi(argv[4]) : 1;
  uint8_t *verdict = calloc(n, 1), *proto = calloc(n, 1);
  uint16_t *flags = calloc(n, 2), *tcp = calloc(n, 2);
  uint32_t *src = calloc(n, 4);
  /* the packet stream: the same LCG as bench/guard.ts */
  uint32_t x = 12345;
  for (int i = 0; i < n; i++) {
    x = x * 1103515245u + 12345u;
    src[i] = 0xc6120000u + (uint32_t)((x >> 8) % (uint32_t)sources) * 5u; /* 198.18.0.0/16 for up to 13107 sources */
    x = x * 1103515245u + 12345u;
    tcp[i] = ((x >> 16) & 3) == 0 ? 0x02 : 0x10;
    flags[i] = 1 | 2 | 0x80 | 0x400; /* L3 L4 TCP_FLAGS PORTS */
    proto[i] = 6;
  }
  uint32_t cap = 16;
  while (cap < (uint32_t)(blocked + 3) * 2) cap *= 2;
  bkey = calloc(cap, 4); btag = calloc(cap, 4); bmask = cap - 1;
  nlens = 0;
  if (blocked > 0) lens[nlens++] = 32;
  if (prefixes) { lens[nlens++] = 24; lens[nlens++] = 16; }
  for (int i = 0; i < blocked; i++) binsert(0xc6130000u + (uint32_t)i * 13u, 32);
  if (prefixes) { binsert(0xcb007100u, 24); binsert(0xc0000200u, 24); binsert(0x64400000u, 16); }
  struct timespec t0, t1;
  long drops = 0, attempts = 0, full = 0;
  double best = 1e9;
  for (int rep = 0; rep < 5; rep++) {
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < n; i++) {
      if (verdict[i] != 0) continue;
      uint16_t fl = flags[i];
      if ((fl & 1) == 0) continue;
      if (nlens > 0 && blookup(src[i])) { verdict[i] = 1; drops++; continue; }
      if (proto[i] != 6) continue;
      if ((fl & 8) != 0) continue; /* fragments: a rare path, not in this stream */
      if ((fl & 0x80) == 0 || (tcp[i] & 0x12) != 0x02) continue;
      uint32_t a = src[i];
      uint32_t h = fmix32(mix32(aseed, a) ^ 4) & (CAP - 1);
      int s = -1;
      for (int p = 0; p < PROBE; p++) {
        if (afam[h] == 0) { afam[h] = 4; akey[h] = a; s = (int)h; break; }
        if (afam[h] == 4 && akey[h] == a) { s = (int)h; break; }
        h = (h + 1) & (CAP - 1);
      }
      attempts++;
      if (s < 0) full++; else acnt[(uint32_t)s << 2]++;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double sec = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (sec < best) best = sec;
  }
  printf("{\"decisions_per_s\": %.0f, \"attempts\": %ld, \"drops\": %ld, \"table_full\": %ld, \"packets\": %d, \"lengths\": %d}\n",
         n / best, attempts, drops, full, n, nlens);
  return 0;
}
