// The web dashboard against a live appliance: NatLab namespaces (prefix
// pcd<pid>-, 198.18.0.0/15 only), the appliance in TUN mode in the gateway
// namespace with its admin API on the namespace's own 127.0.0.1:9180 and no
// token configured (so it generates one next to its socket), real traffic
// (iperf3 TCP through the NAT), and Debian's chromium driven by
// playwright-core. The browser runs inside the gateway namespace: its
// executable is a two-line wrapper that `ip netns exec`s chromium, and
// playwright talks to it over the inherited pipes, so the test process
// drives a browser that sees the appliance's loopback.
//
// Checked: without the token the page shows the login prompt and no data
// (and the API answers 401); with #token=... it shows numbers that grow
// while traffic flows, the NAT mapping of the client, the iperf3 flow among
// the top flows, a chart, and a block made over the API in the guard's
// blacklist and alerts; the search box filters mappings. The screenshot
// is kept as test/artifacts/dashboard.png.
import t from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync, type ChildProcess } from 'node:child_process';
import { NatLab, LAB, waitForLine } from '../../src/cli/lab.js';

const REPO = path.resolve(path.dirname(new URL(import.meta.url).pathname), '../..');
const BIN = path.join(REPO, 'bin/portcullis.js');
const ARTIFACTS = path.join(REPO, 'test/artifacts');
const CHROMIUM = '/usr/bin/chromium';
const PORT = 9180;

const why = process.getuid?.() !== 0 ? 'needs root (network namespaces, TUN)'
  : !fs.existsSync('/dev/net/tun') ? '/dev/net/tun is missing'
    : !fs.existsSync(CHROMIUM) ? `${CHROMIUM} is missing (apt-get install chromium; scripts/setup.sh installs it)`
      : !fs.existsSync(path.join(REPO, 'node_modules/playwright-core')) ? 'playwright-core is not installed (npm ci)' : '';

t.test('dashboard in chromium against a live appliance', { skip: why ? `dashboard e2e: ${why}` : false, timeout: 90_000 }, async (t) => {
  const { chromium } = await import('playwright-core');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pcd-'));
  const lab = new NatLab(`pcd${process.pid}-`);
  let browser: Awaited<ReturnType<typeof chromium.launch>> | null = null;
  t.teardown(async () => {
    await browser?.close().catch(() => {});
    lab.destroy();
    fs.rmSync(tmp, { recursive: true, force: true });
  });
  lab.create();

  // --- the appliance, admin API on the gateway namespace's loopback, token generated ---
  const sock = path.join(tmp, 'admin.sock');
  const cfg = path.join(tmp, 'dash.yaml');
  fs.writeFileSync(cfg, `io: { tun: ${LAB.tun} }\nnat:\n  inside: [${LAB.insidePrefix}]\n  pool: [${LAB.pool}]\nguard: {}\nadmin: { socket: ${sock}, listen: '127.0.0.1:${PORT}' }\nstats: { interval: 0 }\n`);
  const app: ChildProcess = lab.spawn(lab.gw, 'node', [BIN, 'run', '--config', cfg]);
  let appOut = '';
  app.stdout!.on('data', (d) => { appOut += d; });
  app.stderr!.on('data', (d) => { appOut += d; });
  await waitForLine(app, /^READY$/);
  const tokenFile = path.join(tmp, 'admin.token');
  const token = fs.readFileSync(tokenFile, 'utf8').trim();
  t.equal(fs.statSync(tokenFile).mode & 0o777, 0o600, 'the generated token file is 0600');
  t.match(appOut, new RegExp(`"msg":"admin API listening".*"token":"generated, in ${tokenFile.replace(/[.]/g, '\\.')}"`), 'the log says where the token is');
  t.notOk(appOut.includes(token), 'and not what it is');

  const curl = (p: string, withToken: boolean) => lab.exec(lab.gw, 'curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '5',
    ...(withToken ? ['-H', `Authorization: Bearer ${token}`] : []), `http://127.0.0.1:${PORT}${p}`]).out;
  t.equal(curl('/readyz', true), '200', 'the running appliance is ready');
  t.equal(curl('/counters', false), '401', 'the API refuses without the token');
  t.equal(curl('/metrics', false), '401');
  // A manual block over TCP (the guard's admin endpoints need the token too): the dashboard shows it below.
  t.equal(curl('/guard/block', false), '401');
  const block = lab.exec(lab.gw, 'curl', ['-s', '--max-time', '5', '-H', `Authorization: Bearer ${token}`, '-H', 'content-type: application/json',
    '--data', '{"addr":"198.18.7.9","duration":300}', `http://127.0.0.1:${PORT}/guard/block`]);
  t.match(JSON.parse(block.out), { entry: { addr: '198.18.7.9', rule: 'manual' } }, 'POST /guard/block with the token');

  // --- chromium inside the gateway namespace ---
  const wrapper = path.join(tmp, 'chromium-in-ns');
  fs.writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${lab.gw} ${CHROMIUM} "$@"\n`, { mode: 0o755 });
  browser = await chromium.launch({
    executablePath: wrapper,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 1100 } });
  const page = await ctx.newPage();
  const requests: string[] = [];
  page.on('request', (r) => { requests.push(r.url()); });
  const base = `http://127.0.0.1:${PORT}`;

  await t.test('without the token: the login prompt and no data', async (t) => {
    await page.goto(`${base}/`);
    await page.waitForSelector('#login:not([hidden])', { timeout: 10_000 });
    t.equal(await page.isVisible('#token-input'), true, 'the token is asked for');
    t.equal(await page.isVisible('#main'), false, 'no dashboard');
    await page.waitForTimeout(1500);
    t.same(requests.filter((u) => !/\/(dashboard\.js)?$/.test(new URL(u).pathname)), [], `only the page and its script were fetched: ${requests.join(' ')}`);
    t.equal(await page.textContent('#rx-total'), '–', 'no numbers');
    // The page's own origin, no token: the data stays refused.
    const status = await page.evaluate(async () => (await fetch('/counters')).status);
    t.equal(status, 401, 'fetch /counters without the token: 401');
    // A wrong token typed in: refused, the prompt comes back.
    await page.fill('#token-input', 'wrong-token-0123456789');
    await page.click('#login-form button[type=submit]');
    await page.waitForFunction(() => /refused/.test(document.getElementById('login-msg')!.textContent ?? ''), null, { timeout: 10_000 });
    t.equal(await page.isVisible('#main'), false, 'a wrong token shows nothing');
  });

  // --- traffic: iperf3 TCP through the NAT for the rest of the test ---
  lab.spawn(lab.sv, 'iperf3', ['-s', '-B', LAB.server, '-p', '5201']);
  await new Promise((r) => setTimeout(r, 500));
  const iperf = lab.spawn(lab.cl, 'iperf3', ['-c', LAB.server, '-p', '5201', '-t', '14', '-b', '40M']);
  let iperfOut = '';
  iperf.stdout!.on('data', (d) => { iperfOut += d; });
  iperf.stderr!.on('data', (d) => { iperfOut += d; });
  lab.spawn(lab.cl, 'ping', ['-i', '0.2', '-c', '60', LAB.server]);
  await new Promise((r) => setTimeout(r, 1500));

  await t.test('with the token: live numbers, the NAT mapping, top flows, the chart', async (t) => {
    requests.length = 0;
    await page.goto(`${base}/#token=${encodeURIComponent(token)}`);
    await page.waitForSelector('#main:not([hidden])', { timeout: 10_000 });
    t.notOk(page.url().includes(token), `the token left the address bar (${page.url()})`);
    t.notOk(requests.some((u) => u.includes(token)), 'and was never part of a request URL');
    const num = async (sel: string) => Number(((await page.textContent(sel)) ?? '').replace(/[^0-9.]/g, '') || 'NaN');
    await page.waitForFunction(() => /^[0-9,]+$/.test(document.getElementById('rx-total')!.textContent ?? '') && document.getElementById('rx-total')!.textContent !== '0', null, { timeout: 10_000 });
    const rx1 = await num('#rx-total');
    await page.waitForTimeout(2500);
    const rx2 = await num('#rx-total');
    t.ok(rx2 > rx1, `packets received grows while traffic flows: ${rx1} -> ${rx2}`);
    const rate = await num('#rx-rate');
    t.ok(rate > 100, `received packets/s ${rate}`);
    t.ok(await num('#tx-rate') > 100, `sent packets/s ${await page.textContent('#tx-rate')}`);
    t.equal(await page.textContent('#ready'), 'ready');
    await page.waitForFunction((client) => (document.getElementById('nat')!.textContent ?? '').includes(client), LAB.client, { timeout: 10_000 });
    const nat = (await page.textContent('#nat')) ?? '';
    t.match(nat, new RegExp(`tcp${LAB.client.replace(/\./g, '\\.')}:\\d+${LAB.pool.replace(/\./g, '\\.')}:\\d+`), 'the client\'s TCP mapping to the pool address');
    t.ok(await num('#nat-count') >= 1, 'mappings counted');
    const flows = (await page.textContent('#flows')) ?? '';
    t.match(flows, new RegExp(`${LAB.server.replace(/\./g, '\\.')}:5201`), 'the iperf3 flow is among the top flows');
    await page.waitForFunction(() => (document.getElementById('blacklist')!.textContent ?? '').includes('198.18.7.9'), null, { timeout: 5000 });
    t.match((await page.textContent('#blacklist')) ?? '', /198\.18\.7\.9manual/, 'the guard\'s blacklist shows the manual block');
    t.match((await page.textContent('#alerts')) ?? '', /block198\.18\.7\.9manual/, 'and its alert');
    const points = await page.getAttribute('#chart polyline[data-series=rx]', 'points');
    t.ok(points !== null && points.split(' ').length >= 2, `the chart draws received packets/s (${points?.split(' ').length} points)`);

    // The search box filters on the server.
    await page.fill('#nat-search', LAB.client);
    await page.waitForFunction(() => /^\(\d+/.test(document.getElementById('nat-matched')!.textContent ?? ''), null, { timeout: 5000 });
    await page.waitForTimeout(1300);
    t.match((await page.textContent('#nat')) ?? '', LAB.client, 'searching for the client finds it');
    await page.fill('#nat-search', '198.18.250.77');
    await page.waitForFunction(() => (document.getElementById('nat')!.textContent ?? '').includes('no mapping matches'), null, { timeout: 5000 });
    t.pass('an address nobody has matches nothing');
    await page.fill('#nat-search', '');
    await page.waitForTimeout(1300);

    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const shot = path.join(ARTIFACTS, 'dashboard.png');
    await page.screenshot({ path: shot, fullPage: true });
    const png = fs.readFileSync(shot);
    t.ok(png.length > 10_000 && png.subarray(1, 4).toString() === 'PNG', `screenshot kept: ${path.relative(REPO, shot)} (${png.length} bytes)`);
  });

  await t.test('the traffic went through and the appliance stops cleanly', async (t) => {
    await new Promise<void>((r) => { if (iperf.exitCode !== null) r(); else iperf.once('exit', () => r()); });
    t.match(iperfOut, /receiver/, `iperf3 finished: ${iperfOut.split('\n').filter((l) => /receiver/.test(l)).join(' ').trim()}`);
    const stats = JSON.parse(execFileSync('node', [BIN, 'nat', 'list', '--json', '--socket', sock], { encoding: 'utf8' })) as { mappings: unknown[] };
    t.ok(stats.mappings.length >= 1, 'the CLI still reads the socket without a token');
    app.kill('SIGTERM');
    const code = await new Promise<number | null>((r) => app.once('exit', (c) => r(c)));
    t.equal(code, 0);
    t.notOk(fs.existsSync(sock), 'the socket is removed');
  });
});
