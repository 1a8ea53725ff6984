/* C floor for the parse benchmark: loads a pcap file (Ethernet, little-endian
 * micro- or nanosecond) into memory, then extracts the same fields as
 * portcullis's parser (VLAN tags, IPv4 with options and fragment offset, IPv6
 * with hop-by-hop/routing/destination-options/fragment/AH headers, TCP/UDP
 * ports and TCP flags, ICMP type/code) with the same length checks, over
 * every packet, for a number of rounds. Prints one JSON line:
 *   {"packets": N, "pps": R, "check": C}
 * `check` is a sum of extracted fields the JS side computes the same way, so
 * the two are known to do the same work. Compiled with cc -O2. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t le32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

typedef struct { uint32_t off, caplen; } rec_t;

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: %s file.pcap rounds\n", argv[0]); return 2; }
  FILE *f = fopen(argv[1], "rb");
  if (!f) { perror(argv[1]); return 1; }
  fseek(f, 0, SEEK_END); long sz = ftell(f); fseek(f, 0, SEEK_SET);
  uint8_t *data = malloc(sz);
  if (fread(data, 1, sz, f) != (size_t)sz) { perror("read"); return 1; }
  fclose(f);
  int rounds = atoi(argv[2]);
  size_t cap = 1 << 20, n = 0;
  rec_t *recs = malloc(cap * sizeof *recs);
  for (long o = 24; o + 16 <= sz;) {
    uint32_t cl = le32(data + o + 8);
    if (o + 16 + cl > (uint64_t)sz) break;
    if (n == cap) { cap *= 2; recs = realloc(recs, cap * sizeof *recs); }
    recs[n].off = o + 16; recs[n].caplen = cl; n++;
    o += 16 + cl;
  }
  uint64_t check = 0;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int r = 0; r < rounds; r++) {
    for (size_t i = 0; i < n; i++) {
      const uint8_t *p = data + recs[i].off;
      uint32_t end = recs[i].caplen, o = 12;
      if (end < 14) continue;
      uint16_t et = be16(p + o);
      int depth = 0;
      while ((et == 0x8100 || et == 0x88a8 || et == 0x9100) && depth < 8) {
        if (o + 6 > end) goto next;
        et = be16(p + o + 4); o += 4; depth++;
      }
      o += 2;
      uint32_t l3 = o, l4 = 0, proto = 0, fragoff = 0, sport = 0, dport = 0, flags = 0;
      if (et == 0x0800) {
        if (l3 + 20 > end || (p[l3] >> 4) != 4) goto next;
        uint32_t ihl = (p[l3] & 15) * 4, tot = be16(p + l3 + 2);
        if (ihl < 20 || l3 + ihl > end || tot < ihl) goto next;
        proto = p[l3 + 9];
        fragoff = be16(p + l3 + 6) & 0x1fff;
        if (l3 + tot < end) end = l3 + tot;
        l4 = l3 + ihl;
        if (fragoff) goto done;
      } else if (et == 0x86dd) {
        if (l3 + 40 > end || (p[l3] >> 4) != 6) goto next;
        uint32_t pl = be16(p + l3 + 4);
        if (l3 + 40 + pl < end) end = l3 + 40 + pl;
        uint32_t nh = p[l3 + 6], x = l3 + 40;
        for (int k = 0; k < 16; k++) {
          if (nh == 0 || nh == 43 || nh == 60) {
            if (x + 8 > end) goto next;
            nh = p[x]; x += 8 + p[x + 1] * 8;
          } else if (nh == 44) {
            if (x + 8 > end) goto next;
            fragoff = be16(p + x + 2) >> 3; nh = p[x]; x += 8;
          } else if (nh == 51) {
            if (x + 8 > end) goto next;
            nh = p[x]; x += (p[x + 1] + 2) * 4;
          } else break;
        }
        proto = nh; l4 = x;
        if (fragoff) goto done;
      } else goto next;
      if (proto == 6) {
        if (l4 + 20 > end) goto done;
        sport = be16(p + l4); dport = be16(p + l4 + 2);
        flags = be16(p + l4 + 12) & 0x1ff;
      } else if (proto == 17) {
        if (l4 + 8 > end) goto done;
        sport = be16(p + l4); dport = be16(p + l4 + 2);
      } else if (proto == 1 || proto == 58) {
        if (l4 + 4 > end) goto done;
        sport = p[l4]; dport = p[l4 + 1];
      }
    done:
      check += sport + dport + proto + flags + fragoff + l4;
    next:;
    }
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double sec = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  printf("{\"packets\": %zu, \"rounds\": %d, \"pps\": %.0f, \"check\": %llu}\n", n, rounds, (double)n * rounds / sec, (unsigned long long)(check / rounds));
  return 0;
}
