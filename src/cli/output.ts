// Small output helpers shared by the commands (off the hot path).

import cliProgress from 'cli-progress';

const PROTO_NAMES: Record<number, string> = { 1: 'icmp', 2: 'igmp', 6: 'tcp', 17: 'udp', 47: 'gre', 50: 'esp', 51: 'ah', 58: 'icmpv6', 132: 'sctp' };

/** "tcp/4", "udp/6", "proto-89/4". */
export function protoName(proto: number, family: number): string {
  return `${PROTO_NAMES[proto] ?? `proto-${proto}`}/${family === 6 ? 'ipv6' : 'ipv4'}`;
}

export interface Progress { update(done: number): void; stop(): void }

/** A byte-based progress bar on stderr (only created when stderr is a terminal). */
export function createProgress(total: number): Progress {
  const bar = new cliProgress.SingleBar({
    format: 'replay [{bar}] {percentage}% | {value}/{total} MB | {eta}s',
    stream: process.stderr,
    hideCursor: true,
  }, cliProgress.Presets.shades_classic);
  const mb = (n: number) => Math.round(n / 1e5) / 10;
  bar.start(mb(total), 0);
  let last = 0;
  return {
    update(done: number) {
      const now = Date.now();
      if (now - last < 100) return;
      last = now;
      bar.update(mb(done));
    },
    stop() { bar.update(mb(total)); bar.stop(); },
  };
}
