// Packets the appliance originates (ICMP errors, TCP RSTs) leave through a raw
// IPv4 socket (the `raw-socket` package, IPPROTO_RAW: the kernel takes our IP
// header as is and routes by its destination). This is the slow path: such
// packets are rate-limited where they are made, so a copy and a callback per
// packet are fine here.

import { createRequire } from 'node:module';
import type { Batch } from './batch.js';

const require = createRequire(import.meta.url);

interface RawSocket {
  send(buf: Buffer, off: number, len: number, addr: string, before: null, after: (err: Error | null, bytes: number) => void): void;
  close(): void;
}

export class RawTx {
  private readonly sock: RawSocket;
  sent = 0;
  errors = 0;
  lastError = '';

  constructor() {
    const raw = require('raw-socket');
    this.sock = raw.createSocket({ protocol: 255 }) as RawSocket;
  }

  /** Sends every packet of `batch` (raw IPv4 packets at batch.off[i]); returns how many were queued. */
  sendBatch(batch: Batch): number {
    let q = 0;
    for (let i = 0; i < batch.count; i++) {
      const o = batch.off[i], len = batch.capLen[i];
      if (len < 20 || batch.arena[o] >>> 4 !== 4) continue;
      const pkt = Buffer.from(batch.arena.subarray(o, o + len));
      const dst = `${pkt[16]}.${pkt[17]}.${pkt[18]}.${pkt[19]}`;
      this.sock.send(pkt, 0, len, dst, null, (err) => {
        if (err) { this.errors++; this.lastError = err.message; } else this.sent++;
      });
      q++;
    }
    return q;
  }

  close(): void {
    this.sock.close();
  }
}
