// A capture read and parsed on a worker thread, handed to this thread batch by
// batch through a BatchRing: reading + parsing on one core, everything after
// (flow table, NAT, output) on the other. Same contract as PcapFileReader:
// every good record first, then a PcapFormatError naming the byte offset.

import { Worker } from 'node:worker_threads';
import { openCapture, PcapFormatError } from '../io/pcap-file.js';
import type { Batch } from '../io/batch.js';
import type { Meta } from '../wire/meta.js';
import { BatchRing, type RingShape } from './batch-ring.js';

const here = import.meta.url;
// Under the test runner this module is TypeScript; compiled, it is JavaScript.
const WORKER = new URL(here.endsWith('.ts') ? './read-parse-worker.ts' : './read-parse-worker.js', here);

const DEFAULT_SHAPE: RingShape = { slots: 16, capacity: 1024, arenaBytes: 1024 * 2048 + 262144 };

/** One reader thread and its ring per shape, kept for the life of the process. */
const readers = new Map<string, { ring: BatchRing; worker: Worker; error: Error | null }>();

function readerFor(shape: RingShape) {
  const key = `${shape.slots}/${shape.capacity}/${shape.arenaBytes}`;
  let r = readers.get(key);
  if (!r) {
    const ring = new BatchRing(shape);
    const worker = new Worker(WORKER, { workerData: { shape, sab: ring.sab } });
    const entry = { ring, worker, error: null as Error | null };
    worker.on('error', (err) => { entry.error = err; });
    worker.on('exit', () => { readers.delete(key); });
    // An idle reader thread must not keep the process alive.
    worker.unref();
    readers.set(key, entry);
    r = entry;
  }
  return r;
}

export class ThreadedCapture {
  readonly file: string;
  readonly format: string;
  readonly fileSize: number;
  /** The batch and Meta of the slot next() returned (valid until release()). */
  batch: Batch;
  meta: Meta;
  private readonly ring: BatchRing;
  private readonly reader: { error: Error | null };
  private ended = false;
  private closed = false;

  constructor(file: string, shape: RingShape = DEFAULT_SHAPE) {
    // Open once here so that a missing or unreadable file, or a bad header,
    // fails at once and in this thread.
    const probe = openCapture(file);
    this.format = probe.format;
    this.fileSize = probe.fileSize;
    probe.close();
    this.file = file;
    const r = readerFor(shape);
    this.ring = r.ring;
    this.reader = r;
    this.ring.reset();
    this.batch = this.ring.batches[0];
    this.meta = this.ring.metas[0];
    r.worker.postMessage({ file });
  }

  /**
   * Moves to the next parsed batch (this.batch / this.meta, ours until
   * release()); false at the end. Nothing is allocated per batch.
   */
  next(): boolean {
    if (this.ended) return false;
    const slot = this.ring.next();
    if (slot < 0) {
      this.ended = true;
      const e = this.ring.error();
      if (e) {
        if (e.offset < 0) throw new Error(e.message);
        const err = new PcapFormatError(this.file, e.offset, '');
        err.message = e.message;
        throw err;
      }
      if (this.reader.error) throw this.reader.error;
      return false;
    }
    this.batch = this.ring.batches[slot];
    this.meta = this.ring.metas[slot];
    return true;
  }

  release(): void {
    this.ring.release();
  }

  get bytesRead(): number {
    return this.ring.bytesRead;
  }

  /** Parse-status counts of everything parsed so far, added into `into`. */
  addStatusCounts(into: Float64Array): void {
    this.ring.statusCounts(into);
  }

  /** Ends the job (stopping the reader thread early if needed); the thread stays for the next file. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (!this.ended) this.ring.stop();
    this.ring.waitIdle();
  }
}
