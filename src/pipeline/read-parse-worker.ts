// Worker thread: reads captures and parses them into the slots of a BatchRing;
// the main thread tracks flows (and everything after) on the same memory.
// The worker lives across jobs (one job = one file), so its compiled code
// stays warm: a job arrives as a message, the ring is the only channel back.

import { parentPort, workerData } from 'node:worker_threads';
import { openCapture, PcapFormatError } from '../io/pcap-file.js';
import { parseBatch } from '../wire/parse.js';
import { BatchRing, type RingShape } from './batch-ring.js';

interface Setup { shape: RingShape; sab: SharedArrayBuffer }
const setup = workerData as Setup;
const ring = new BatchRing(setup.shape, setup.sab);

function run(file: string): void {
  let reader;
  try {
    reader = openCapture(file);
  } catch (err) {
    const e = err as Error & { offset?: number };
    ring.finish({ message: e.message, offset: e instanceof PcapFormatError ? e.offset : -1 });
    return;
  }
  try {
    for (;;) {
      const slot = ring.acquire();
      if (slot < 0) return; // the consumer stopped early (--limit)
      const batch = ring.batches[slot];
      let n: number;
      try {
        n = reader.recv(batch);
      } catch (err) {
        if (err instanceof PcapFormatError) {
          ring.finish({ message: err.message, offset: err.offset });
          return;
        }
        throw err;
      }
      if (n === 0) break;
      parseBatch(batch, ring.metas[slot]);
      ring.setProgress(reader.bytesRead, reader.fileSize);
      ring.publish(slot);
    }
    ring.finish();
  } catch (err) {
    ring.finish({ message: `${file}: ${(err as Error).message}`, offset: -1 });
  } finally {
    reader.close();
  }
}

parentPort!.on('message', (job: { file: string }) => {
  try {
    run(job.file);
  } finally {
    ring.idle();
  }
});
