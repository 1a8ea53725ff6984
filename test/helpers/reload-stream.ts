// Long-lived TCP conversations for the reload test (test/e2e/reload.test.ts),
// run inside a namespace with `node --import=tsx reload-stream.ts MODE JSON`.
//
// server {host, port, name}: per connection, a line `HELLO <name> <peer addr:port>`
//   (the peer as this server sees it: behind the NAT, the outside mapping),
//   then frames [u32 length][random bytes] every 50 ms until the client's FIN;
//   then a zero-length frame and a JSON trailer line with the count and
//   SHA-256 of what it received and of what it sent. Prints LISTENING.
// client {host, port, count, minPer?, max?}: opens connections one after the
//   other (count of them, or more until every name in minPer has that many,
//   at most max), each sending 512 random bytes every 100 ms; prints
//   `CONNECTED {json}` per connection. On the stdin line `stop` every
//   connection sends its FIN, checks the trailer against its own counts and
//   hashes, and prints `DONE {json}`; then `ALL DONE`.
// probe {host, port, count, parallel}: count short connections (HELLO, then
//   close); prints one JSON line {names: {name: n}, seen: [...], failed}.

import net from 'node:net';
import crypto from 'node:crypto';
import readline from 'node:readline';

const mode = process.argv[2];
const arg = JSON.parse(process.argv[3] ?? '{}') as Record<string, unknown>;
const say = (s: string) => process.stdout.write(`${s}\n`);

if (mode === 'server') {
  const srv = net.createServer((sock) => {
    const rx = crypto.createHash('sha256'), tx = crypto.createHash('sha256');
    let rxN = 0, txN = 0, paused = false;
    sock.on('error', () => { /* health checks and probes hang up early */ });
    sock.write(`HELLO ${arg.name} ${sock.remoteAddress}:${sock.remotePort}\n`);
    const timer = setInterval(() => {
      if (paused) return;
      const b = crypto.randomBytes(8192);
      const f = Buffer.alloc(4);
      f.writeUInt32BE(b.length);
      tx.update(b);
      txN += b.length;
      paused = !sock.write(Buffer.concat([f, b]));
    }, 50);
    sock.on('drain', () => { paused = false; });
    sock.on('data', (d) => { rx.update(d); rxN += d.length; });
    sock.on('end', () => {
      clearInterval(timer);
      const trailer = JSON.stringify({ rx: rxN, rxSha: rx.digest('hex'), tx: txN, txSha: tx.digest('hex') });
      sock.end(Buffer.concat([Buffer.alloc(4), Buffer.from(`${trailer}\n`)]));
    });
    sock.on('close', () => clearInterval(timer));
  });
  srv.listen(Number(arg.port), String(arg.host), () => say('LISTENING'));
} else if (mode === 'client') {
  void client();
} else if (mode === 'probe') {
  void probe();
} else {
  process.stderr.write(`unknown mode ${mode}\n`);
  process.exit(2);
}

interface Conv { i: number; name: string; seen: string; local: number; finish: () => Promise<Record<string, unknown>> }

/** One conversation: resolves when HELLO arrived. */
function open(i: number): Promise<Conv> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(arg.port), String(arg.host));
    const rx = crypto.createHash('sha256'), tx = crypto.createHash('sha256');
    let rxN = 0, txN = 0;
    let buf = Buffer.alloc(0);
    let hello: string | null = null;
    let trailer: Record<string, unknown> | null = null;
    let error = '';
    let ended = false;
    const sender = setInterval(() => {
      const b = crypto.randomBytes(512);
      tx.update(b);
      txN += b.length;
      sock.write(b);
    }, 100);
    let done: (v: Record<string, unknown>) => void = () => {};
    const finished = new Promise<Record<string, unknown>>((r) => { done = r; });
    const settle = () => {
      clearInterval(sender);
      const rxSha = rx.digest('hex'), txSha = tx.digest('hex');
      const ok = trailer !== null && trailer.rx === txN && trailer.rxSha === txSha && trailer.tx === rxN && trailer.txSha === rxSha;
      done({ i, name: hello?.split(' ')[1], ok, rx: rxN, tx: txN, trailer, error: ok ? undefined : error || 'no trailer or a mismatch' });
    };
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (hello === null) {
          const nl = buf.indexOf(10);
          if (nl < 0) return;
          hello = buf.subarray(0, nl).toString();
          buf = buf.subarray(nl + 1);
          const [, name, seen] = hello.split(' ');
          resolve({ i, name, seen, local: sock.localPort ?? 0, finish: () => { if (!ended) { ended = true; clearInterval(sender); sock.end(); } return finished; } });
          continue;
        }
        if (trailer === null) {
          if (buf.length < 4) return;
          const len = buf.readUInt32BE(0);
          if (len === 0) {
            const nl = buf.indexOf(10, 4);
            if (nl < 0) return;
            trailer = JSON.parse(buf.subarray(4, nl).toString()) as Record<string, unknown>;
            buf = buf.subarray(nl + 1);
            continue;
          }
          if (buf.length < 4 + len) return;
          rx.update(buf.subarray(4, 4 + len));
          rxN += len;
          buf = buf.subarray(4 + len);
          continue;
        }
        return;
      }
    });
    sock.on('error', (e) => { error = `${e.message}`; reject(e); });
    sock.on('close', () => { if (hello === null) reject(new Error(`closed before HELLO: ${error}`)); settle(); });
  });
}

async function client(): Promise<void> {
  const count = Number(arg.count ?? 4), max = Number(arg.max ?? count);
  const minPer = (arg.minPer ?? {}) as Record<string, number>;
  const convs: Conv[] = [];
  const per: Record<string, number> = {};
  const enough = () => convs.length >= count && Object.entries(minPer).every(([n, m]) => (per[n] ?? 0) >= m);
  while (!enough() && convs.length < max) {
    const c = await open(convs.length);
    convs.push(c);
    per[c.name] = (per[c.name] ?? 0) + 1;
    say(`CONNECTED ${JSON.stringify({ i: c.i, name: c.name, seen: c.seen, local: c.local })}`);
  }
  say(`HOLDING ${convs.length}`);
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) if (line.trim() === 'stop') break;
  const results = await Promise.all(convs.map((c) => c.finish()));
  for (const r of results) say(`DONE ${JSON.stringify(r)}`);
  say('ALL DONE');
  process.exit(0);
}

async function probe(): Promise<void> {
  const count = Number(arg.count ?? 10), parallel = Number(arg.parallel ?? 8);
  const names: Record<string, number> = {};
  const seen: string[] = [];
  let failed = 0, next = 0;
  const one = (): Promise<void> => new Promise((resolve) => {
    const sock = net.connect(Number(arg.port), String(arg.host));
    let buf = '';
    const timer = setTimeout(() => { failed++; sock.destroy(); resolve(); }, 5000);
    sock.on('data', (d) => {
      buf += d.toString('latin1');
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      const [, name, peer] = buf.slice(0, nl).split(' ');
      names[name] = (names[name] ?? 0) + 1;
      seen.push(peer);
      sock.destroy();
      resolve();
    });
    sock.on('error', () => { clearTimeout(timer); failed++; resolve(); });
  });
  const worker = async () => {
    while (next < count) {
      next++;
      await one();
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, count) }, worker));
  say(JSON.stringify({ names, seen, failed }));
  process.exit(0);
}
