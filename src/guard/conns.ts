// Which connection attempts completed and which connections ended, per
// originating address, learnt with the flow table's help and without a
// callback per packet (DESIGN.md "guard/": closes come from the flow table).
//
// When the sensor counts a SYN and the flow table has put it in a flow in
// SYN_SENT (a new connection, or a closed 5-tuple reopened), the flow is
// MARKED: its id, the flow's first-seen time (which tells this connection
// from a later one that reuses the record) and the originating address are
// kept here, indexed by flow id.
//   - Completed: the originator then sends a segment with ACK and without
//     SYN or RST in the same flow: it only does that once it has the
//     SYN-ACK (the third step of the handshake, RFC 9293 3.5). This is read
//     from the originator's own packets on purpose: in front of a NAT the
//     flow table is fed untranslated packets, so a reply (to the pool
//     address) is another flow and the flow's own state never reaches
//     ESTABLISHED. The sensor checks it in afterTrack() with two typed-array
//     reads per packet (the mark state of its flow, then its source).
//     A blind spoofer could fake it; the rate and total rules still count
//     every SYN.
//   - Ended, once per guard interval on the control plane (sweep()): the
//     flow saw a FIN or a RST (FIN_WAIT, TIME_WAIT, CLOSED), or the record
//     is gone or holds another connection. `closed` for its address if it
//     had completed; the mark goes.
//   - Not completed after `synTimeout` seconds: the mark goes (the monitor
//     counts it as a SYN that never completed: attempts minus completions).
// So concurrent = completed - closed per address counts established
// connections, as nginx's limit_conn or HAProxy's conn_cur do; half-open ones
// are the `incomplete` rule's business.
//
// Memory per flow slot (sized to the flow table): 1 + 8 + 16 + 1 + 4 + 4 bytes.

import { FlowState, type FlowTable } from '../flow/flow-table.js';

const S_FIN_WAIT = FlowState.TCP_FIN_WAIT;
const S_TIME_WAIT = FlowState.TCP_TIME_WAIT;
const S_CLOSED = FlowState.TCP_CLOSED;

/** Mark states. */
export const Mark = { NONE: 0, OPEN: 1, COMPLETED: 2 } as const;

/** Receives what the marks learn (the sensor's address table). */
export interface ConnSink {
  addCompleted(family: number, w0: number, w1: number, w2: number, w3: number): void;
  addClosed(family: number, w0: number, w1: number, w2: number, w3: number): void;
}

export class ConnMarks {
  readonly capacity: number;
  /** Per flow id: a Mark state. */
  readonly state: Uint8Array;
  /** Per flow id: the originating address (IPv4: word 3) and its family. */
  readonly w: Int32Array;
  readonly fam: Uint8Array;
  private readonly seen: Float64Array;
  /** Dense list of marked flow ids and each one's place in it. */
  private readonly list: Int32Array;
  private readonly pos: Int32Array;
  /** Marked flows. */
  count = 0;
  /** Lifetime totals, for stats. */
  marked = 0;
  timedOut = 0;

  constructor(flowCapacity: number) {
    this.capacity = flowCapacity;
    this.state = new Uint8Array(flowCapacity);
    this.seen = new Float64Array(flowCapacity);
    this.w = new Int32Array(flowCapacity * 4);
    this.fam = new Uint8Array(flowCapacity);
    this.list = new Int32Array(flowCapacity);
    this.pos = new Int32Array(flowCapacity);
  }

  /**
   * Marks flow `f` (first seen at `firstSeen`) as a connection opened by the
   * address given; a second SYN of the same connection changes nothing. A
   * stale mark of an earlier connection in the same record is finished first.
   */
  mark(f: number, firstSeen: number, family: number, w0: number, w1: number, w2: number, w3: number, sink: ConnSink): void {
    if (f < 0 || f >= this.capacity) return;
    if (this.state[f] !== Mark.NONE) {
      if (this.seen[f] === firstSeen) return;
      this.finish(f, sink);
    }
    this.state[f] = Mark.OPEN;
    this.seen[f] = firstSeen;
    const o = f << 2;
    this.w[o] = w0; this.w[o + 1] = w1; this.w[o + 2] = w2; this.w[o + 3] = w3;
    this.fam[f] = family;
    this.pos[f] = this.count;
    this.list[this.count++] = f;
    this.marked++;
  }

  /** The originator of open connection f acknowledged: the handshake completed. */
  complete(f: number, sink: ConnSink): void {
    this.state[f] = Mark.COMPLETED;
    const o = f << 2;
    sink.addCompleted(this.fam[f], this.w[o], this.w[o + 1], this.w[o + 2], this.w[o + 3]);
  }

  /** Visits every mark once (control plane, once per interval); `now` is flow-table time (seconds). */
  sweep(flows: FlowTable, now: number, synTimeout: number, sink: ConnSink): void {
    for (let k = 0; k < this.count;) {
      const f = this.list[k];
      if (flows.isLive(f) && flows.firstSeen[f] === this.seen[f]) {
        const s = flows.state(f);
        const over = s === S_FIN_WAIT || s === S_TIME_WAIT || s === S_CLOSED;
        const stale = this.state[f] === Mark.OPEN && now - this.seen[f] > synTimeout;
        if (!over && !stale) { k++; continue; }
        if (stale && !over) this.timedOut++;
      }
      // finish() moves the last mark into place k: visit k again.
      this.finish(f, sink);
    }
  }

  /** Ends the mark of flow f: `closed` if it had completed. */
  private finish(f: number, sink: ConnSink): void {
    if (this.state[f] === Mark.COMPLETED) {
      const o = f << 2;
      sink.addClosed(this.fam[f], this.w[o], this.w[o + 1], this.w[o + 2], this.w[o + 3]);
    }
    this.state[f] = Mark.NONE;
    const k = this.pos[f], last = this.list[--this.count];
    this.list[k] = last;
    this.pos[last] = k;
  }

  memoryBytes(): number {
    return this.state.byteLength + this.seen.byteLength + this.w.byteLength + this.fam.byteLength + this.list.byteLength + this.pos.byteLength;
  }
}
