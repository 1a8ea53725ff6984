// Argument checking and errors of the native addon: bad types and sizes must
// throw TypeError / RangeError (never crash the process), system errors must
// carry .errno / .code and a sentence naming the fix. Constructor checks run
// in this process (they fail before any system call); checks on open
// handles run in a helper inside a namespace this test creates.
import t from 'tap';
import type tap from 'tap';
import { loadNative } from '../../src/io/native.js';
import { makeNs, nsSkipReason, runHelper } from '../helpers/netns.js';

const N = loadNative();

function throwsClass(t: Pick<typeof tap, 'ok' | 'match' | 'fail'>, fn: () => unknown, cls: ErrorConstructor, pattern: RegExp, what: string): void {
  try {
    fn();
    t.fail(`${what}: did not throw`);
  } catch (e) {
    t.ok(e instanceof cls && (e as Error).constructor === cls, `${what}: ${cls.name}`);
    t.match((e as Error).message, pattern, `${what}: message`);
  }
}

t.test('constructor arguments are checked before any system call', async (t) => {
  throwsClass(t, () => new N.PcapLive(5 as never), TypeError, /interface name must be a string \(got a number\)/, 'PcapLive(number)');
  throwsClass(t, () => new N.AfPacket(''), RangeError, /interface name '' is invalid/, 'AfPacket(empty)');
  throwsClass(t, () => new N.AfPacket('a'.repeat(16)), RangeError, /1 to 15 characters/, 'AfPacket(16 chars)');
  throwsClass(t, () => new N.AfPacket('lo', 'x' as never), TypeError, /options must be an object \(got a string\)/, 'options string');
  throwsClass(t, () => new N.PcapLive('lo', { snaplen: 'big' as never }), TypeError, /option snaplen must be an integer/, 'snaplen string');
  throwsClass(t, () => new N.PcapLive('lo', { snaplen: 10 }), RangeError, /snaplen must be an integer from 64 to 262144 \(got 10\)/, 'snaplen 10');
  throwsClass(t, () => new N.PcapLive('lo', { promisc: 1 as never }), TypeError, /promisc must be a boolean/, 'promisc number');
  throwsClass(t, () => new N.PcapLive('lo', { filter: 7 as never }), TypeError, /filter must be a string/, 'filter number');
  throwsClass(t, () => new N.AfPacket('lo', { blockSize: 4096 * 3 }), RangeError, /power of two and a multiple of the page size/, 'blockSize 12288');
  throwsClass(t, () => new N.AfPacket('lo', { ringBlocks: 0 }), RangeError, /ringBlocks must be an integer from 1/, 'ringBlocks 0');
  throwsClass(t, () => new N.Tun('a/b'), RangeError, /no '\/'/, "Tun('a/b')");
  throwsClass(t, () => new N.Tun('pcz0', { maxPacket: 100 }), RangeError, /maxPacket must be an integer from 576/, 'maxPacket 100');
});

t.test('a nonexistent interface gives a readable error with errno and code', async (t) => {
  const name = `pcn${process.pid % 100000}nx`;
  try {
    new N.AfPacket(name);
    t.fail('opened a nonexistent interface');
  } catch (e) {
    const x = e as NodeJS.ErrnoException;
    t.equal(x.code, 'ENODEV', 'code ENODEV');
    t.equal(x.errno, -19, 'errno -ENODEV (negative, as Node system errors)');
    t.equal(x.syscall, 'if_nametoindex', 'syscall');
    t.match(x.message, new RegExp(`^AF_PACKET socket on ${name}: No such device \\(ENODEV\\): no interface named '${name}' in this network namespace \\(check \`ip link\`\\)$`), 'message names the interface and the fix');
  }
  const skip = nsSkipReason();
  if (skip) return; // libpcap's own checks need privileges before they look for the device
  try {
    new N.PcapLive(name);
    t.fail('opened a nonexistent interface');
  } catch (e) {
    const x = e as NodeJS.ErrnoException;
    t.equal(x.code, 'ENODEV', 'libpcap: code ENODEV');
    t.equal(x.errno, -19, 'libpcap: errno');
    t.match(x.message, new RegExp(`libpcap capture on '${name}': No such device \\(ENODEV\\): no interface named '${name}'`), 'libpcap: message');
  }
});

interface Outcome { err?: { name: string; message: string; code?: string; errno?: number }; value?: unknown }

// Skipped (with the reason printed) only when not root or /dev/net/tun is missing.
const skip = nsSkipReason(true) ?? false;
t.test('checks on open handles, buffer lifetime, poll callback errors, exit with stopped handles', { skip }, async (t) => {
  const ns = makeNs(t, 'args');
  const { checks } = await runHelper<{ checks: Record<string, Outcome> }>(ns, 'native-args.ts', { mode: 'methods' }, 20000);
  const expectErr: Record<string, [string, RegExp]> = {
    'attach(number)': ['TypeError', /batch must be an object/],
    'attach({})': ['TypeError', /batch\.arena must be a Buffer or Uint8Array \(got undefined\)/],
    'attach(off as Uint16Array)': ['TypeError', /batch\.off must be a Uint32Array \(got a Uint16Array\)/],
    'attach(arena as array)': ['TypeError', /batch\.arena must be a Buffer or Uint8Array \(got an array\)/],
    'attach(flags too short)': ['RangeError', /flags holds 2 entries, fewer than the batch capacity 8/],
    'attach(flags wrong type)': ['TypeError', /flags must be a Uint8Array/],
    'attach(capacity 0)': ['RangeError', /capacity 0/],
    'recvBatch(string slot)': ['TypeError', /slot must be an integer \(got a string\)/],
    'recvBatch(unattached slot)': ['RangeError', /slot 63 is not attached/],
    'recvBatch(slot 1000)': ['RangeError', /slot must be an integer from 0 to 63/],
    'recvBatch(start > capacity)': ['RangeError', /startCount must be an integer from 0 to 8 \(got 9\)/],
    'recvBatch(used > arena)': ['RangeError', /startUsed must be an integer from 0 to 4096 \(got 4097\)/],
    'recvBatch(fractional)': ['RangeError', /got 1\.5/],
    'recvBatch(NaN)': ['RangeError', /got NaN/],
    'recvBatch(negative)': ['RangeError', /got -1/],
    'sendBatch(count > capacity)': ['RangeError', /count must be an integer from 0 to 8/],
    'sendBatch(start+count > capacity)': ['RangeError', /count must be an integer from 0 to 3 \(got 4\)/],
    'sendBatch(packet outside arena)': ['RangeError', /packet 0 \(off 4000, capLen 200\) lies outside the arena of 4096 bytes; nothing was sent/],
    'start(number)': ['TypeError', /cb must be a function/],
    'detach(string)': ['TypeError', /slot must be an integer/],
    'new AfPacket(blockSize 1000)': ['RangeError', /blockSize must be an integer from 4096/],
    'new AfPacket(frameSize 17)': ['RangeError', /frameSize must be a multiple of 16/],
    'new AfPacket(fanoutMode bogus)': ['RangeError', /fanoutMode must be one of/],
    'recvBatch after close': ['Error', /the AF_PACKET socket on lo is closed/],
    'pcap bad filter': ['Error', /the BPF filter 'tcp port \(\(\(' does not compile: .*pcap-filter/],
    'pcap direction sideways': ['RangeError', /direction must be 'in', 'out' or 'inout'/],
    'pcap attach(arena < snaplen)': ['RangeError', /arena holds 1000 bytes, fewer than one packet of 65535 bytes; allocate a larger Batch or open with a smaller snaplen/],
    'pcap dispatch(start > capacity)': ['RangeError', /startCount must be an integer from 0 to 8 \(got 99\)/],
    'pcap inject(string)': ['TypeError', /buf must be a Buffer or Uint8Array/],
    'pcap inject(len past end)': ['RangeError', /len must be an integer from 1 to 10 \(got 11\)/],
    'pcap inject(off past end)': ['RangeError', /off must be an integer from 0 to 10 \(got 11\)/],
    'pcap inject(len 0)': ['RangeError', /len must be an integer from 1 to 10 \(got 0\)/],
    'pcap setNonblock(string)': ['TypeError', /on must be a boolean/],
    'pcap dispatch after close': ['Error', /the capture on 'lo' is closed/],
    'tun second open of a single-queue device': ['Error', /Device or resource busy \(EBUSY\): 'pcs0' is already attached .* multiQueue: true/],
    'tun single-queue open of a multiQueue device': ['Error', /\(EINVAL\): 'pcq0' exists but is not a TUN device with these flags/],
    'tun readBatch(start > capacity)': ['RangeError', /startCount must be an integer from 0 to 4/],
    'tun attach(arena < maxPacket)': ['RangeError', /fewer than one packet of 65535 bytes; allocate a larger Batch or open with a smaller maxPacket/],
    'tun name too long': ['RangeError', /1 to 15 characters/],
    'tun multiQueue not boolean': ['TypeError', /multiQueue must be a boolean/],
  };
  for (const [name, [cls, re]] of Object.entries(expectErr)) {
    const o = checks[name];
    t.ok(o?.err, `${name}: threw`);
    t.equal(o?.err?.name, cls, `${name}: ${cls}`);
    t.match(o?.err?.message ?? '', re, `${name}: message`);
  }
  t.equal(checks['pcap bad filter'].err?.code, 'EINVAL', 'bad filter: code');
  t.equal(checks['tun second open of a single-queue device'].err?.errno, -16, 'EBUSY errno');
  const expectValue: Record<string, unknown> = {
    'recvBatch(valid)': 0,
    'tx_packets after refused sendBatch': 0,
    'sendBatch(outside arena but DROP)': 0,
    'close twice': null,
    'pcap dispatch(valid)': 0,
    'pcap linkType on lo': 1,
    'tun second multiQueue queue': 'pcq0',
    'tun readBatch(empty)': 0,
    'arena alive after GC while attached': true,
    'recvBatch into the GC-protected arena': 4,
    'arena released after close()': true,
    'poll callback exception -> uncaughtException': 'boom from the poll callback',
  };
  for (const [name, v] of Object.entries(expectValue)) {
    t.notOk(checks[name]?.err, `${name}: no error`);
    t.same(checks[name]?.value, v, `${name}: ${JSON.stringify(v)}`);
  }
  t.same(checks['pcap stats keys'].value, ['ps_recv', 'ps_drop', 'ps_ifdrop'], 'pcap stats names');
  // The helper ended by itself with a stopped TUN and open unpolled handles: runHelper resolved.
  t.pass('the process exited with stopped / unpolled handles still open');
});

t.test('without capabilities the errors name the capability to grant', { skip }, async (t) => {
  const ns = makeNs(t, 'perm');
  const { checks } = await runHelper<{ checks: Record<string, Outcome> }>(ns, 'native-args.ts', { mode: 'perm' }, 20000, true);
  const want: Record<string, RegExp> = {
    'afpacket open without CAP_NET_RAW': /^AF_PACKET socket on lo: Operation not permitted \(EPERM\): run as root or with CAP_NET_RAW$/,
    'pcap open without CAP_NET_RAW': /^libpcap capture on 'lo': Operation not permitted \(EPERM\): run as root or with CAP_NET_RAW/,
    'tun open without CAP_NET_ADMIN': /^TUN device 'pcp0': Operation not permitted \(EPERM\): run as root or with CAP_NET_ADMIN$/,
  };
  for (const [name, re] of Object.entries(want)) {
    t.match(checks[name]?.err?.message ?? '', re, name);
    t.equal(checks[name]?.err?.code, 'EPERM', `${name}: code`);
    t.equal(checks[name]?.err?.errno, -1, `${name}: errno`);
  }
});
