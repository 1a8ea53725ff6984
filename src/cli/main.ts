// The `portcullis` command line. Exit codes: 0 success, 1 runtime error
// (bad capture, I/O), 2 usage error (bad flags or arguments).

import { Command, CommanderError, InvalidArgumentError } from 'commander';
import { runReplay } from './replay.js';
import { runGen } from './gen.js';
import { runAppliance, runCheckConfig, runNatList } from './run.js';
import { runDemo } from './demo.js';

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
