// `portcullis demo`: the appliance live between namespaces it creates, with
// real traffic through it (a curl loop to nginx and a short iperf3), its live
// statistics on the terminal, and everything removed on exit or Ctrl-C.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { NatLab, LAB, waitForLine } from './lab.js';

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../bin/portcullis.js');

export interface DemoOptions { duration: number }

export async function runDemo(opts: DemoOptions): Promise<number> {
  if (process.getuid?.() !== 0) {
    process.stderr.write('portcullis demo: needs root (it creates network namespaces and a TUN device); run it with sudo\n');
    return 1;
  }
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pcd-'));
  const lab = new NatLab(`pcd${process.pid}-`);
  let stopping = false;
  const children: ChildProcess[] = [];
  let cleaned = false;
  const cleanup = () => {
    if (cleaned) return;
    cleaned = true;
    lab.destroy();
    fs.rmSync(tmp, { recursive: true, force: true });
  };
  const onSignal = () => { stopping = true; };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('SIGHUP', onSignal);
  // A closed terminal or pipe (`make demo | head`) must not leave namespaces
  // behind: stop writing, stop the run, and clean up on the way out whatever
  // ends the process.
  const onPipe = () => { stopping = true; };
  process.stdout.on('error', onPipe);
  process.on('exit', cleanup);
  try {
    lab.create();
    say(`namespaces ${lab.cl} (client ${LAB.client}) -> ${lab.gw} (portcullis, pool ${LAB.pool}) -> ${lab.sv} (nginx + iperf3 on ${LAB.server})`);
    // Server side.
    const www = path.join(tmp, 'www');
    fs.mkdirSync(www);
    fs.writeFileSync(path.join(www, 'index.html'), 'hello through portcullis\n');
    fs.writeFileSync(path.join(www, 'blob.bin'), Buffer.alloc(1 << 20, 7));
    fs.writeFileSync(path.join(tmp, 'nginx.conf'), `daemon off; master_process off; worker_processes 1;
pid ${tmp}/nginx.pid; error_log ${tmp}/nginx-error.log;
events { worker_connections 256; }
http { access_log off; client_body_temp_path ${tmp}/cb; proxy_temp_path ${tmp}/pt; fastcgi_temp_path ${tmp}/ft;
  uwsgi_temp_path ${tmp}/ut; scgi_temp_path ${tmp}/st; server { listen ${LAB.server}:80; root ${www}; } }
`);
    children.push(lab.spawn(lab.sv, 'nginx', ['-c', path.join(tmp, 'nginx.conf'), '-p', tmp, '-e', `${tmp}/nginx-error.log`]));
    children.push(lab.spawn(lab.sv, 'iperf3', ['-s', '-B', LAB.server]));
    // The appliance.
    const sock = path.join(tmp, 'admin.sock');
    const cfg = path.join(tmp, 'appliance.yaml');
    fs.writeFileSync(cfg, `io: { tun: ${LAB.tun} }\nnat:\n  inside: [${LAB.insidePrefix}]\n  pool: [${LAB.pool}]\nadmin: { socket: ${sock} }\nstats: { interval: 1 }\n`);
    const app = lab.spawn(lab.gw, process.execPath, [BIN, 'run', '--config', cfg]);
    app.stderr!.on('data', () => {}); // JSON logs: kept off the terminal in the demo
    await waitForLine(app, /^READY$/);
    app.stdout!.on('data', (d: Buffer) => process.stdout.writable && process.stdout.write(d.toString().split('\n').filter((l) => l && l !== 'READY').map((l) => `  ${l}\n`).join('')));
    say(`appliance running; live statistics every second for ${opts.duration} s (Ctrl-C stops)`);
    // Traffic: a curl loop, and iperf3 TCP then UDP in the middle of the run.
    const curl = lab.spawn(lab.cl, 'sh', ['-c', `while true; do curl -s -o /dev/null http://${LAB.server}/blob.bin; curl -s -o /dev/null http://${LAB.server}/; sleep 0.2; done`]);
    children.push(curl);
    const t0 = Date.now();
    let iperfDone = false;
    while (!stopping && Date.now() - t0 < opts.duration * 1000) {
      await sleep(250);
      if (!iperfDone && Date.now() - t0 > 3000) {
        iperfDone = true;
        children.push(lab.spawn(lab.cl, 'sh', ['-c', `iperf3 -c ${LAB.server} -t 4 >/dev/null 2>&1; iperf3 -c ${LAB.server} -u -b 50M -t 3 >/dev/null 2>&1`]));
      }
    }
    curl.kill('SIGKILL');
    const appRunning = app.exitCode === null && app.signalCode === null;
    if (appRunning) say('NAT table (portcullis nat list):');
    if (appRunning) try {
      const list = execFileSync(process.execPath, [BIN, 'nat', 'list', '--socket', sock], { encoding: 'utf8' });
      if (process.stdout.writable) process.stdout.write(list.split('\n').slice(0, 16).map((l) => `  ${l}`).join('\n') + '\n');
    } catch (err) {
      say(`nat list failed: ${(err as Error).message}`);
    }
    // On Ctrl-C the whole process group got SIGINT: the appliance may already be gone.
    const code = app.exitCode !== null || app.signalCode !== null
      ? app.exitCode
      : await new Promise<number | null>((r) => { app.once('exit', (c) => r(c)); app.kill('SIGTERM'); });
    await sleep(100);
    say(`appliance stopped (exit ${code}); removing namespaces`);
    return code === 0 ? 0 : 1;
  } finally {
    for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
    cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.off('SIGHUP', onSignal);
    process.off('exit', cleanup);
  }
}

function say(s: string): void {
  if (process.stdout.writable) process.stdout.write(`== ${s}\n`);
}
function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
