'use strict';
// charwise dashboard: the runs listing (sort, compare, start a run) and one run's page
// (live charts from an EventSource, samples, events, settings, sampling and scoring).
// Every piece of server data goes into the DOM as text: createElement / textContent / setAttribute.

// ---------- helpers ----------
const $ = (sel) => document.querySelector(sel);
const TOKEN = (document.querySelector('meta[name="charwise-token"]') || {}).content || '';
const LN2 = Math.log(2);
const SVGNS = 'http://www.w3.org/2000/svg';
const PALETTE = ['#2f6fde', '#d9480f', '#2b8a3e', '#9c36b5', '#c92a2a', '#0b7285', '#e67700', '#5c5f66'];

// An HTML element with attributes and children (strings become text nodes, never markup).
function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const kid of kids) if (kid !== null && kid !== undefined) node.append(kid instanceof Node ? kid : String(kid));
  return node;
}

// An SVG element with attributes and optional text.
function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

const isNum = (x) => typeof x === 'number' && Number.isFinite(x);
const fmt = (x, d = 3) => (isNum(x) ? x.toFixed(d) : '-');
const fmtDate = (t) => (isNum(t) && t > 0 ? new Date(t * 1000).toLocaleString() : '-');
const showChar = (c) => (c === '\n' ? '↵' : c === ' ' ? '␣' : c === '\t' ? '⇥' : c === '\r' ? '⏎' : c);
const runPath = (name, rest = '') => '/api/runs/' + encodeURIComponent(name) + rest;
const runHash = (name) => '#/run/' + encodeURIComponent(name);
// A setting or event value as text: objects as JSON, long fractions rounded.
const valueText = (v) => (v !== null && typeof v === 'object' ? JSON.stringify(v)
  : isNum(v) && !Number.isInteger(v) ? String(+v.toPrecision(6)) : String(v));

// Seconds as h:mm:ss.
function fmtDuration(s) {
  if (!isNum(s) || s < 0) return '-';
  s = Math.round(s);
  const two = (n) => String(n).padStart(2, '0');
  return `${Math.floor(s / 3600)}:${two(Math.floor((s % 3600) / 60))}:${two(s % 60)}`;
}

// ---------- HTTP ----------
function headers(json) {
  const h = { 'X-Charwise-Token': TOKEN };
  if (json) h['Content-Type'] = 'application/json';
  return h;
}
function postInit(body, signal) {
  return { method: 'POST', headers: headers(true), body: JSON.stringify(body), credentials: 'same-origin', signal };
}
// The one-line error of a failed response ({"error": ...}), or its HTTP status.
async function errorText(res) {
  try {
    const j = await res.json();
    if (j && j.error) return String(j.error);
  } catch (e) { /* not JSON */ }
  return `HTTP ${res.status} ${res.statusText || ''}`.trim();
}
async function api(path, init) {
  const res = await fetch(path, init || { headers: headers(false), credentials: 'same-origin' });
  if (!res.ok) {
    const err = new Error(await errorText(res));
    err.status = res.status;
    throw err;
  }
  return res.json();
}
const post = (path, body) => api(path, postInit(body));

// Read a text/event-stream response body, calling onMessage(parsed JSON) for each `data:` message;
// messages may be split across chunks, so keep the unfinished tail in a buffer.
async function readEventStream(res, onMessage) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  const flush = (block) => {
    const data = block.split('\n').filter((l) => l.startsWith('data:'))
      .map((l) => l.slice(5).replace(/^ /, '')).join('\n');
    if (!data) return;
    let msg;
    try { msg = JSON.parse(data); } catch (e) { console.warn('bad stream message', data); return; }
    onMessage(msg);
  };
  for (;;) {
    const { value, done } = await reader.read();
    buf += decoder.decode(value || new Uint8Array(), { stream: !done });
    buf = buf.replace(/\r\n?/g, '\n');
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      flush(buf.slice(0, i));
      buf = buf.slice(i + 2);
    }
    if (done) break;
  }
  flush(buf);
}

// ---------- SVG line charts ----------
// About n "nice" tick values (1, 2, 5 x 10^k steps) covering lo..hi.
function niceTicks(lo, hi, n = 5) {
  const raw = (hi - lo) / n || 1;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const r = raw / mag;
  const step = mag * (r >= 7.5 ? 10 : r >= 3.5 ? 5 : r >= 1.5 ? 2 : 1);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return { ticks: out, step };
}
// A tick label formatter for one axis: 1.5k, 2M (unit chosen by the largest tick), or enough decimals for the step.
function tickFormat(ticks, step) {
  const big = Math.max(...ticks.map(Math.abs));
  const [div, unit] = big >= 1e6 ? [1e6, 'M'] : big >= 1e4 ? [1e3, 'k'] : [1, ''];
  const d = Math.max(0, -Math.floor(Math.log10(step / div) + 1e-9));
  return (v) => (v / div).toFixed(d) + (v === 0 ? '' : unit);
}
// A tick label formatter for seconds: "12.5 s" on short axes, else m:ss or h:mm:ss.
function clockFormat(ticks, step) {
  if (step < 1 || Math.max(...ticks) < 120) { const f = tickFormat(ticks, step); return (v) => f(v) + ' s'; }
  return (v) => {
    const s = Math.round(v);
    return s >= 3600 ? fmtDuration(s) : `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
  };
}

// Draw series [{name, color, dash, dots, legend, pts: [[x, y]...]}] into svg, sized to its on-screen width.
// Sets data-points to the number of points drawn (non-finite ones are gaps).
function drawChart(svg, series, opts = {}) {
  const W = Math.max(280, Math.round(svg.getBoundingClientRect().width) || 800);
  const H = Math.round(Math.max(200, Math.min(320, W * 0.42)));
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('preserveAspectRatio', 'xMidYMid meet');
  svg.replaceChildren();
  // Legend rows along the top, wrapping when the width runs out.
  const legend = series.filter((s) => s.legend !== false).concat(opts.legendExtra || []);
  const left = 58;
  let lx = left, ly = 14;
  const placed = [];
  for (const s of legend) {
    const label = s.name.length > 40 ? s.name.slice(0, 39) + '…' : s.name;
    const w = 30 + label.length * 6.6;
    if (lx + w > W - 8 && lx > left) { lx = left; ly += 16; }
    placed.push([s, label, lx, ly]);
    lx += w + 14;
  }
  const M = { l: left, r: 14, t: legend.length ? ly + 12 : 12, b: 40 };
  // Data extents over finite points.
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity, count = 0;
  const shown = series.map((s) => {
    const step = Math.max(1, Math.ceil(s.pts.length / 20000)); // only thin out very long series
    const pts = step === 1 ? s.pts : s.pts.filter((p, i) => i % step === 0 || i === s.pts.length - 1);
    for (const [x, y] of pts) {
      if (!isNum(x) || !isNum(y)) continue;
      count++;
      if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
    }
    return pts;
  });
  svg.setAttribute('data-points', String(count));
  if (!count) {
    svg.append(svgEl('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'empty' }, opts.empty || 'no data yet'));
    return;
  }
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const pad = (y1 - y0) * 0.05;
  y0 -= pad; y1 += pad;
  const X = (x) => M.l + ((x - x0) / (x1 - x0)) * (W - M.l - M.r);
  const Y = (y) => H - M.b - ((y - y0) / (y1 - y0)) * (H - M.t - M.b);
  // Grid, ticks and axis labels.
  const g = svgEl('g', { class: 'axes' });
  const xt = niceTicks(x0, x1, Math.max(2, Math.floor(W / 110)));
  const xf = (opts.xFmt || tickFormat)(xt.ticks, xt.step);
  for (const v of xt.ticks) {
    g.append(svgEl('line', { x1: X(v), x2: X(v), y1: M.t, y2: H - M.b, class: 'grid' }));
    g.append(svgEl('text', { x: X(v), y: H - M.b + 15, 'text-anchor': 'middle' }, xf(v)));
  }
  const yt = niceTicks(y0, y1, 5), yf = tickFormat(yt.ticks, yt.step);
  for (const v of yt.ticks) {
    g.append(svgEl('line', { x1: M.l, x2: W - M.r, y1: Y(v), y2: Y(v), class: 'grid' }));
    g.append(svgEl('text', { x: M.l - 6, y: Y(v) + 4, 'text-anchor': 'end' }, yf(v)));
  }
  g.append(svgEl('rect', { x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b, class: 'frame' }));
  g.append(svgEl('text', { x: (M.l + W - M.r) / 2, y: H - 6, 'text-anchor': 'middle', class: 'label' }, opts.xLabel || ''));
  g.append(svgEl('text', { x: 14, y: (M.t + H - M.b) / 2, 'text-anchor': 'middle', class: 'label',
    transform: `rotate(-90 14 ${(M.t + H - M.b) / 2})` }, opts.yLabel || ''));
  svg.append(g);
  // The lines: one polyline per run of finite points, dots for short series.
  series.forEach((s, i) => {
    let seg = [];
    const line = () => {
      if (seg.length > 1) {
        svg.append(svgEl('polyline', { points: seg.join(' '), fill: 'none', stroke: s.color, 'stroke-width': 1.6,
          'stroke-dasharray': s.dash ? '6 4' : 'none', 'stroke-linejoin': 'round' }));
      }
      seg = [];
    };
    for (const [x, y] of shown[i]) {
      if (!isNum(x) || !isNum(y)) { line(); continue; }
      seg.push(X(x).toFixed(1) + ',' + Y(y).toFixed(1));
      if (s.dots) svg.append(svgEl('circle', { cx: X(x).toFixed(1), cy: Y(y).toFixed(1), r: 2.5, fill: s.color }));
    }
    line();
  });
  // The legend.
  for (const [s, label, x, y] of placed) {
    svg.append(svgEl('line', { x1: x, x2: x + 22, y1: y - 4, y2: y - 4, stroke: s.color, 'stroke-width': 2,
      'stroke-dasharray': s.dash ? '6 4' : 'none' }));
    const t = svgEl('text', { x: x + 28, y, class: 'legend' }, label);
    t.append(svgEl('title', {}, s.name));
    svg.append(t);
  }
}

// Call fn at most every 250 ms (the last call always lands), on an animation frame.
function throttled(fn, ms = 250) {
  let timer = null, last = 0;
  return () => {
    if (timer) return;
    timer = setTimeout(() => {
      requestAnimationFrame(() => { timer = null; last = performance.now(); fn(); });
    }, Math.max(0, ms - (performance.now() - last)));
  };
}

// ---------- routing ----------
let leave = () => {}; // undoes the current page (timers, streams)
function route() {
  leave();
  leave = () => {};
  const m = location.hash.match(/^#\/run\/(.+)$/);
  if (m) {
    let name = m[1];
    try { name = decodeURIComponent(name); } catch (e) { /* keep as is */ }
    showRunPage(name);
  } else {
    showRunsPage();
  }
}

// ---------- runs page ----------
const runs = { list: [], key: null, dir: 1, checked: new Set(), compared: [] };

function showRunsPage() {
  $('#run-page').hidden = true;
  $('#runs-page').hidden = false;
  document.title = 'charwise';
  loadRuns();
  const timer = setInterval(loadRuns, 5000);
  leave = () => clearInterval(timer);
}

async function loadRuns() {
  try {
    const data = await api('/api/runs');
    runs.list = Array.isArray(data.runs) ? data.runs : [];
    $('#runs-dir').textContent = data.runs_dir ? 'runs in ' + data.runs_dir : '';
    $('#runs-error').textContent = '';
    renderRuns();
  } catch (e) {
    $('#runs-error').textContent = 'Could not load the runs: ' + e.message;
  }
}

// Sort order: by the clicked column, else newest first; missing values last either way.
function sortValue(r, key) {
  return key === 'val_bits' || key === 'started' || key === 'train_s' || key === 'updates' ? (isNum(r[key]) ? r[key] : null)
    : (r[key] === null || r[key] === undefined ? null : String(r[key]));
}
function compareRuns(a, b) {
  const key = runs.key || 'started', dir = runs.key ? runs.dir : -1;
  const va = sortValue(a, key), vb = sortValue(b, key);
  if (va === null || vb === null) return va === vb ? 0 : va === null ? 1 : -1;
  const c = typeof va === 'number' ? va - vb : va.localeCompare(vb, undefined, { numeric: true });
  return c * dir || String(a.name).localeCompare(String(b.name));
}

function renderRuns() {
  const rows = runs.list.slice().sort(compareRuns).map((r) => {
    const box = el('input', { type: 'checkbox', class: 'compare', 'aria-label': 'compare ' + r.name });
    box.checked = runs.checked.has(r.name);
    box.addEventListener('change', () => (box.checked ? runs.checked.add(r.name) : runs.checked.delete(r.name)));
    const status = String(r.status || 'unreadable');
    return el('tr', { 'data-run': r.name },
      el('td', null, box),
      el('td', null, el('a', { class: 'run-link', href: runHash(r.name) }, r.name)),
      el('td', null, r.corpus ?? '-'),
      el('td', null, r.model ?? '-'),
      el('td', null, r.optimizer ?? '-'),
      el('td', { class: 'num' }, `${r.updates ?? '-'} / ${r.target ?? '?'}`),
      el('td', { class: 'num' }, fmt(r.val_bits)),
      el('td', null, el('span', { class: `status status-${status}` }, status)),
      el('td', null, fmtDate(r.started)),
      el('td', { class: 'num' }, fmtDuration(r.train_s)));
  });
  $('#runs-table tbody').replaceChildren(...rows);
  $('#runs-empty').hidden = runs.list.length > 0;
  for (const th of document.querySelectorAll('#runs-table th[data-key]')) {
    const on = th.dataset.key === runs.key;
    th.setAttribute('aria-sort', on ? (runs.dir > 0 ? 'ascending' : 'descending') : 'none');
  }
}

// Header clicks sort; the same header again reverses.
function sortBy(key) {
  if (runs.key === key) runs.dir = -runs.dir;
  else { runs.key = key; runs.dir = 1; }
  renderRuns();
}

// Compare: fetch the curves of the ticked runs (in table order) and draw them.
async function compareTicked() {
  const msg = $('#compare-msg');
  const names = runs.list.slice().sort(compareRuns).map((r) => r.name).filter((n) => runs.checked.has(n));
  if (!names.length) { msg.textContent = 'Tick one or more runs first.'; return; }
  msg.textContent = 'loading…';
  const btn = $('#compare-btn');
  btn.disabled = true;
  const got = await Promise.all(names.map((n) => api(runPath(n, '/curves')).then((c) => [n, c], (e) => [n, null, e])));
  btn.disabled = false;
  const failed = got.filter((x) => !x[1]);
  runs.compared = got.filter((x) => x[1]);
  msg.textContent = failed.length ? 'Could not load: ' + failed.map((x) => `${x[0]} (${x[2].message})`).join(', ') : '';
  $('#compare-chart').removeAttribute('hidden'); // an SVG element has no .hidden property
  drawCompare();
}

// Map an update number to the chosen x: updates, characters seen, or wall seconds
// (linear through (0,0), each evaluation's (update, wall_seconds) and (updates, train_seconds)).
function xMapper(c, mode) {
  if (mode === 'chars') { const k = (c.batch || 1) * (c.seq_length || 1); return (u) => u * k; }
  if (mode !== 'wall') return (u) => u;
  const pts = [[0, 0]];
  const ev = c.eval || {};
  (ev.update || []).forEach((u, j) => { if (isNum(u) && isNum((ev.wall_seconds || [])[j])) pts.push([u, ev.wall_seconds[j]]); });
  if (isNum(c.updates) && isNum(c.train_seconds) && c.updates > 0) pts.push([c.updates, c.train_seconds]);
  pts.sort((a, b) => a[0] - b[0]);
  if (pts.length < 2) return () => NaN;
  return (u) => {
    let i = 1;
    while (i < pts.length - 1 && pts[i][0] < u) i++;
    const [ua, wa] = pts[i - 1], [ub, wb] = pts[i];
    return ub === ua ? wb : wa + ((wb - wa) * (u - ua)) / (ub - ua);
  };
}

function drawCompare() {
  if (!runs.compared.length) return;
  const mode = $('#compare-x').value;
  const series = [];
  runs.compared.forEach(([name, c], i) => {
    const color = PALETTE[i % PALETTE.length], L = c.seq_length || 1, x = xMapper(c, mode);
    const m = c.metrics || {};
    series.push({ name, color, pts: (m.update || []).map((u, j) => [x(u), (m.smooth || [])[j] / L]) });
    const ev = c.eval;
    if (ev && ev.update) {
      series.push({ name: name + ' (validation)', color, dash: true, legend: false, dots: ev.update.length <= 60,
        pts: ev.update.map((u, j) => [mode === 'wall' ? ev.wall_seconds[j] : x(u), ev.val_nats[j]]) });
    }
  });
  drawChart($('#compare-chart'), series, {
    xLabel: { updates: 'updates', chars: 'characters seen', wall: 'wall time (training seconds)' }[mode],
    yLabel: 'loss (nats/char)', xFmt: mode === 'wall' ? clockFormat : null,
    legendExtra: [{ name: 'validation (dashed)', color: '#888', dash: true }],
  });
}

// ---------- the new-run form ----------
async function loadOptions() {
  let opt = {};
  try { opt = await api('/api/options'); } catch (e) { $('#form-error').textContent = 'Could not load the options: ' + e.message; }
  const form = $('#new-run');
  const fill = (select, values) => select.replaceChildren(...values.map((v) => el('option', { value: v }, v)));
  $('#corpora').replaceChildren(...(opt.corpora || []).map((c) => el('option', { value: c })));
  fill(form.elements.model, opt.models || ['rnn', 'lstm', 'gru']);
  fill(form.elements.optimizer, opt.optimizers || ['adam']);
  const d = opt.defaults || {};
  for (const k of ['model', 'm', 'layers', 'optimizer', 'eta', 'batch', 'seq_length', 'updates', 'val_fraction', 'eval_every']) {
    if (d[k] !== null && d[k] !== undefined && form.elements[k]) form.elements[k].value = String(d[k]);
  }
  // Minutes is the alternative to updates: left empty, its default shown as a hint.
  if (isNum(d.minutes)) form.elements.minutes.placeholder = 'e.g. ' + d.minutes;
  if (!form.elements.corpus.value && opt.corpora && opt.corpora.length) form.elements.corpus.placeholder = 'e.g. ' + opt.corpora[0];
}

const FIELDS = { corpus: 's', model: 's', optimizer: 's', name: 's', m: 'i', layers: 'i', batch: 'i', seq_length: 'i',
  updates: 'i', eval_every: 'i', eta: 'n', minutes: 'n', val_fraction: 'n' };

async function submitRun(ev) {
  ev.preventDefault();
  const form = ev.target, err = $('#form-error'), btn = $('#start-btn');
  err.textContent = '';
  const body = {};
  for (const [k, kind] of Object.entries(FIELDS)) {
    const v = String(form.elements[k].value || '').trim();
    if (v === '') continue;
    if (kind === 's') { body[k] = v; continue; }
    const n = Number(v);
    if (!Number.isFinite(n) || (kind === 'i' && !Number.isInteger(n))) {
      err.textContent = `${k}: "${v}" is not ${kind === 'i' ? 'a whole number' : 'a number'}`;
      return;
    }
    body[k] = n;
  }
  if (!body.corpus) { err.textContent = 'Give a corpus: a built-in name or a path.'; return; }
  if (body.updates === undefined && body.minutes === undefined) { err.textContent = 'Give updates or minutes.'; return; }
  btn.disabled = true;
  try {
    const res = await post('/api/runs', body);
    location.hash = runHash(res.name);
  } catch (e) {
    err.textContent = e.message;
  } finally {
    btn.disabled = false;
  }
}

// ---------- run page ----------
let run = null; // the open run: {name, es, mu, ms, evals, samples, ...}
const drawRunSoon = throttled(() => run && drawRunCharts(run));

function showRunPage(name) {
  $('#runs-page').hidden = true;
  $('#run-page').hidden = false;
  document.title = name + ' - charwise';
  const r = run = { name, es: null, mu: [], ms: [], evals: [], samples: [], events: new Set(), lines: [],
    freshConsole: true, status: null, seqLength: null, abort: null, gone: false };
  // Blank every part of the page left over from a previous run.
  $('#run-name').textContent = name;
  for (const id of ['run-progress', 'run-info', 'run-error', 'stream-state', 'command', 'sample-status', 'score-status']) $('#' + id).textContent = '';
  for (const id of ['samples', 'events', 'settings', 'sample-out', 'score-out', 'sample-model']) $('#' + id).replaceChildren();
  $('#console').textContent = '';
  $('#console').hidden = $('#command-box').hidden = true;
  setStatus(r, null);
  drawRunCharts(r);
  leave = () => {
    r.gone = true;
    if (r.es) r.es.close();
    if (r.abort) r.abort.abort();
    hideTip();
    run = null;
  };
  loadDetail(r, 5).then((ok) => { if (ok && !r.gone) openStream(r); });
}

// GET the run (retrying a few times: a run just started may take a moment to appear).
async function loadDetail(r, tries = 1) {
  for (let i = 0; i < tries; i++) {
    try {
      const d = await api(runPath(r.name));
      if (r.gone) return false;
      applyDetail(r, d);
      $('#run-error').textContent = '';
      return true;
    } catch (e) {
      if (r.gone) return false;
      $('#run-error').textContent = e.message;
      if (i + 1 < tries) await new Promise((ok) => setTimeout(ok, 1000));
    }
  }
  return false;
}

function applyDetail(r, d) {
  $('#run-name').textContent = d.name ?? r.name;
  setStatus(r, d.status, d.updates, d.target);
  const cfg = d.config || {};
  r.seqLength = isNum(cfg.seq_length) ? cfg.seq_length : isNum(d.seq_length) ? d.seq_length : r.seqLength;
  setCommand(d.command);
  // The child's latest output: take it when it ends differently from what is shown (the stream then overlaps it).
  const lines = Array.isArray(d.console) ? d.console.map(String) : [];
  if (lines.length && lines[lines.length - 1] !== r.lines[r.lines.length - 1]) { r.lines = lines; r.freshConsole = true; showConsole(r); }
  // One info line: corpus, engine, best validation.
  const info = [];
  const corpus = d.corpus && typeof d.corpus === 'object'
    ? Object.entries(d.corpus).filter(([, v]) => v === null || typeof v !== 'object').map(([k, v]) => `${k} ${v}`).join(', ')
    : d.corpus;
  if (corpus) info.push('corpus: ' + corpus);
  if (d.engine_used) info.push('engine: ' + valueText(d.engine_used));
  if (d.best_val && isNum(d.best_val.val_nats)) info.push(`best validation: ${fmt(d.best_val.val_nats / LN2)} bits/char at update ${d.best_val.update}`);
  $('#run-info').textContent = info.join(' · ');
  // Settings table.
  $('#settings').replaceChildren(...Object.entries(cfg).map(([k, v]) => el('tr', null, el('th', null, k), el('td', null, valueText(v)))));
  for (const e of d.events || []) addEvent(r, e);
  // The models one can sample from (keep the choice if it is still there).
  const sel = $('#sample-model'), keep = sel.value;
  const models = Array.isArray(d.models) ? d.models : [];
  sel.replaceChildren(...models.map((m) => el('option', { value: m }, m)));
  if (models.includes(keep)) sel.value = keep;
  $('#sample-btn').disabled = $('#score-btn').disabled = !models.length;
  if (!models.length) $('#sample-status').textContent = 'no saved model yet';
  else if ($('#sample-status').textContent === 'no saved model yet') $('#sample-status').textContent = '';
}

// The command line the server ran for the run (a string ready to copy), if any.
function setCommand(command) {
  const text = typeof command === 'string' ? command : '';
  const has = text !== '';
  $('#command').textContent = text;
  $('#command-box').hidden = !has;
}

// Status badge, progress and which of stop / resume is enabled.
function setStatus(r, status, updates, target) {
  const s = $('#run-status');
  s.textContent = status || '…';
  s.className = 'status' + (status ? ' status-' + status : '');
  if (updates !== undefined) $('#run-progress').textContent = `updates ${updates ?? '-'} / ${target ?? '?'}`;
  if (status !== 'running') r.stopping = false; // a stop sent once: never twice (that kills it)
  $('#stop-btn').disabled = status !== 'running' || r.stopping;
  $('#resume-btn').disabled = !status || status === 'running';
  r.status = status;
}

// Follow the run: history first, then live rows. A reconnect resends the history, so start over on open.
function openStream(r) {
  const es = new EventSource(runPath(r.name, '/stream'));
  r.es = es;
  const on = (type, fn) => es.addEventListener(type, (ev) => {
    if (r.gone) return;
    let d;
    try { d = JSON.parse(ev.data); } catch (e) { console.warn('bad', type, 'message'); return; }
    fn(d);
  });
  es.onopen = () => {
    r.mu = []; r.ms = []; r.evals = []; r.samples = []; r.freshConsole = true;
    $('#stream-state').textContent = 'live';
  };
  es.onerror = () => {
    if (!r.gone) $('#stream-state').textContent = es.readyState === EventSource.CLOSED ? 'disconnected' : 'reconnecting…';
  };
  on('metrics', (d) => {
    for (const row of d.rows || []) { r.mu.push(row[0]); r.ms.push(row[3]); }
    if (r.mu.length > 100000) { // a very fast run: keep every other point (and the last)
      const keep = (a) => a.filter((v, i) => i % 2 === 0 || i === a.length - 1);
      r.mu = keep(r.mu); r.ms = keep(r.ms);
    }
    drawRunSoon();
  });
  on('eval', (d) => { r.evals.push(...(d.rows || [])); drawRunSoon(); });
  on('sample', (d) => {
    r.samples.unshift(d);
    r.samples.length = Math.min(r.samples.length, 10);
    renderSamples(r);
  });
  on('event', (d) => addEvent(r, d));
  on('status', (d) => {
    const changed = r.status !== null && r.status !== d.status;
    setStatus(r, d.status, d.updates, d.target);
    if (changed) loadDetail(r); // new models, best validation, command
  });
  on('console', (d) => appendConsole(r, (d.lines || []).map(String)));
}

function drawRunCharts(r) {
  const L = r.seqLength || 1;
  drawChart($('#loss-chart'), [{ name: 'training, smoothed', color: PALETTE[0], pts: r.mu.map((u, i) => [u, r.ms[i] / L]) }],
    { xLabel: 'updates', yLabel: r.seqLength ? 'nats/char' : 'nats per chunk' });
  const dots = r.evals.length <= 60;
  drawChart($('#val-chart'), [
    { name: 'validation', color: PALETTE[1], dots, pts: r.evals.map((e) => [e[0], isNum(e[4]) ? e[4] : isNum(e[3]) ? e[3] / LN2 : NaN]) },
    { name: 'training', color: PALETTE[0], dash: true, dots, pts: r.evals.map((e) => [e[0], isNum(e[2]) ? e[2] / LN2 : NaN]) },
  ], { xLabel: 'updates', yLabel: 'bits/char', empty: 'no evaluations yet' });
}

// Newest first, at most 10: a header line and the text.
function renderSamples(r) {
  $('#samples').replaceChildren(...r.samples.map((s) => el('div', { class: 'sample' },
    el('div', { class: 'sample-head' }, `update ${s.update ?? '-'}` + (isNum(s.epoch) ? ` · epoch ${fmt(s.epoch, 2)}` : '')
      + ` · smooth loss ${fmt(s.smooth_loss)}` + (isNum(s.smooth_loss) && r.seqLength ? ` (${fmt(s.smooth_loss / r.seqLength)} nats/char)` : '')),
    el('pre', null, String(s.text ?? '')))));
}

// One li per event (time, event, update, the other keys), skipping ones already shown.
function addEvent(r, e) {
  const key = JSON.stringify([e.time, e.event, e.update]);
  if (r.events.has(key)) return;
  r.events.add(key);
  const details = Object.entries(e).filter(([k]) => !['time', 'event', 'update'].includes(k))
    .map(([k, v]) => `${k}: ${valueText(v)}`).join(', ');
  const list = $('#events'), atEnd = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  list.append(el('li', null,
    el('span', { class: 'muted' }, fmtDate(e.time)), ' ',
    el('strong', null, String(e.event ?? '?')), ' ',
    e.update !== undefined && e.update !== null ? `at update ${e.update}` : '',
    details ? el('span', { class: 'details' }, ' · ' + details) : null));
  if (atEnd) list.scrollTop = list.scrollHeight; // follow new events unless scrolled up
}

// Child output: the first batch after (re)connecting may repeat the tail we already show, so overlap it.
function appendConsole(r, lines) {
  if (r.freshConsole) {
    r.freshConsole = false;
    for (let k = Math.min(r.lines.length, lines.length); k > 0; k--) {
      const tail = r.lines.slice(-k);
      if (tail.every((l, i) => l === lines[i])) { lines = lines.slice(k); break; }
    }
  }
  r.lines.push(...lines);
  if (r.lines.length > 1000) r.lines.splice(0, r.lines.length - 1000);
  showConsole(r);
}
function showConsole(r) {
  const pre = $('#console');
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.textContent = r.lines.join('\n');
  pre.hidden = !r.lines.length;
  if (atEnd) pre.scrollTop = pre.scrollHeight;
}

async function stopRun() {
  const r = run;
  $('#stop-btn').disabled = true;
  try { await post(runPath(r.name, '/stop'), {}); r.stopping = true; $('#run-error').textContent = ''; }
  catch (e) { if (!r.gone) { $('#run-error').textContent = e.message; $('#stop-btn').disabled = r.status !== 'running'; } }
}

async function resumeRun() {
  const r = run, body = {};
  for (const [k, id] of [['updates', '#resume-updates'], ['minutes', '#resume-minutes']]) {
    const v = $(id).value.trim();
    if (v !== '') body[k] = Number(v);
  }
  $('#resume-btn').disabled = true;
  try {
    const res = await post(runPath(r.name, '/resume'), body);
    if (r.gone) return;
    $('#run-error').textContent = '';
    setCommand(res.command);
    setTimeout(() => { if (!r.gone) loadDetail(r); }, 2000); // pick up a child that failed at once
  } catch (e) {
    if (!r.gone) { $('#run-error').textContent = e.message; $('#resume-btn').disabled = r.status === 'running'; }
  }
}

// ---------- sampling and scoring: coloured characters with a hover tip ----------
const tipInfo = new WeakMap(); // span.ch -> {c, s, h, top}

function colourSpan(span, on) {
  const s = Number(span.dataset.s);
  span.style.backgroundColor = on && s > 0 ? `rgba(220,40,40,${Math.min(1, s / 8).toFixed(3)})` : '';
}
function charSpan(info) {
  const span = el('span', { class: 'ch', 'data-s': fmt(info.s), 'data-h': fmt(info.h) }, String(info.c ?? ''));
  tipInfo.set(span, info);
  colourSpan(span, $('#colour').checked);
  return span;
}

function showTip(span) {
  const info = tipInfo.get(span);
  if (!info) return;
  const tip = $('#tip');
  const top = Array.isArray(info.top) ? info.top : [];
  tip.replaceChildren(
    el('div', { class: 'tip-char' }, showChar(String(info.c ?? ''))),
    el('div', null, `surprisal ${fmt(info.s, 2)} bits · entropy ${fmt(info.h, 2)} bits`),
    el('table', null, ...top.map(([c, p]) => el('tr', null, el('td', { class: 'tc' }, showChar(String(c))), el('td', null, isNum(p) ? (p * 100).toFixed(1) + '%' : '-')))));
  tip.hidden = false;
  const box = span.getBoundingClientRect();
  const x = Math.max(4, Math.min(box.left, window.innerWidth - tip.offsetWidth - 4));
  let y = box.bottom + 6;
  if (y + tip.offsetHeight > window.innerHeight - 4) y = Math.max(4, box.top - tip.offsetHeight - 6);
  tip.style.left = x + 'px';
  tip.style.top = y + 'px';
}
function hideTip() { $('#tip').hidden = true; }

async function sample() {
  const r = run;
  if (!r) return;
  if (r.abort) r.abort.abort();
  const ctl = r.abort = new AbortController();
  const out = $('#sample-out'), status = $('#sample-status');
  out.replaceChildren();
  status.textContent = 'sampling…';
  const int = (id, dflt) => { const v = $(id).value.trim(); return v === '' ? dflt : Math.round(Number(v)); };
  const body = { model: $('#sample-model').value, prime: $('#prime').value, temperature: Number($('#temperature').value),
    top_p: Number($('#top-p').value), length: int('#length', 300), seed: int('#seed', null), count: int('#count', 1) };
  let ended = false;
  try {
    const res = await fetch(runPath(r.name, '/sample'), postInit(body, ctl.signal));
    if (!res.ok) throw new Error(await errorText(res));
    await readEventStream(res, (m) => {
      if (ctl.signal.aborted) return;
      if (m.error !== undefined) { ended = true; status.textContent = 'error: ' + m.error; }
      else if (m.done) { ended = true; status.textContent = `done, ${fmt(m.bits_per_char)} bits/char`; }
      else if (m.prime !== undefined) out.append(el('span', { class: 'prime' }, String(m.prime)));
      else if (m.doc) out.append(el('span', { class: 'doc-sep', role: 'separator' }));
      else if (m.c !== undefined) out.append(charSpan(m));
    });
    if (!ended && !ctl.signal.aborted) status.textContent = 'the stream ended early';
  } catch (e) {
    if (e.name !== 'AbortError' && !ctl.signal.aborted) status.textContent = 'error: ' + e.message;
  }
}

async function score() {
  const r = run;
  if (!r) return;
  const out = $('#score-out'), status = $('#score-status');
  status.textContent = 'scoring…';
  $('#score-btn').disabled = true;
  try {
    const res = await post(runPath(r.name, '/score'), { model: $('#sample-model').value, text: $('#score-text').value });
    if (r.gone) return;
    out.replaceChildren(...(res.chars || []).map(charSpan));
    status.textContent = `${fmt(res.bits_per_char)} bits/char`;
  } catch (e) {
    if (!r.gone) status.textContent = 'error: ' + e.message;
  } finally {
    $('#score-btn').disabled = !$('#sample-model').options.length;
  }
}

// ---------- wiring ----------
function init() {
  for (const th of document.querySelectorAll('#runs-table th[data-key]')) th.addEventListener('click', () => sortBy(th.dataset.key));
  $('#compare-btn').addEventListener('click', compareTicked);
  $('#compare-x').addEventListener('change', drawCompare);
  $('#new-run').addEventListener('submit', submitRun);
  $('#stop-btn').addEventListener('click', stopRun);
  $('#resume-btn').addEventListener('click', resumeRun);
  $('#sample-btn').addEventListener('click', sample);
  $('#score-btn').addEventListener('click', score);
  for (const [id, out] of [['#temperature', '#temperature-val'], ['#top-p', '#top-p-val']]) {
    $(id).addEventListener('input', () => { $(out).textContent = Number($(id).value).toFixed(2); });
  }
  $('#colour').addEventListener('change', () => {
    for (const span of document.querySelectorAll('span.ch')) colourSpan(span, $('#colour').checked);
  });
  // The tip follows the pointer over character spans (a tap shows it on touch screens).
  const over = (e) => { const sp = e.target.closest && e.target.closest('span.ch'); if (sp) showTip(sp); else hideTip(); };
  document.addEventListener('mouseover', over);
  document.addEventListener('click', over);
  window.addEventListener('scroll', hideTip, { passive: true });
  // Charts are drawn at their on-screen width, so redraw on resize.
  window.addEventListener('resize', throttled(() => {
    if (run) drawRunCharts(run);
    else if (!$('#compare-chart').hasAttribute('hidden')) drawCompare();
  }));
  window.addEventListener('hashchange', route);
  loadOptions();
  route();
}

init();
