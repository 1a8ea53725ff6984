// Runs inside a test namespace: calls the raw addon with bad arguments and in
// bad states and reports what each call threw (the test asserts the error
// classes). Also checks buffer lifetime with WeakRefs (an attached arena
// survives GC while the handle is open and is released by close()), that an
// exception in a poll callback reaches 'uncaughtException', and, by exiting on
// its own, that a stopped or closed handle does not keep the process alive.
// With {mode:'perm'} (run without capabilities) it reports the EPERM errors.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Batch, Verdict } from '../../src/io/batch.js';
import { loadNative } from '../../src/io/native.js';
import { arg, out, sleep, waitFor } from './live-util.js';

const a = arg<{ mode: 'methods' | 'perm' }>();
const N = loadNative();
interface Outcome { err?: { name: string; message: string; code?: string; errno?: number }; value?: unknown }
const checks: Record<string, Outcome> = {};
function check(name: string, fn: () => unknown): void {
  try {
    const v = fn();
    checks[name] = { value: v === undefined ? null : v };
  } catch (e) {
    const x = e as NodeJS.ErrnoException;
    checks[name] = { err: { name: x.constructor.name, message: x.message, code: x.code, errno: x.errno } };
  }
}

if (a.mode === 'perm') {
  check('afpacket open without CAP_NET_RAW', () => new N.AfPacket('lo'));
  check('pcap open without CAP_NET_RAW', () => new N.PcapLive('lo'));
  check('tun open without CAP_NET_ADMIN', () => new N.Tun('pcp0'));
  out({ checks });
  process.exit(0);
}

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
async function collect(): Promise<void> {
  for (let i = 0; i < 4; i++) {
    gc();
    await sleep(5);
  }
}

// --- AF_PACKET on lo
const afp = new N.AfPacket('lo', { ringBlocks: 2, blockSize: 65536 });
const batch = new Batch(8, 4096);
const slot = afp.attach(batch);
check('attach(number)', () => afp.attach(5 as never));
check('attach({})', () => afp.attach({} as never));
check('attach(off as Uint16Array)', () => afp.attach({ ...batch, arena: batch.arena, off: new Uint16Array(8) } as never));
check('attach(arena as array)', () => afp.attach({ ...batch, arena: [1, 2, 3] } as never));
check('attach(flags too short)', () => afp.attach(batch, new Uint8Array(2)));
check('attach(flags wrong type)', () => afp.attach(batch, new Uint16Array(8) as never));
check('attach(capacity 0)', () => afp.attach(new Batch(0, 4096)));
check('recvBatch(string slot)', () => afp.recvBatch('0' as never, 0, 0));
check('recvBatch(unattached slot)', () => afp.recvBatch(63, 0, 0));
check('recvBatch(slot 1000)', () => afp.recvBatch(1000, 0, 0));
check('recvBatch(start > capacity)', () => afp.recvBatch(slot, 9, 0));
check('recvBatch(used > arena)', () => afp.recvBatch(slot, 0, 4097));
check('recvBatch(fractional)', () => afp.recvBatch(slot, 1.5, 0));
check('recvBatch(NaN)', () => afp.recvBatch(slot, NaN, 0));
check('recvBatch(negative)', () => afp.recvBatch(slot, -1, 0));
check('recvBatch(valid)', () => afp.recvBatch(slot, 0, 0));
check('sendBatch(count > capacity)', () => afp.sendBatch(slot, 0, 9));
check('sendBatch(start+count > capacity)', () => afp.sendBatch(slot, 5, 4));
batch.off[0] = 4000;
batch.capLen[0] = 200;
batch.verdict[0] = Verdict.FORWARD;
check('sendBatch(packet outside arena)', () => afp.sendBatch(slot, 0, 1));
check('tx_packets after refused sendBatch', () => afp.stats().tx_packets);
batch.verdict[0] = Verdict.DROP;
check('sendBatch(outside arena but DROP)', () => afp.sendBatch(slot, 0, 1));
check('start(number)', () => afp.start(42 as never));
check('detach(string)', () => afp.detach('x' as never));
check('new AfPacket(blockSize 1000)', () => new N.AfPacket('lo', { blockSize: 1000 }));
check('new AfPacket(frameSize 17)', () => new N.AfPacket('lo', { frameSize: 17 }));
check('new AfPacket(fanoutMode bogus)', () => new N.AfPacket('lo', { fanoutMode: 'bogus' as never }));

// --- lifetime: the addon's reference keeps an attached arena alive
let weak: WeakRef<Buffer>;
const holder = new N.AfPacket('lo', { ringBlocks: 2, blockSize: 65536 });
const tx = new N.AfPacket('lo', { rx: false });
let heldSlot = -1;
(() => {
  const b = new Batch(8, 8192);
  weak = new WeakRef(b.arena);
  heldSlot = holder.attach(b);
})();
await collect();
checks['arena alive after GC while attached'] = { value: weak!.deref() !== undefined };
// Write into it after GC: frames sent on lo come back on lo's ring.
const frames = new Batch(4, 4096);
for (let i = 0; i < 4; i++) frames.push(Buffer.alloc(100, i + 1), 0, 100, 100, 0, 0, 1);
tx.sendBatch(tx.attach(frames), 0, 4);
let got = 0;
await waitFor(() => (got += holder.recvBatch(heldSlot, 0, 0)) >= 4, 2000);
checks['recvBatch into the GC-protected arena'] = { value: got };
holder.close();
await collect();
await sleep(20);
await collect();
checks['arena released after close()'] = { value: weak!.deref() === undefined };

// --- closed handle
afp.close();
check('recvBatch after close', () => afp.recvBatch(slot, 0, 0));
check('close twice', () => afp.close());

// --- libpcap
check('pcap bad filter', () => new N.PcapLive('lo', { filter: 'tcp port (((' }));
check('pcap direction sideways', () => new N.PcapLive('lo', { direction: 'sideways' as never }));
const pcap = new N.PcapLive('lo', { snaplen: 65535 });
check('pcap attach(arena < snaplen)', () => pcap.attach(new Batch(8, 1000)));
const pslot = pcap.attach(new Batch(8, 1 << 17));
check('pcap dispatch(valid)', () => pcap.dispatch(pslot, 0, 0));
check('pcap dispatch(start > capacity)', () => pcap.dispatch(pslot, 99, 0));
check('pcap inject(string)', () => pcap.inject('abc' as never, 0, 3));
check('pcap inject(len past end)', () => pcap.inject(Buffer.alloc(10), 0, 11));
check('pcap inject(off past end)', () => pcap.inject(Buffer.alloc(10), 11, 1));
check('pcap inject(len 0)', () => pcap.inject(Buffer.alloc(10), 0, 0));
check('pcap setNonblock(string)', () => pcap.setNonblock('y' as never));
check('pcap stats keys', () => Object.keys(pcap.stats()).slice(0, 3));
check('pcap linkType on lo', () => pcap.linkType());
pcap.close();
check('pcap dispatch after close', () => pcap.dispatch(pslot, 0, 0));

// --- TUN
const t1 = new N.Tun('pcs0');
check('tun second open of a single-queue device', () => new N.Tun('pcs0'));
const q1 = new N.Tun('pcq0', { multiQueue: true });
check('tun second multiQueue queue', () => {
  const q2 = new N.Tun('pcq0', { multiQueue: true });
  q2.close();
  return q2.name();
});
check('tun single-queue open of a multiQueue device', () => new N.Tun('pcq0'));
const tslot = t1.attach(new Batch(4, 70000));
check('tun readBatch(start > capacity)', () => t1.readBatch(tslot, 5, 0));
check('tun readBatch(empty)', () => t1.readBatch(tslot, 0, 0));
check('tun attach(arena < maxPacket)', () => t1.attach(new Batch(4, 4096)));
check('tun name too long', () => new N.Tun('x'.repeat(16)));
check('tun multiQueue not boolean', () => new N.Tun('pcz0', { multiQueue: 'yes' as never }));
q1.close();

// --- an exception thrown by a poll callback reaches 'uncaughtException'
let uncaught = '';
process.on('uncaughtException', (e) => {
  uncaught = e.message;
});
const thrower = new N.AfPacket('lo', { ringBlocks: 2, blockSize: 65536 });
const tb = new Batch(8, 8192);
const ts = thrower.attach(tb);
thrower.start(() => {
  thrower.recvBatch(ts, 0, 0);
  thrower.stop();
  throw new Error('boom from the poll callback');
});
tx.sendBatch(tx.attach(frames), 0, 4);
await waitFor(() => uncaught !== '', 2000);
checks['poll callback exception -> uncaughtException'] = { value: uncaught };

// --- exit: t1 is started then stopped (not closed), tx and thrower stay open
// but unpolled; the process must still end by itself.
t1.start(() => {});
t1.stop();
out({ checks });
