// The `portcullis` command line. Exit codes: 0 success, 1 runtime error
// (bad capture, I/O), 2 usage error (bad flags or arguments).

import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { runReplay } from './replay.js';
import { runGen } from './gen.js';
import { runAppliance, runCheckConfig, runLbStatus, runNatList } from './run.js';
import { runDemo } from './demo.js';
import { runDecap } from './decap.js';
import { runMonitor } from './monitor.js';
import { runGuardBlock, runGuardList, runGuardUnblock } from './guard.js';
import { runHealth } from './health.js';

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('expected a positive whole number');
  return n;
}

export async function main(argv: string[]): Promise<number> {
  let code = 0;
  const program = new Command();
  program
    .name('portcullis')
    .description('userspace packet-processing appliance')
    .exitOverride()
    .showHelpAfterError('(run portcullis --help for the list of commands)');

  program
    .command('replay')
    .description('read pcap/pcapng files through the parser and the flow table; prints a summary')
    .argument('<file...>', 'capture files (pcap or pcapng)')
    .option('--fields', 'one CSV row per packet, with tshark field names as the header')
    .option('--flows', 'the flow table at the end of each file')
    .option('--json', 'machine-readable output (JSON)')
    .option('--write <out.pcap>', 'write every packet read to a pcap file')
    .option('--limit <n>', 'stop after n packets', positiveInt)
    .option('--keep-going', 'report a corrupt file and go on with the next one')
    .option('--threads <n>', '1: everything on one thread; 2: read and parse on a worker thread (default)', positiveInt, 2)
    .option('--no-progress', 'no progress bar (it only shows on a terminal anyway)')
    .option('--guard', 'run the connection guard (sensor and monitor, in capture time); prints per originating address attempts, suspicious fragments, score and verdict')
    .option('--config <file>', 'with --guard: the guard configuration (an appliance YAML with a guard key, or the guard section alone)')
    .action(async (files: string[], opts) => {
      code = await runReplay(files, opts);
    });

  program
    .command('gen')
    .description('write a synthetic capture (benchmark address ranges only) with a realistic mix')
    .argument('<out.pcap>', 'output file')
    .option('--packets <n>', 'packets to write', positiveInt, 1_000_000)
    .option('--flows <n>', 'concurrent flows', positiveInt, 10_000)
    .option('--payload <bytes>', 'payload bytes per data packet', (v) => Number(v), 64)
    .option('--seed <n>', 'PRNG seed', positiveInt, 1)
    .action(async (out: string, opts) => {
      code = await runGen(out, opts);
    });

  program
    .command('run')
    .description('run the appliance live (TUN + NAPT) with a YAML configuration')
    .requiredOption('-c, --config <file>', 'configuration file (YAML)')
    .option('--duration <s>', 'stop after s seconds', positiveInt)
    .action(async (opts) => {
      code = await runAppliance(opts);
    });

  program
    .command('check-config')
    .description('validate a configuration file without running; errors name the key path')
    .argument('<file>', 'configuration file (YAML)')
    .action(async (file: string) => {
      code = await runCheckConfig(file);
    });

  program
    .command('demo')
    .description('the appliance live between network namespaces it creates, with real traffic and live statistics (root)')
    .option('--duration <s>', 'seconds of traffic', positiveInt, 20)
    .action(async (opts) => {
      code = await runDemo(opts);
    });

  program
    .command('monitor')
    .description('the guard monitor alone, for several nodes sharing a Redis bus (guard.bus: redis://...)')
    .requiredOption('-c, --config <file>', 'configuration file (YAML): an appliance configuration or its guard section alone')
    .option('--duration <s>', 'stop after s seconds', positiveInt)
    .option('--stats <s>', 'seconds between status lines (0: none)', (v) => Number(v), 60)
    .action(async (opts) => {
      code = await runMonitor(opts);
    });

  program
    .command('decap')
    .description('decapsulate IPIP and GUE packets for a dsr-ipip / dsr-gue target into a TUN device (run in the target\'s namespace, root)')
    .requiredOption('--tun <name>', 'TUN device to write the inner packets into (created when missing, brought up)')
    .option('--dev <ifname>', 'interface to capture the tunnel packets on', 'any')
    .option('--gue-port <port>', 'UDP port of GUE packets (0: GUE off)', (v) => {
      const n = Number(v);
      if (!Number.isInteger(n) || n < 0 || n > 65535) throw new InvalidArgumentError('expected 0..65535');
      return n;
    }, 6080)
    .option('--no-ipip', 'do not decapsulate IPIP (protocol 4)')
    .option('--local <addr>', 'accept only tunnel packets to this address (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--from <addr>', 'accept only tunnel packets from this encapsulator (repeatable)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--vip <addr>', 'accept only inner packets to this address (repeatable; recommended: without it any destination is let in)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--drop-originals', 'nftables rule dropping the original tunnel packets after capture (no ICMP unreachable from the kernel); removed on exit')
    .option('--stats <s>', 'print a stats line every s seconds', positiveInt)
    .option('--duration <s>', 'stop after s seconds', positiveInt)
    .action(async (opts) => {
      code = await runDecap({ ...opts, dropOriginals: opts.dropOriginals === true, stats: opts.stats ?? 0 });
    });

  const guardCmd = program.command('guard').description('the connection guard of the running appliance (blacklist, manual blocks)');
  guardCmd
    .command('block')
    .description('block an address or prefix on every node (until unblocked, or for --duration seconds)')
    .argument('<addr>', 'IPv4 or IPv6 address or prefix (198.18.7.9, 198.18.7.0/24, fd00::1)')
    .option('--duration <s>', 'seconds until the block expires (default: until unblocked)', positiveInt)
    .option('--socket <path>', 'admin socket of the appliance', '/run/portcullis/admin.sock')
    .option('--json', 'JSON output')
    .action(async (addr: string, opts) => {
      code = await runGuardBlock(addr, opts);
    });
  guardCmd
    .command('unblock')
    .description('remove a block (address or prefix, as it was blocked)')
    .argument('<addr>', 'IPv4 or IPv6 address or prefix')
    .option('--socket <path>', 'admin socket of the appliance', '/run/portcullis/admin.sock')
    .option('--json', 'JSON output')
    .action(async (addr: string, opts) => {
      code = await runGuardUnblock(addr, opts);
    });
  guardCmd
    .command('list')
    .description('the blacklist: address, rule, score, offences, expiry, packets dropped, nodes')
    .option('--socket <path>', 'admin socket of the appliance', '/run/portcullis/admin.sock')
    .option('--json', 'JSON output')
    .action(async (opts) => {
      code = await runGuardList(opts);
    });

  program
    .command('lb')
    .description('services and targets of the running appliance\'s distributor, with health and weights')
    .argument('[what]', 'status (the default)', 'status')
    .option('--socket <path>', 'admin socket of the appliance', '/run/portcullis/admin.sock')
    .option('--json', 'JSON output')
    .action(async (what: string, opts) => {
      if (what !== 'status') throw new InvalidArgumentError(`lb: unknown subcommand '${what}' (have: status)`);
      code = await runLbStatus(opts);
    });

  program
    .command('health')
    .description('exit 0 when the running appliance answers GET /healthz with ok, 1 otherwise (container health checks)')
    .option('--socket <path>', 'admin socket of the appliance (default: --config\'s admin.socket, else /run/portcullis/admin.sock)')
    .option('--config <file>', 'take the admin socket from this configuration file')
    .option('--timeout <ms>', 'give up after ms milliseconds', positiveInt, 3000)
    .option('-q, --quiet', 'print nothing when healthy')
    .action(async (opts) => {
      code = await runHealth(opts);
    });

  const nat = program.command('nat').description('NAT table of the running appliance');
  nat
    .command('list')
    .description('list the NAT mappings of the running appliance')
    .option('--socket <path>', 'admin socket of the appliance', '/run/portcullis/admin.sock')
    .option('--json', 'JSON output')
    .action(async (opts) => {
      code = await runNatList(opts);
    });

  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2;
    throw err;
  }
  return code;
}
