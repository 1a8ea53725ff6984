// The portcullis dashboard (plain browser JavaScript, no framework, nothing
// fetched from outside the admin API). Once a second it reads /counters,
// /flows?top=10, /nat/mappings, /lb, /readyz and the guard's /guard/*; rates
// are differences between two readings. The token is kept in sessionStorage
// (this tab only) and sent as `Authorization: Bearer`; `#token=...` in the
// address is taken once and removed (a fragment never reaches the server).
// Everything the API returns is put in the page as text, never as HTML.
'use strict';

(function () {
  const KEY = 'portcullis.token';
  const HISTORY = 60;
  const $ = (id) => document.getElementById(id);

  let token = null;
  let timer = null;
  let meta = null; // counter name -> { help, drop }
  let prev = null; // { at, values }
  const samples = []; // { rx, tx, drop } per poll, the last HISTORY

  // ---- token ----

  function takeFragmentToken() {
    const m = /^#token=(.+)$/.exec(location.hash);
    if (!m) return;
    try { sessionStorage.setItem(KEY, decodeURIComponent(m[1])); } catch (e) { /* storage off: ask instead */ }
    window.history.replaceState(null, '', location.pathname + location.search);
  }

  function showLogin(message) {
    stop();
    token = null;
    try { sessionStorage.removeItem(KEY); } catch (e) { /* nothing kept */ }
    $('main').hidden = true;
    $('logout').hidden = true;
    $('login').hidden = false;
    $('login-msg').textContent = message || '';
    $('ready').textContent = 'locked';
    $('ready').className = 'pill';
    $('token-input').focus();
  }

  function start(t) {
    token = t;
    meta = null;
    prev = null;
    samples.length = 0;
    $('login').hidden = true;
    $('main').hidden = false;
    $('logout').hidden = false;
    poll();
  }

  function stop() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
  }

  // ---- API ----

  class Refused extends Error {}

  async function api(path) {
    const r = await fetch(path, { headers: { Authorization: 'Bearer ' + token }, cache: 'no-store', credentials: 'omit' });
    if (r.status === 401) throw new Refused('the token was refused');
    if (r.status === 404 && path.startsWith('/guard/')) return null; // guard not enabled
    if (r.status === 503 && path === '/readyz') return r.json();
    if (!r.ok) throw new Error(path + ': HTTP ' + r.status);
    return r.json();
  }

  async function poll() {
    stop();
    const t0 = Date.now();
    try {
      if (meta === null) {
        const m = await api('/counters?meta=1');
        meta = new Map(m.counters.map((c) => [c.name, c]));
      }
      const q = $('nat-search').value.trim();
      const [values, ready, flows, nat, lb, blacklist, alerts] = await Promise.all([
        api('/counters'),
        api('/readyz'),
        api('/flows?top=10'),
        api('/nat/mappings?limit=100' + (q ? '&q=' + encodeURIComponent(q) : '')),
        api('/lb'),
        api('/guard/blacklist'),
        api('/guard/alerts?limit=20'),
      ]);
      render(values, ready, flows, nat, lb.services, blacklist, alerts);
      $('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
    } catch (e) {
      if (e instanceof Refused) return showLogin('The token was refused. Enter it again.');
      $('updated').textContent = 'no answer: ' + e.message;
      $('ready').textContent = 'unreachable';
      $('ready').className = 'pill bad';
    }
    if (token !== null) timer = setTimeout(poll, Math.max(100, 1000 - (Date.now() - t0)));
  }

  // ---- rendering ----

  const nf = new Intl.NumberFormat('en');
  function num(n) { return nf.format(Math.round(n)); }
  function rate(n) { return n >= 100 ? num(n) : n.toFixed(1); }
  function bytes(n) {
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i === 0 ? n : n.toFixed(1)) + ' ' + u[i];
  }
  function ep(a, p) { return (a.indexOf(':') >= 0 ? '[' + a + ']' : a) + ':' + p; }

  /** Replaces the rows of a tbody; each row is a list of cells: text, or [text, className, title]. */
  function rows(tbody, list, cols, emptyText) {
    const body = $(tbody);
    body.textContent = '';
    if (list.length === 0) {
      const tr = body.insertRow();
      const td = tr.insertCell();
      td.colSpan = cols;
      td.className = 'empty';
      td.textContent = emptyText;
      return;
    }
    for (const cells of list) {
      const tr = body.insertRow();
      for (const c of cells) {
        const td = tr.insertCell();
        if (Array.isArray(c)) {
          td.textContent = c[0];
          if (c[1]) td.className = c[1];
          if (c[2]) td.title = c[2];
        } else {
          td.textContent = c;
        }
      }
    }
  }

  function render(values, ready, top, nat, services, blacklist, alerts) {
    const now = Date.now();
    const v = (k) => values[k] || 0;
    let rx = 0, tx = 0, drop = 0;
    const reasons = [];
    if (prev !== null) {
      const dt = Math.max(0.001, (now - prev.at) / 1000);
      rx = (v('rx_packets') - (prev.values.rx_packets || 0)) / dt;
      tx = (v('tx_packets') - (prev.values.tx_packets || 0)) / dt;
      for (const [name, c] of meta) {
        if (!c.drop || !(name in values)) continue;
        const d = (values[name] - (prev.values[name] || 0)) / dt;
        drop += d;
        if (values[name] > 0) reasons.push({ name, help: c.help, rate: d, total: values[name] });
      }
      samples.push({ rx, tx, drop });
      if (samples.length > HISTORY) samples.shift();
    } else {
      for (const [name, c] of meta) if (c.drop && values[name] > 0) reasons.push({ name, help: c.help, rate: 0, total: values[name] });
    }
    prev = { at: now, values };

    $('ready').textContent = ready.ready ? 'ready' : ready.state;
    $('ready').className = 'pill ' + (ready.ready ? 'ok' : 'bad');
    $('rx-rate').textContent = samples.length ? rate(rx) : '–';
    $('tx-rate').textContent = samples.length ? rate(tx) : '–';
    $('drop-rate').textContent = samples.length ? rate(drop) : '–';
    $('rx-total').textContent = num(v('rx_packets'));
    $('rx-bytes').textContent = bytes(v('rx_bytes'));
    $('flow-count').textContent = num(v('flows'));
    $('nat-count').textContent = num(v('nat_mappings'));
    drawChart();

    reasons.sort((a, b) => b.rate - a.rate || b.total - a.total);
    rows('drops', reasons.slice(0, 12).map((r) => [[r.name, '', r.help], [rate(r.rate), 'n'], [num(r.total), 'n']]), 3, 'no drops');

    rows('flows', top.flows.map((f) => [
      protoName(f.proto), ep(f.client, f.clientPort), ep(f.server, f.serverPort), f.state,
      [num(f.packetsFromClient + f.packetsFromServer), 'n'], [bytes(f.bytesFromClient + f.bytesFromServer), 'n'],
      [Math.max(0, (top.now || f.lastSeen) - f.lastSeen).toFixed(0), 'n'],
    ]), 7, 'no flows');

    $('nat-matched').textContent = '(' + num(nat.matched) + (nat.matched !== nat.total ? ' of ' + num(nat.total) : '') + ')';
    rows('nat', nat.mappings.map((m) => [
      m.proto, ep(m.insideAddress, m.insidePort), ep(m.outsideAddress, m.outsidePort), m.state,
      [Number(m.idle).toFixed(0), 'n'], (m.remotes || []).slice(0, 4).map((r) => ep(r.address, r.port)).join(' ') + ((m.remotes || []).length > 4 ? ' …' : ''),
    ]), 6, $('nat-search').value.trim() ? 'no mapping matches' : 'no mappings');

    const lbRows = [];
    for (const s of services) {
      lbRows.push([[s.name + '  ' + s.proto + '/' + ep(s.vip, s.port) + '  ' + s.mode, ''], '', '', '']);
      for (const t of s.targets) {
        const load = t.active !== undefined ? t.active + ' conn' + (t.queued ? ', ' + t.queued + ' queued' : '') : t.flows !== undefined ? t.flows + ' flows' : '';
        const w = t.effectiveWeight === t.weight ? String(t.weight) : t.effectiveWeight + '/' + t.weight;
        lbRows.push(['  ' + ep(t.address, t.port), [t.state + (t.drain ? ' (drain)' : ''), t.state === 'up' ? 'up' : t.state === 'down' ? 'down' : 'warn', t.lastError || ''], [w, 'n'], [load, 'n']]);
      }
    }
    rows('lb', lbRows, 4, 'no services configured');

    const guardOn = blacklist !== null;
    $('guard-off').hidden = guardOn;
    $('guard-on').hidden = !guardOn;
    if (guardOn) {
      rows('blacklist', blacklist.blacklist.map((e) => [e.addr, e.rule, [Number(e.score).toFixed(0), 'n'], e.until ? new Date(e.until).toLocaleTimeString() : 'unblocked by hand', [num(e.drops || 0), 'n']]), 5, 'nothing blocked');
      const al = alerts ? alerts.alerts.slice().reverse() : [];
      rows('alerts', al.map((a) => [new Date(a.at).toLocaleTimeString(), [a.action, a.action === 'block' ? 'down' : ''], a.addr, a.rule, [Number(a.score).toFixed(0), 'n']]), 5, alerts ? 'no alerts' : 'the monitor runs on another node');
    }
  }

  function protoName(p) { return p === 6 ? 'tcp' : p === 17 ? 'udp' : p === 1 ? 'icmp' : p === 58 ? 'icmpv6' : String(p); }

  const SVG = 'http://www.w3.org/2000/svg';
  function drawChart() {
    const svg = $('chart');
    const W = 600, H = 170, pad = 4;
    let max = 1;
    for (const h of samples) max = Math.max(max, h.rx, h.tx, h.drop);
    svg.textContent = '';
    for (let i = 1; i < 4; i++) {
      const y = pad + (H - 2 * pad) * i / 4;
      const l = document.createElementNS(SVG, 'line');
      l.setAttribute('x1', 0); l.setAttribute('x2', W); l.setAttribute('y1', y); l.setAttribute('y2', y);
      l.setAttribute('stroke', '#e5e7eb'); l.setAttribute('stroke-width', '1');
      svg.appendChild(l);
    }
    for (const [key, color] of [['rx', '#2563eb'], ['tx', '#16a34a'], ['drop', '#dc2626']]) {
      const pts = samples.map((h, i) => {
        const x = (W * (HISTORY - samples.length + i)) / (HISTORY - 1);
        const y = H - pad - (H - 2 * pad) * (h[key] / max);
        return x.toFixed(1) + ',' + y.toFixed(1);
      });
      if (pts.length < 2) continue;
      const pl = document.createElementNS(SVG, 'polyline');
      pl.setAttribute('points', pts.join(' '));
      pl.setAttribute('fill', 'none');
      pl.setAttribute('stroke', color);
      pl.setAttribute('stroke-width', key === 'rx' ? '3' : '2');
      if (key === 'tx') pl.setAttribute('stroke-dasharray', '6 4'); // sent often equals received: keep both visible
      pl.setAttribute('vector-effect', 'non-scaling-stroke');
      pl.setAttribute('data-series', key);
      svg.appendChild(pl);
    }
    $('chart-max').textContent = 'top of scale: ' + rate(max) + ' packets/s';
  }

  // ---- wiring ----

  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const t = $('token-input').value.trim();
    if (!t) return;
    try { sessionStorage.setItem(KEY, t); } catch (err) { /* kept in memory only */ }
    $('token-input').value = '';
    start(t);
  });
  $('logout').addEventListener('click', () => showLogin(''));
  let searchTimer = null;
  $('nat-search').addEventListener('input', () => {
    if (searchTimer !== null) clearTimeout(searchTimer);
    searchTimer = setTimeout(() => { if (token !== null) poll(); }, 250);
  });

  function fromStorage() {
    let saved = null;
    try { saved = sessionStorage.getItem(KEY); } catch (e) { /* none */ }
    return saved;
  }
  // A #token=... pasted into an open tab changes only the fragment: no reload, so listen for it.
  window.addEventListener('hashchange', () => {
    if (!/^#token=/.test(location.hash)) return;
    takeFragmentToken();
    const t = fromStorage();
    if (t) start(t);
  });

  takeFragmentToken();
  const saved = fromStorage();
  if (saved) start(saved); else showLogin('');
})();
