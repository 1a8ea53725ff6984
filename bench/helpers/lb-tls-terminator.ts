// Child process of bench/lb-tls.ts: runs one TlsTerminator in its own event
// loop (the load generator is another process, so the two never share a
// thread). argv[2] is the terminator config as JSON. Prints `ready <port>` on
// stdout once listening; on SIGTERM prints `counters <json>` and exits
// normally (so `--cpu-prof` gets to write its profile).
//
// Run by the bench: node --import=tsx bench/helpers/lb-tls-terminator.ts '<config json>'

import { TlsTerminator, type TlsTerminatorConfig } from '../../src/lb/tls/terminator.js';

const cfg = JSON.parse(process.argv[2] ?? '{}') as TlsTerminatorConfig;
const t = new TlsTerminator(cfg);
const addr = await t.start();
process.stdout.write(`ready ${addr.port}\n`);

let stopping = false;
process.on('SIGTERM', () => {
  if (stopping) return;
  stopping = true;
  process.stdout.write(`counters ${JSON.stringify(t.counters)}\n`, () => {
    void t.stop().finally(() => process.exit(0));
  });
});
