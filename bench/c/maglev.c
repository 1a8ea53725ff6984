/* C floor for bench/lb.ts: the same Maglev table as src/lb/maglev.ts (keys
 * hashed with MurmurHash3 x86_32 under the seeds 42 and 2718281828 for offset
 * and skip, backends sorted by key, Katran MaglevHashV2 weight credits) and
 * the same per-packet lookup (MurmurHash3 block mixing of the IPv4 5-tuple
 * with its finaliser, then table[hash % M]), over the same xorshift32 stream
 * of random 5-tuples. Prints the table's FNV-1a fingerprint and the sum of
 * the chosen backend ids so the bench can check both sides computed the same
 * thing.
 *
 * Backends: n of them, key "10.<i / 65536>.<(i / 256) % 256>.<i % 256>:443"
 * (as bench/lb.ts), id i, weight i % 4 + 1.
 *
 * Build: cc -O2 -o bench/c/maglev.bin bench/c/maglev.c
 * Run:   bench/c/maglev.bin <stream> <n>:<size> [<n>:<size> ...]   -> one JSON line
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FLOW_SEED 0x4d61676cu
#define SEED_OFFSET 42u
#define SEED_SKIP 2718281828u

static inline uint32_t rotl(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }
static inline uint32_t mix32(uint32_t h, uint32_t k) {
  k *= 0xcc9e2d51u; k = rotl(k, 15); k *= 0x1b873593u;
  h ^= k; h = rotl(h, 13); return h * 5 + 0xe6546b64u;
}
static inline uint32_t fmix32(uint32_t h) {
  h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u; h ^= h >> 16; return h;
}
static uint32_t murmur3(const uint8_t *p, uint32_t n, uint32_t seed) {
  uint32_t h = seed, blocks = n & ~3u;
  for (uint32_t i = 0; i < blocks; i += 4) h = mix32(h, p[i] | p[i + 1] << 8 | p[i + 2] << 16 | (uint32_t)p[i + 3] << 24);
  uint32_t tail = n & 3;
  if (tail) {
    uint32_t k = p[blocks];
    if (tail > 1) k ^= p[blocks + 1] << 8;
    if (tail > 2) k ^= p[blocks + 2] << 16;
    k *= 0xcc9e2d51u; k = rotl(k, 15); k *= 0x1b873593u; h ^= k;
  }
  return fmix32(h ^ n);
}
static inline uint32_t flow_hash4(uint32_t src, uint32_t dst, uint32_t sp, uint32_t dp, uint32_t proto) {
  uint32_t h = FLOW_SEED;
  h = mix32(h, src); h = mix32(h, dst); h = mix32(h, sp << 16 | dp); h = mix32(h, proto);
  return fmix32(h ^ 16);
}

typedef struct { char key[32]; int32_t id; int32_t weight; } backend_t;
static int by_key(const void *a, const void *b) { return strcmp(((const backend_t *)a)->key, ((const backend_t *)b)->key); }

static void build(const backend_t *bs, uint32_t n, int32_t *table, uint32_t m) {
  backend_t *live = malloc(n * sizeof *live);
  uint32_t k = 0;
  for (uint32_t i = 0; i < n; i++) if (bs[i].weight > 0) live[k++] = bs[i];
  for (uint32_t i = 0; i < m; i++) table[i] = -1;
  if (k == 0) { free(live); return; }
  qsort(live, k, sizeof *live, by_key);
  uint32_t *pos = malloc(k * 4), *skip = malloc(k * 4);
  int32_t *credit = calloc(k, 4);
  int32_t maxw = 0;
  for (uint32_t i = 0; i < k; i++) {
    uint32_t len = (uint32_t)strlen(live[i].key);
    pos[i] = murmur3((const uint8_t *)live[i].key, len, SEED_OFFSET) % m;
    skip[i] = murmur3((const uint8_t *)live[i].key, len, SEED_SKIP) % (m - 1) + 1;
    if (live[i].weight > maxw) maxw = live[i].weight;
  }
  uint32_t filled = 0;
  for (;;) {
    for (uint32_t i = 0; i < k; i++) {
      int32_t c0 = credit[i] + live[i].weight;
      if (c0 < maxw) { credit[i] = c0; continue; }
      credit[i] = c0 - maxw;
      uint32_t s = skip[i], c = pos[i];
      while (table[c] != -1) { c += s; if (c >= m) c -= m; }
      table[c] = live[i].id;
      c += s; if (c >= m) c -= m;
      pos[i] = c;
      if (++filled == m) goto done;
    }
  }
done:
  free(live); free(pos); free(skip); free(credit);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  uint32_t q = argc > 1 ? (uint32_t)strtoul(argv[1], 0, 10) : (1u << 20);
  /* The same stream as bench/lb.ts: xorshift32 from 2463534242. */
  uint32_t *qs = malloc(q * 4), *qd = malloc(q * 4), *qsp = malloc(q * 4), *qdp = malloc(q * 4);
  uint32_t x = 2463534242u;
#define XS() (x ^= x << 13, x ^= x >> 17, x ^= x << 5, x)
  for (uint32_t j = 0; j < q; j++) {
    qs[j] = XS(); qd[j] = XS();
    uint32_t p = XS();
    qsp[j] = p >> 16; qdp[j] = p & 0xffff;
  }
  printf("{\"stream\":%u", q);
  for (int a = 2; a < argc; a++) {
    uint32_t n = 0, m = 0;
    if (sscanf(argv[a], "%u:%u", &n, &m) != 2 || m < 2) { fprintf(stderr, "bad config %s\n", argv[a]); return 2; }
    backend_t *bs = calloc(n, sizeof *bs);
    for (uint32_t i = 0; i < n; i++) {
      snprintf(bs[i].key, sizeof bs[i].key, "10.%u.%u.%u:443", i / 65536, (i / 256) % 256, i % 256);
      bs[i].id = (int32_t)i; bs[i].weight = (int32_t)(i % 4 + 1);
    }
    int32_t *table = malloc((size_t)m * 4);
    /* Build until 0.3 s has passed (at least 3 times); keep the best. */
    double best_build = 1e9, start = now_s();
    int reps = 0;
    do {
      double t0 = now_s();
      build(bs, n, table, m);
      double t1 = now_s();
      if (t1 - t0 < best_build) best_build = t1 - t0;
      reps++;
    } while (reps < 3 || now_s() - start < 0.3);
    uint32_t fp = 0x811c9dc5u;
    for (uint32_t i = 0; i < m; i++) fp = (fp ^ (uint32_t)table[i]) * 0x01000193u;
    /* Lookups: repeat the stream until 0.3 s has passed; keep the best pass. */
    double best = 0;
    uint64_t sum = 0;
    start = now_s();
    do {
      uint64_t s = 0;
      double t0 = now_s();
      for (uint32_t j = 0; j < q; j++) s += (uint32_t)table[flow_hash4(qs[j], qd[j], qsp[j], qdp[j], 6) % m];
      double t1 = now_s();
      if (q / (t1 - t0) > best) best = q / (t1 - t0);
      sum = s;
    } while (now_s() - start < 0.3);
    printf(",\"build_ms_%u_%u\":%.4f,\"fp_%u_%u\":%u,\"lookup_per_s_%u_%u\":%.0f,\"sum_%u_%u\":%llu", n, m, best_build * 1e3, n, m, fp, n, m,
           best, n, m, (unsigned long long)sum);
    free(bs); free(table);
  }
  printf("}\n");
  return 0;
}
