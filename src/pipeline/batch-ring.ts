// A single-producer, single-consumer ring of batches in one SharedArrayBuffer
// (DESIGN.md pipeline/: worker threads sharing rings). Each slot is a Batch
// and its Meta, carved from the shared region, so the producer thread reads
// and parses into a slot and the consumer thread walks it in place: no copy,
// no message per batch. Hand-over is two counters (produced, consumed) moved
// with Atomics and waited on with Atomics.wait.
//
// Lifetime: the region lives as long as either side holds the ring; a slot
// belongs to the producer until `produced` passes it and to the consumer
// until it advances `consumed`.

import { Batch } from '../io/batch.js';
import { ArrayCarver } from '../wire/carve.js';
import { Meta } from '../wire/meta.js';

/** Control words (Int32Array indices). */
const PRODUCED = 0;
const CONSUMED = 1;
const STATE = 2;
const ERR_LEN = 3;
/** 1 while the producer works on a job, 0 when it is idle (between jobs). */
const BUSY = 4;
const SLOT_BASE = 8; // then count, used per slot
export const RingState = { RUNNING: 0, DONE: 1, ERROR: 2, STOPPED: 3 } as const;

const CTRL_BYTES = 256 * 4;
const STALL_SECONDS = 60;
const F64_WORDS = 4; // [0] error byte offset, [1] bytes read, [2] file size
const ERR_BYTES = 2048;

export interface RingShape { slots: number; capacity: number; arenaBytes: number }

export class BatchRing {
  readonly sab: SharedArrayBuffer;
  readonly shape: RingShape;
  readonly ctrl: Int32Array;
  readonly f64: Float64Array;
  readonly errBytes: Uint8Array;
  readonly batches: Batch[] = [];
  readonly metas: Meta[] = [];

  constructor(shape: RingShape, sab?: SharedArrayBuffer) {
    if (shape.slots < 2 || shape.slots > 100) throw new RangeError('a ring needs 2 to 100 slots');
    this.shape = shape;
    const slotBytes = Batch.byteLength(shape.capacity, shape.arenaBytes) + Meta.byteLength(shape.capacity) + 16;
    this.sab = sab ?? new SharedArrayBuffer(CTRL_BYTES + F64_WORDS * 8 + ERR_BYTES + shape.slots * slotBytes);
    this.ctrl = new Int32Array(this.sab, 0, CTRL_BYTES / 4);
    this.f64 = new Float64Array(this.sab, CTRL_BYTES, F64_WORDS);
    this.errBytes = new Uint8Array(this.sab, CTRL_BYTES + F64_WORDS * 8, ERR_BYTES);
    const carver = new ArrayCarver(this.sab, CTRL_BYTES + F64_WORDS * 8 + ERR_BYTES);
    for (let k = 0; k < shape.slots; k++) {
      this.batches.push(new Batch(shape.capacity, shape.arenaBytes, carver));
      this.metas.push(new Meta(shape.capacity, carver));
    }
  }

  // ---------------- producer side ----------------

  /** Waits for a free slot; returns its index, or -1 when the consumer stopped the ring. */
  acquire(): number {
    const n = this.shape.slots;
    for (;;) {
      if (Atomics.load(this.ctrl, STATE) === RingState.STOPPED) return -1;
      const p = Atomics.load(this.ctrl, PRODUCED);
      const c = Atomics.load(this.ctrl, CONSUMED);
      if (p - c < n) return p % n;
      Atomics.wait(this.ctrl, CONSUMED, c, 1000);
    }
  }

  /** Publishes the slot acquire() returned, with the batch's count and arena use. */
  publish(slot: number): void {
    const b = this.batches[slot];
    this.ctrl[SLOT_BASE + 2 * slot] = b.count;
    this.ctrl[SLOT_BASE + 2 * slot + 1] = b.used;
    Atomics.add(this.ctrl, PRODUCED, 1);
    Atomics.notify(this.ctrl, PRODUCED);
  }

  /** Ends the ring: DONE, or ERROR with a message and a byte offset. */
  finish(error?: { message: string; offset: number }): void {
    if (error) {
      const bytes = Buffer.from(error.message, 'utf8').subarray(0, ERR_BYTES);
      this.errBytes.set(bytes);
      this.ctrl[ERR_LEN] = bytes.length;
      this.f64[0] = error.offset;
    }
    Atomics.store(this.ctrl, STATE, error ? RingState.ERROR : RingState.DONE);
    Atomics.notify(this.ctrl, PRODUCED);
  }

  setProgress(bytesRead: number, fileSize: number): void {
    this.f64[1] = bytesRead;
    this.f64[2] = fileSize;
  }

  // ---------------- consumer side ----------------

  /**
   * Waits for the next filled slot and returns its index (its Batch has
   * count/used set); -1 at the end. Throws nothing: after -1, `error()` says
   * whether the producer ended on an error.
   */
  next(): number {
    let waited = 0;
    for (;;) {
      const c = Atomics.load(this.ctrl, CONSUMED);
      const p = Atomics.load(this.ctrl, PRODUCED);
      if (p > c) {
        const slot = c % this.shape.slots;
        const b = this.batches[slot];
        b.count = this.ctrl[SLOT_BASE + 2 * slot];
        b.used = this.ctrl[SLOT_BASE + 2 * slot + 1];
        this.metas[slot].count = b.count;
        return slot;
      }
      const st = Atomics.load(this.ctrl, STATE);
      if (st !== RingState.RUNNING) {
        // Everything published before the state changed has been seen.
        if (Atomics.load(this.ctrl, PRODUCED) === p) return -1;
        continue;
      }
      // A producer that died without finishing (killed thread) must not hang us.
      if (Atomics.wait(this.ctrl, PRODUCED, p, 1000) === 'timed-out' && ++waited >= STALL_SECONDS) {
        throw new Error(`the reader thread produced nothing for ${STALL_SECONDS} s`);
      }
    }
  }

  /** Gives the slot next() returned back to the producer. */
  release(): void {
    Atomics.add(this.ctrl, CONSUMED, 1);
    Atomics.notify(this.ctrl, CONSUMED);
  }

  /** Consumer: readies the ring for a new job (the producer must be idle) and marks it busy. */
  reset(): void {
    this.waitIdle();
    Atomics.store(this.ctrl, PRODUCED, 0);
    Atomics.store(this.ctrl, CONSUMED, 0);
    Atomics.store(this.ctrl, ERR_LEN, 0);
    this.f64[0] = 0; this.f64[1] = 0; this.f64[2] = 0;
    Atomics.store(this.ctrl, STATE, RingState.RUNNING);
    Atomics.store(this.ctrl, BUSY, 1);
  }

  /** Producer: the job is over (finished or stopped); the ring may be reset. */
  idle(): void {
    Atomics.store(this.ctrl, BUSY, 0);
    Atomics.notify(this.ctrl, BUSY);
  }

  /** Consumer: waits (bounded) until the producer has left the current job. */
  waitIdle(): void {
    for (let waited = 0; Atomics.load(this.ctrl, BUSY) !== 0; waited++) {
      if (waited >= STALL_SECONDS) throw new Error(`the reader thread did not finish its job within ${STALL_SECONDS} s`);
      Atomics.wait(this.ctrl, BUSY, 1, 1000);
    }
  }

  /** Asks the producer to stop (consumer is done early). */
  stop(): void {
    Atomics.store(this.ctrl, STATE, RingState.STOPPED);
    Atomics.notify(this.ctrl, CONSUMED);
  }

  error(): { message: string; offset: number } | null {
    if (Atomics.load(this.ctrl, STATE) !== RingState.ERROR) return null;
    return { message: Buffer.from(this.errBytes.subarray(0, this.ctrl[ERR_LEN])).toString('utf8'), offset: this.f64[0] };
  }

  get bytesRead(): number { return this.f64[1]; }

  /** Parse-status counts of every slot's Meta, added up. */
  statusCounts(into: Float64Array): void {
    for (const m of this.metas) for (let s = 0; s < into.length; s++) into[s] += m.statusCounts[s];
  }
}
