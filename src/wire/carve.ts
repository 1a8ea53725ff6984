// Typed arrays for the structure-of-arrays tables (Meta, Batch), either fresh
// or carved one after another out of one SharedArrayBuffer, so that a batch
// and its Meta can be filled by one thread and read by another (the pipeline's
// rings). Each array starts on an 8-byte boundary. Used when a table is built,
// never per packet.

export class ArrayCarver {
  /** Bytes carved so far (also counted when allocating fresh arrays, to size a shared region). */
  offset: number;

  constructor(readonly sab: SharedArrayBuffer | null = null, start = 0) {
    this.offset = start;
  }

  private take(bytes: number): number {
    const at = (this.offset + 7) & ~7;
    this.offset = at + bytes;
    if (this.sab && this.offset > this.sab.byteLength) throw new RangeError(`shared region too small: need ${this.offset} bytes, have ${this.sab.byteLength}`);
    return at;
  }

  u8(n: number): Uint8Array { const at = this.take(n); return this.sab ? new Uint8Array(this.sab, at, n) : new Uint8Array(n); }
  u16(n: number): Uint16Array { const at = this.take(n * 2); return this.sab ? new Uint16Array(this.sab, at, n) : new Uint16Array(n); }
  u32(n: number): Uint32Array { const at = this.take(n * 4); return this.sab ? new Uint32Array(this.sab, at, n) : new Uint32Array(n); }
  f64(n: number): Float64Array { const at = this.take(n * 8); return this.sab ? new Float64Array(this.sab, at, n) : new Float64Array(n); }
  /** A Buffer of n bytes (allocUnsafeSlow when fresh: it lives as long as its table). */
  bytes(n: number): Buffer { const at = this.take(n); return this.sab ? Buffer.from(this.sab, at, n) : Buffer.allocUnsafeSlow(n); }
}
