// Small pieces shared by the helper scripts that run inside a test's network
// namespace (see netns.ts). Not for the data path.

import { readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';

/** Prints the helper's one result line. */
export function out(result: unknown): void {
  process.stdout.write(JSON.stringify(result) + '\n');
}

export function arg<T>(): T {
  return JSON.parse(process.argv[2] ?? '{}') as T;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `pred` every 10 ms until it is true or `ms` pass; returns its last value. */
export async function waitFor(pred: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (pred()) return true;
    await sleep(10);
  }
  return pred();
}

export function macOf(ifname: string): Buffer {
  return Buffer.from(readFileSync(`/sys/class/net/${ifname}/address`, 'utf8').trim().split(':').map((h) => parseInt(h, 16)));
}

export function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'inherit'] });
}

/** RFC 1071 ones'-complement sum of buf[off, off+len) added to `sum` (not folded, not inverted). */
export function sum16(buf: Uint8Array, off: number, len: number, sum = 0): number {
  let i = 0;
  for (; i + 1 < len; i += 2) sum += (buf[off + i] << 8) | buf[off + i + 1];
  if (i < len) sum += buf[off + i] << 8;
  return sum;
}

export function fold(sum: number): number {
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum;
}

/** UDP-over-IPv4 checksum of the datagram at `l4` (RFC 768), with the checksum field taken as zero. */
export function udp4Checksum(buf: Uint8Array, l3: number, l4: number, udpLen: number): number {
  let s = sum16(buf, l3 + 12, 8); // source and destination address
  s += 17 + udpLen;
  const saved = (buf[l4 + 6] << 8) | buf[l4 + 7];
  buf[l4 + 6] = 0;
  buf[l4 + 7] = 0;
  s = sum16(buf, l4, udpLen, s);
  buf[l4 + 6] = saved >> 8;
  buf[l4 + 7] = saved & 0xff;
  const c = ~fold(s) & 0xffff;
  return c === 0 ? 0xffff : c;
}

export function ipv4HeaderChecksum(buf: Uint8Array, l3: number): number {
  const ihl = (buf[l3] & 0x0f) * 4;
  const saved = (buf[l3 + 10] << 8) | buf[l3 + 11];
  buf[l3 + 10] = 0;
  buf[l3 + 11] = 0;
  const c = ~fold(sum16(buf, l3, ihl)) & 0xffff;
  buf[l3 + 10] = saved >> 8;
  buf[l3 + 11] = saved & 0xff;
  return c;
}
