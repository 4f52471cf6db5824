// Switchyard dashboard: plain JavaScript, no framework, no network beyond
// this coordinator. Views: #/jobs, #/cluster, #/job/ID[/curves|load|spec]. Every /api/ call
// sends the cluster token; the job page reads a live stream (Server-Sent
// Events format over fetch, since EventSource cannot send a header).
'use strict';

const TOKEN_KEY = 'switchyard.token';
const $ = (sel) => document.querySelector(sel);

// ---- token ----

function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }

function headers() {
  const t = token();
  return t ? { Authorization: 'Bearer ' + t } : {};
}

// takeFragmentToken moves #token=... from the address into this tab's
// storage (the fragment never reaches the server or its logs).
function takeFragmentToken() {
  const h = location.hash;
  const m = /^#token=([^&/]*)(.*)$/.exec(h);
  if (!m) return;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
  const rest = m[2].replace(/^&/, '');
  history.replaceState(null, '', location.pathname + (rest.startsWith('/') ? '#' + rest : '#/jobs'));
}

class AuthError extends Error {}

async function api(path, signal) {
  const r = await fetch(path, { headers: headers(), cache: 'no-store', signal });
  if (r.status === 401 || r.status === 403) throw new AuthError(r.status);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    const err = new Error((body && body.error) || (r.status + ' ' + r.statusText));
    err.status = r.status;
    throw err;
  }
  return body;
}

function showAuth(wrong) {
  stopAll();
  for (const id of ['view-jobs', 'view-cluster', 'view-job']) $('#' + id).hidden = true;
  for (const tb of document.querySelectorAll('#main tbody')) tb.replaceChildren();
  $('#main').hidden = true;
  $('#auth').hidden = false;
  $('#forget').hidden = true;
  $('#auth-msg').textContent = wrong
    ? 'Wrong token: the coordinator refused it (401). No data is shown; enter the cluster token.'
    : 'This dashboard needs the cluster token.';
  $('#token-input').value = '';
  $('#token-input').focus();
}

function fail(err) {
  if (err instanceof AuthError) { showAuth(token() !== ''); return; }
  if (err && err.name === 'AbortError') return;
  const e = $('#error');
  e.textContent = String(err && err.message ? err.message : err);
  e.hidden = false;
}

function clearError() { $('#error').hidden = true; }

// ---- formatting ----

function el(tag, attrs, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') n.className = v;
    else if (k === 'text') n.textContent = v;
    else n.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) n.append(c instanceof Node ? c : document.createTextNode(c == null ? '' : String(c)));
  return n;
}

function fmtNum(x, digits) {
  if (x === null || x === undefined || !isFinite(x)) return '–';
  if (x === 0) return '0';
  const a = Math.abs(x);
  if (digits !== undefined) return x.toFixed(digits);
  if (a >= 1e4) return Math.round(x).toLocaleString('en');
  if (a >= 100) return x.toFixed(0);
  if (a >= 1) return x.toFixed(3);
  return x.toPrecision(3);
}

function fmtDur(s) {
  if (!(s >= 0)) return '–';
  s = Math.round(s);
  if (s < 60) return s + 's';
  if (s < 3600) return Math.floor(s / 60) + 'm ' + String(s % 60).padStart(2, '0') + 's';
  return Math.floor(s / 3600) + 'h ' + String(Math.floor(s % 3600 / 60)).padStart(2, '0') + 'm';
}

function fmtTime(ms) {
  if (!ms) return '–';
  const d = new Date(ms);
  const today = new Date();
  const t = d.toLocaleTimeString('en-GB');
  return d.toDateString() === today.toDateString() ? t : d.toISOString().slice(0, 10) + ' ' + t;
}

function fmtBytes(b) {
  if (!b) return '–';
  const u = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (b >= 1000 && i < u.length - 1) { b /= 1000; i++; }
  return b.toFixed(i ? 1 : 0) + ' ' + u[i];
}

function stateBadge(s) { return el('span', { class: 'state ' + s, text: s }); }

function progressCell(j) {
  const pct = Math.round(100 * (j.progress || 0));
  const bar = el('span', { class: 'bar', title: pct + '%' }, el('span'));
  bar.firstChild.style.width = pct + '%';
  const total = j.total_steps > 0 ? ' / ' + j.total_steps : '';
  return el('td', {}, bar, 'step ' + j.step + total);
}

// ---- views and refresh ----

let timer = null;       // periodic refresh of the list views
let jobPage = null;     // the open job page's state

function stopAll() {
  if (timer) { clearInterval(timer); timer = null; }
  if (jobPage) { jobPage.abort.abort(); jobPage = null; }
  setLive('');
}

function setLive(state) {
  const l = $('#live');
  l.className = 'live' + (state === 'live' ? ' on' : state ? ' off' : '');
  l.textContent = state === 'live' ? 'live' : state === 'ended' ? 'job ended' : state ? state : '';
}

function route() {
  stopAll();
  clearError();
  $('#auth').hidden = true;
  $('#main').hidden = false;
  $('#forget').hidden = token() === '';
  const h = location.hash || '#/jobs';
  for (const id of ['view-jobs', 'view-cluster', 'view-job']) $('#' + id).hidden = true;
  $('#nav-jobs').classList.toggle('active', h.startsWith('#/job'));
  $('#nav-cluster').classList.toggle('active', h === '#/cluster');
  let m;
  if (h === '#/cluster') {
    $('#view-cluster').hidden = false;
    every(3000, loadCluster);
  } else if ((m = /^#\/job\/([^/]+)(?:\/(curves|load|spec))?$/.exec(h))) {
    openJob(decodeURIComponent(m[1]), m[2] || 'curves');
  } else {
    $('#view-jobs').hidden = false;
    every(2000, loadJobs);
  }
}

function every(ms, fn) {
  const run = () => fn().then(clearError, fail);
  run();
  timer = setInterval(run, ms);
}

async function loadJobs() {
  const data = await api('/api/jobs');
  if ($('#view-jobs').hidden) return;
  const rows = data.jobs.map((j) => {
    const tr = el('tr', { class: 'job-row', 'data-job': j.id },
      el('td', {}, el('a', { href: '#/job/' + encodeURIComponent(j.id), 'data-job': j.id, text: j.name }), el('br'), el('small', { class: 'quiet', text: j.id })),
      el('td', {}, stateBadge(j.state)),
      progressCell(j),
      el('td', { class: 'num', text: j.final ? '–' : fmtDur(j.eta_seconds) }),
      el('td', { class: 'num', text: fmtNum(j.loss) }),
      el('td', { class: 'num', text: fmtNum(j.tokens_per_second, 0) }),
      el('td', { class: 'num', text: j.world_size }),
      el('td', { class: 'num', text: j.restarts }),
      el('td', { text: fmtTime(j.submitted) }));
    if (j.message) tr.title = j.message;
    return tr;
  });
  $('#jobs-table tbody').replaceChildren(...rows);
  $('#jobs-empty').hidden = rows.length > 0;
  $('#jobs-count').textContent = data.total > data.jobs.length ? `(newest ${data.jobs.length} of ${data.total})` : `(${data.total})`;
}

async function loadCluster() {
  const c = await api('/api/cluster');
  if ($('#view-cluster').hidden) return;
  $('#leader').textContent = c.leader ? `leader ${c.leader}, answered by ${c.answered_by}` : 'no leader';
  $('#replicas-table tbody').replaceChildren(...c.replicas.map((r) => el('tr', {},
    el('td', { text: r.id + (r.answered ? ' (this one)' : '') }),
    el('td', { text: r.leader ? 'leader' : (r.state || 'follower') }),
    el('td', { text: r.raft_address || '–' }),
    el('td', { text: r.api_address || '–' }),
    el('td', { text: r.voter ? 'yes' : 'no' }),
    el('td', { class: r.alive ? 'good' : 'bad', text: r.alive ? 'yes' : 'no' }))));
  $('#workers-count').textContent = `(${c.workers.filter((w) => w.healthy).length} healthy of ${c.workers.length})`;
  $('#workers-table tbody').replaceChildren(...c.workers.map((w) => el('tr', { class: 'worker-row' },
    el('td', { text: w.id }),
    el('td', { class: w.healthy ? 'good' : 'bad', text: w.health }),
    el('td', { text: w.host || '–' }),
    el('td', { text: w.address || '–' }),
    el('td', { class: 'num', text: w.cpu_cores }),
    el('td', { class: 'num', text: w.memory_mib ? w.memory_mib + ' MiB' : '–' }),
    el('td', { text: w.gpus ? w.gpus + (w.gpu_names.length ? ' (' + w.gpu_names.join(', ') + ')' : '') : '0' }),
    el('td', { class: 'num', text: `${w.busy_slots} / ${w.slots || 1}` }),
    el('td', {}, w.job_id ? el('a', { href: '#/job/' + encodeURIComponent(w.job_id), text: w.job_id }) : '–'))));
}

// ---- the job page ----

// openJob shows job id's page with tab open (#/job/ID/load links to the
// heat map).
function openJob(id, tab) {
  $('#view-job').hidden = false;
  jobPage = { id, abort: new AbortController(), points: [], job: null, report: undefined, drawQueued: false, tab: jobPage ? jobPage.tab : 'curves' };
  for (const n of ['#job-name', '#job-id', '#job-state', '#job-message', '#job-spec']) $(n).textContent = '';
  $('#job-summary').replaceChildren();
  for (const tb of document.querySelectorAll('#view-job tbody')) tb.replaceChildren();
  $('#heatmaps').replaceChildren();
  $('#spec-maps').replaceChildren();
  drawCharts();
  selectTab(tab);
  const page = jobPage;
  loadCheckpoints(page).catch(fail);
  follow(page);
}

function selectTab(name) {
  if (jobPage) jobPage.tab = name;
  for (const b of document.querySelectorAll('.tab')) b.classList.toggle('active', b.dataset.tab === name);
  for (const p of ['curves', 'load', 'spec']) $('#pane-' + p).hidden = p !== name;
  if (name === 'load') drawHeatmaps();
  if (name === 'spec') loadReport(jobPage).catch(fail);
}

// live is what the newest points say beyond the job record (which the
// coordinator updates every few seconds): the step, loss, tokens/s and
// an ETA from the recent steps' pace.
function live(page) {
  const j = page.job, pts = page.points;
  const out = { step: j.step, loss: j.loss, tps: j.tokens_per_second, eta: j.eta_seconds };
  const last = pts[pts.length - 1];
  if (!last || j.final || last.step < j.step) return out;
  out.step = last.step; out.loss = last.loss; out.tps = last.tokens_per_second;
  const first = pts[Math.max(0, pts.length - 30)];
  if (j.total_steps > 0 && last.step > first.step && last.time > first.time) {
    const perStep = (last.time - first.time) / 1000 / (last.step - first.step);
    out.eta = Math.max(0, j.total_steps - last.step) * perStep;
  }
  return out;
}

function showSummary(page) {
  const j = page.job;
  if (!j) return;
  const v = live(page);
  const item = (k, val) => el('div', {}, el('b', { text: k }), val);
  const pct = j.total_steps > 0 ? Math.min(100, Math.round(100 * v.step / j.total_steps)) : Math.round(100 * j.progress);
  const placed = j.placement.map((p) => `${p.rank}→${p.worker}`).join(', ');
  $('#job-summary').replaceChildren(
    item('Progress', `step ${v.step}${j.total_steps > 0 ? ' / ' + j.total_steps : ''} (${j.state === 'SUCCEEDED' ? 100 : pct}%)`),
    item('ETA', j.final ? '–' : fmtDur(v.eta)),
    item('Loss', v.step ? fmtNum(v.loss) : '–'),
    item('Tokens/s', v.step ? fmtNum(v.tps, 0) : '–'),
    item('Model', (j.runtime === 'command' ? 'command' : (j.preset || 'engine')) + (j.lbl_mode ? ', LBL ' + j.lbl_mode : '')),
    item('Layout', `tp ${j.parallel.tp} × dp ${j.parallel.dp}, ep ${j.parallel.ep}`),
    item('Ranks', placed || String(j.world_size)),
    item('Restarts', String(j.restarts)),
    item('Submitted', fmtTime(j.submitted)));
}

function showJob(j) {
  $('#job-name').textContent = j.name;
  $('#job-id').textContent = j.id;
  $('#job-state').replaceWith(Object.assign(stateBadge(j.state), { id: 'job-state' }));
  $('#job-message').textContent = j.message ? (j.reason ? j.reason + ': ' : '') + j.message : '';
  if (jobPage) showSummary(jobPage);
  $('#job-spec').textContent = j.spec;
  $('#events-dropped').textContent = j.events_dropped ? `(${j.events_dropped} older events dropped)` : '';
  $('#events-table tbody').replaceChildren(...j.events.slice().reverse().map((e) => el('tr', {},
    el('td', { class: 'num', text: e.seq }), el('td', { text: fmtTime(e.time) }), el('td', { text: e.type }),
    el('td', { text: e.worker || '' }), el('td', { text: e.message }))));
}

async function loadCheckpoints(page) {
  let cps;
  try {
    cps = await api('/api/jobs/' + encodeURIComponent(page.id) + '/checkpoints', page.abort.signal);
  } catch (err) {
    if (err instanceof AuthError || err.name === 'AbortError') throw err;
    $('#checkpoints-note').textContent = 'Checkpoints: ' + err.message;
    $('#checkpoints-note').hidden = false;
    return;
  }
  if (page !== jobPage) return;
  $('#checkpoints-note').hidden = cps.length > 0;
  $('#checkpoints-note').textContent = 'No committed checkpoint yet.';
  $('#checkpoints-table tbody').replaceChildren(...cps.map((c) => el('tr', {},
    el('td', { class: 'num', text: c.step }), el('td', { text: c.status }), el('td', { text: fmtTime(c.committed) }),
    el('td', { class: 'num', text: fmtBytes(c.bytes) }), el('td', { text: c.status === 'committed' ? `tp ${c.tp} × dp ${c.dp}, ep ${c.ep}` : '–' }),
    el('td', { class: 'num', text: c.shards || '–' }), el('td', { class: 'num', text: c.val_loss ? fmtNum(c.val_loss) : '–' }))));
}

async function loadReport(page) {
  if (!page || page.report) return;
  let rep;
  try {
    rep = await api('/api/jobs/' + encodeURIComponent(page.id) + '/report', page.abort.signal);
  } catch (err) {
    if (err instanceof AuthError || err.name === 'AbortError') throw err;
    if (page === jobPage) $('#spec-maps').replaceChildren(el('p', { class: 'quiet', text: err.status === 404 ? 'No report yet: rank 0 writes it when the job ends.' : err.message }));
    return;
  }
  if (page !== jobPage) return;
  page.report = rep;
  drawSpecialisation(rep);
}

// addPoint appends one step; a step at or before the last (a resumed
// attempt, or a replay after reconnecting) replaces what follows it.
function addPoint(page, p) {
  const pts = page.points;
  while (pts.length && pts[pts.length - 1].step >= p.step) pts.pop();
  pts.push(p);
  if (!page.drawQueued) {
    page.drawQueued = true;
    requestAnimationFrame(() => {
      page.drawQueued = false;
      if (page !== jobPage) return;
      drawCharts();
      showSummary(page);
      if (page.tab === 'load') drawHeatmaps();
    });
  }
}

// follow reads the job's stream until the job ends or the page closes,
// reconnecting after a break.
async function follow(page) {
  let ended = false;
  while (page === jobPage && !ended) {
    try {
      const r = await fetch('/api/jobs/' + encodeURIComponent(page.id) + '/stream', { headers: headers(), cache: 'no-store', signal: page.abort.signal });
      if (r.status === 401 || r.status === 403) throw new AuthError(r.status);
      if (!r.ok) {
        let msg = r.status + ' ' + r.statusText;
        try { msg = (await r.json()).error || msg; } catch (e) { /* keep the status */ }
        const err = new Error(msg);
        err.status = r.status;
        throw err;
      }
      setLive('live');
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          if (handleBlock(page, block) === 'end') ended = true;
        }
      }
    } catch (err) {
      if (err instanceof AuthError || err.name === 'AbortError' || err.status === 404) { if (page === jobPage) fail(err); return; }
      if (page === jobPage) setLive('reconnecting');
    }
    if (!ended && page === jobPage) await new Promise((res) => setTimeout(res, 2000));
  }
  if (page === jobPage) {
    setLive('ended');
    loadCheckpoints(page).catch(fail);
  }
}

function handleBlock(page, block) {
  let event = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue;
    const k = line.indexOf(':');
    const field = k < 0 ? line : line.slice(0, k);
    const val = k < 0 ? '' : line.slice(k + 1).replace(/^ /, '');
    if (field === 'event') event = val;
    else if (field === 'data') data.push(val);
  }
  if (!data.length || page !== jobPage) return '';
  const v = JSON.parse(data.join('\n'));
  switch (event) {
    case 'job':
      page.job = v;
      showJob(v);
      break;
    case 'metrics':
      addPoint(page, v);
      break;
    case 'event':
      if (v.type === 'CheckpointCommitted' || v.type === 'CheckpointDeleted') loadCheckpoints(page).catch(fail);
      break;
    case 'notice':
      $('#error').textContent = v.message;
      $('#error').hidden = false;
      break;
    case 'end':
      page.report = undefined;
      if (page.tab === 'spec') loadReport(page).catch(fail);
      return 'end';
  }
  return '';
}

// ---- charts (SVG) ----

const SVGNS = 'http://www.w3.org/2000/svg';

function svg(tag, attrs) {
  const n = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, v);
  return n;
}

// ticks are about n round values covering [lo, hi].
function ticks(lo, hi, n) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toPrecision(12));
  return out;
}

function drawCharts() {
  const pts = jobPage ? jobPage.points : [];
  lineChart($('#chart-loss'), pts, (p) => p.loss);
  lineChart($('#chart-lbl'), pts, (p) => p.lbl);
  lineChart($('#chart-tps'), pts, (p) => p.tokens_per_second);
}

// lineChart draws y(p) against the step; the container's data-points
// says how many steps it holds.
function lineChart(box, pts, y) {
  const W = 560, H = 220, L = 58, R = 12, T = 10, B = 30;
  const s = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img' });
  box.dataset.points = String(pts.length);
  box.dataset.lastStep = pts.length ? String(pts[pts.length - 1].step) : '0';
  if (!pts.length) {
    const t = svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'empty' });
    t.textContent = 'waiting for the first steps…';
    s.append(t);
    box.replaceChildren(s);
    return;
  }
  // at most ~1 point per pixel column
  const stride = Math.max(1, Math.floor(pts.length / (W - L - R)));
  const shown = pts.filter((_, i) => i % stride === 0 || i === pts.length - 1);
  const x0 = pts[0].step, x1 = Math.max(pts[pts.length - 1].step, x0 + 1);
  let y0 = Infinity, y1 = -Infinity;
  for (const p of shown) { const v = y(p); if (isFinite(v)) { y0 = Math.min(y0, v); y1 = Math.max(y1, v); } }
  if (!isFinite(y0)) { y0 = 0; y1 = 1; }
  if (y1 - y0 < 1e-12) { const d = Math.abs(y0) * 0.05 || 1; y0 -= d; y1 += d; }
  const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
  const sx = (v) => L + (v - x0) / (x1 - x0) * (W - L - R);
  const sy = (v) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
  for (const t of ticks(y0, y1, 4)) {
    s.append(svg('line', { x1: L, x2: W - R, y1: sy(t), y2: sy(t), class: 'gridline' }));
    const lab = svg('text', { x: L - 6, y: sy(t) + 4, 'text-anchor': 'end' });
    lab.textContent = Math.abs(t) >= 1e4 ? fmtNum(t) : String(+t.toPrecision(4));
    s.append(lab);
  }
  for (const t of ticks(x0, x1, 5)) {
    const lab = svg('text', { x: sx(t), y: H - B + 16, 'text-anchor': 'middle' });
    lab.textContent = String(t);
    s.append(lab);
  }
  s.append(svg('line', { x1: L, x2: L, y1: T, y2: H - B, class: 'axis' }));
  s.append(svg('line', { x1: L, x2: W - R, y1: H - B, y2: H - B, class: 'axis' }));
  const xl = svg('text', { x: W - R, y: H - 2, 'text-anchor': 'end' });
  xl.textContent = 'step';
  s.append(xl);
  const d = shown.filter((p) => isFinite(y(p))).map((p) => sx(p.step).toFixed(1) + ',' + sy(y(p)).toFixed(1)).join(' ');
  s.append(svg('polyline', { points: d, class: 'curve' }));
  const last = pts[pts.length - 1];
  const cap = svg('text', { x: W - R, y: T + 12, 'text-anchor': 'end' });
  cap.textContent = `step ${last.step}: ${fmtNum(y(last))}`;
  s.append(cap);
  box.replaceChildren(s);
}

// ---- heat maps (canvas) ----

// colour is a perceptually ordered ramp (viridis stops) at t in [0, 1].
const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function colour(t) {
  t = Math.min(1, Math.max(0, isFinite(t) ? t : 0)) * (RAMP.length - 1);
  const i = Math.min(Math.floor(t), RAMP.length - 2), f = t - i;
  return RAMP[i].map((c, k) => Math.round(c + (RAMP[i + 1][k] - c) * f));
}

function legend(box, lo, hi, label) {
  const c = el('canvas', { width: 240, height: 12 });
  const g = c.getContext('2d');
  for (let x = 0; x < 240; x++) { const [r, gg, b] = colour(x / 239); g.fillStyle = `rgb(${r},${gg},${b})`; g.fillRect(x, 0, 1, 12); }
  box.replaceChildren(el('span', { text: label }), el('span', { text: fmtNum(lo, 2) }), c, el('span', { text: fmtNum(hi, 2) }));
}

// MAX_COLS bounds a heat map's columns: past it, neighbouring steps are
// averaged into one column.
const MAX_COLS = 400;

function drawHeatmaps() {
  const page = jobPage;
  const box = $('#heatmaps');
  const pts = page ? page.points.filter((p) => p.expert_load && p.expert_load.length) : [];
  if (!pts.length) {
    box.replaceChildren(el('p', { class: 'quiet', text: 'No expert load yet (a command job reports none).' }));
    $('#load-legend').replaceChildren();
    return;
  }
  const layers = pts[pts.length - 1].expert_load.length;
  const experts = pts[pts.length - 1].expert_load[0].length;
  const cols = Math.min(pts.length, MAX_COLS);
  let hi = 0;
  const grids = [];
  for (let l = 0; l < layers; l++) {
    const g = Array.from({ length: experts }, () => new Float64Array(cols));
    const n = new Float64Array(cols);
    pts.forEach((p, i) => {
      const c = Math.floor(i * cols / pts.length);
      const row = p.expert_load[l];
      if (!row || row.length !== experts) return;
      n[c]++;
      for (let e = 0; e < experts; e++) g[e][c] += row[e];
    });
    for (let e = 0; e < experts; e++) for (let c = 0; c < cols; c++) { if (n[c]) g[e][c] /= n[c]; hi = Math.max(hi, g[e][c]); }
    grids.push(g);
  }
  hi = Math.max(hi, 1 / experts);
  legend($('#load-legend'), 0, hi, 'token share');
  const blocks = grids.map((g, l) => {
    const cw = Math.max(1, Math.floor(900 / cols)), ch = Math.max(8, Math.min(28, Math.floor(220 / experts)));
    const c = el('canvas', { class: 'heatmap', width: cols * cw, height: experts * ch, 'data-layer': l, 'data-cells': experts * cols });
    const x = c.getContext('2d');
    for (let e = 0; e < experts; e++) for (let k = 0; k < cols; k++) {
      const [r, gg, b] = colour(g[e][k] / hi);
      x.fillStyle = `rgb(${r},${gg},${b})`;
      x.fillRect(k * cw, e * ch, cw, ch);
    }
    const ylab = el('div', { class: 'heatmap-ylabels' }, ...Array.from({ length: experts }, (_, e) => el('span', { text: experts <= 16 || e % Math.ceil(experts / 16) === 0 ? 'expert ' + e : '' })));
    const xlab = el('div', { class: 'heatmap-xlabels' }, el('span', { text: 'step ' + pts[0].step }), el('span', { text: 'step ' + pts[pts.length - 1].step }));
    return el('div', { class: 'heatmap-block' }, el('h4', { text: `Layer ${l}` + (cols < pts.length ? ` (${pts.length} steps in ${cols} columns)` : '') }), el('div', { class: 'heatmap-row' }, ylab, c), xlab);
  });
  box.replaceChildren(...blocks);
}

function drawSpecialisation(rep) {
  const box = $('#spec-maps');
  const rows = (rep.experts || []).filter((s) => s.frequency && s.frequency.length);
  if (!rows.length) {
    box.replaceChildren(el('p', { class: 'quiet', text: 'The report holds no specialisation table.' }));
    return;
  }
  let hi = 0;
  for (const s of rows) for (const f of s.frequency) hi = Math.max(hi, f);
  legend($('#spec-legend'), 0, hi, 'selection frequency');
  const layers = [...new Set(rows.map((s) => s.layer))].sort((a, b) => a - b);
  box.replaceChildren(...layers.map((l) => {
    const rs = rows.filter((s) => s.layer === l);
    const E = rs[0].frequency.length;
    const head = el('tr', {}, el('th', { text: 'domain' }), ...Array.from({ length: E }, (_, e) => el('th', { text: 'e' + e })), el('th', { text: 'top' }), el('th', { text: 'entropy (bits)' }));
    const body = rs.map((s) => el('tr', {}, el('th', { class: 'row', text: s.domain }), ...s.frequency.map((f) => {
      const td = el('td', { class: 'cell', text: f.toFixed(2) });
      const [r, g, b] = colour(hi ? f / hi : 0);
      td.style.background = `rgb(${r},${g},${b})`;
      td.style.color = (r * 0.299 + g * 0.587 + b * 0.114) > 140 ? '#000' : '#fff';
      return td;
    }), el('td', { text: 'e' + s.top_expert }), el('td', { text: fmtNum(s.entropy_bits, 2) })));
    return el('div', {}, el('h4', { text: `Layer ${l}` }), el('table', { class: 'spec', 'data-layer': l }, el('thead', {}, head), el('tbody', {}, ...body)));
  }));
}

// ---- start ----

document.addEventListener('DOMContentLoaded', () => {
  takeFragmentToken();
  $('#auth-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('#token-input').value.trim());
    route();
  });
  $('#forget').addEventListener('click', () => { sessionStorage.removeItem(TOKEN_KEY); showAuth(false); });
  for (const b of document.querySelectorAll('.tab')) b.addEventListener('click', () => selectTab(b.dataset.tab));
  window.addEventListener('hashchange', () => { takeFragmentToken(); route(); });
  route();
});
