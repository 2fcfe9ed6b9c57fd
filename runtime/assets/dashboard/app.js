// TideMQ dashboard: a small single-page client of the admin API v4 (same origin).
// Plain JavaScript (an ES module, so strict and scoped), no dependencies. Server text only ever
// enters the page as text (textContent, createTextNode, attribute properties), never as HTML.
const API = '/api/v4';
const STORE_KEY = 'tidemq.dashboard.auth'; // sessionStorage: this tab only, gone when it closes
const TICK_MS = 3000;
const WINDOW_MS = 5 * 60 * 1000;
const CODE_TEXT = {
  0: 'ok', 101: 'RPC error', 102: 'unknown error', 103: 'wrong user name or password',
  104: 'credentials missing', 107: 'missing parameter', 108: 'bad parameters',
  109: 'body is not valid JSON', 112: 'client offline or unknown', 115: 'unknown bridge or illegal topic',
  116: 'token expired', 118: 'could not write the configuration',
};
const SECRET_KEY = /pass|secret|token|credential|private/i; // password, key_password, keypass, passwd, …

const $ = (id) => document.getElementById(id);
let auth = null;        // { header, who }
let current = null;     // name of the visible view
let tickTimer = null;
let generation = 0;     // bumped at logout: late answers of an old session are ignored
const rates = [];       // { t, in, out, drop } messages/s
let lastCounters = null;
let lastProm = new Map();

// ---------- small DOM helpers ----------
function el(tag, props, ...children) {
  const node = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') node.className = v;
      else if (k === 'text') node.textContent = v;
      else if (k === 'data') Object.assign(node.dataset, v);
      else if (k === 'on') for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
      else if (k in node && typeof node[k] !== 'function') node[k] = v;
      else node.setAttribute(k, v === true ? '' : String(v));
    }
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
const SVG_NS = 'http://www.w3.org/2000/svg';
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}
const nf = new Intl.NumberFormat('en-US');
const fmtInt = (n) => (Number.isFinite(n) ? nf.format(Math.round(n)) : '–');
function fmtRate(r) {
  if (!Number.isFinite(r)) return '–';
  if (r >= 1000) return nf.format(Math.round(r));
  return r >= 10 ? r.toFixed(0) : r >= 1 ? r.toFixed(1) : r.toFixed(2);
}
function fmtBytes(n) {
  n = Number(n);
  if (!Number.isFinite(n)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(n) : n.toFixed(n >= 100 ? 0 : 1)) + ' ' + units[i];
}
function fmtUptime(s) { // NanoMQ's "H Hours, M minutes, S seconds" → "1d 3h 4m"
  const m = /(\d+)\s*hours?,\s*(\d+)\s*minutes?,\s*(\d+)\s*seconds?/i.exec(String(s || ''));
  if (!m) return s ? String(s) : '–';
  const h = Number(m[1]), d = Math.floor(h / 24);
  return d ? `${d}d ${h % 24}h ${m[2]}m` : h ? `${h}h ${m[2]}m ${m[3]}s` : `${m[2]}m ${m[3]}s`;
}
const protoText = (name, ver) => `${name || 'MQTT'} ${({ 3: '3.1', 4: '3.1.1', 5: '5.0' })[ver] || ver}`;
const codeText = (code) => (code === undefined || code === null ? '' : `code ${code}` + (CODE_TEXT[code] ? ` (${CODE_TEXT[code]})` : ''));
function debounce(fn, ms) {
  let t = null;
  return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); };
}

// ---------- API ----------
class ApiError extends Error {
  constructor(status, code, what) {
    super(`${what}: HTTP ${status}${code !== undefined && code !== null ? ', ' + codeText(code) : ''}`);
    this.status = status; this.code = code;
    this.quiet = status === 401 || status === 0; // already handled (signed out)
  }
}

const failText = (e) => (e instanceof ApiError
  ? `HTTP ${e.status}${e.code !== undefined && e.code !== null ? ', ' + codeText(e.code) : ''}`
  : `network error (${e.message || e})`);

function basicHeader(user, pass) {
  const bytes = new TextEncoder().encode(`${user}:${pass}`);
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return 'Basic ' + btoa(bin);
}

// method, path under /api/v4 (already percent-encoded), options { query, body, text }
async function api(method, path, opts = {}) {
  if (!auth) throw new ApiError(401, 104, `${method} ${path}`);
  const gen = generation;
  let url = API + path;
  if (opts.query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(opts.query)) if (v !== '' && v !== undefined && v !== null) q.append(k, String(v));
    const s = q.toString();
    if (s) url += '?' + s;
  }
  const headers = { Authorization: auth.header, 'X-Requested-With': 'XMLHttpRequest' };
  const init = { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' };
  if (opts.body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(opts.body);
  }
  const res = await fetch(url, init);
  if (gen !== generation) throw new ApiError(0, null, 'signed out');
  const what = `${method} ${API}${path}`;
  if (opts.text && res.ok) return res.text();
  let data = null;
  try { data = await res.json(); } catch (_) { data = null; }
  const code = data && typeof data === 'object' ? data.code : undefined;
  if (res.status === 401) {
    if (!opts.login) signOut(`Signed out: the server refused the credentials — ${codeText(code) || 'HTTP 401'}.`);
    throw new ApiError(401, code, what);
  }
  if (!res.ok) throw new ApiError(res.status, code, what);
  return data;
}

// ---------- status / toast (result of the last user action) ----------
let toastTimer = null;
function status(action, ok, text, code) {
  const box = $('status');
  box.textContent = text;
  box.dataset.code = code === undefined || code === null ? '' : String(code);
  box.dataset.action = action;
  box.dataset.ok = ok ? 'true' : 'false';
  box.className = 'toast ' + (ok ? 'ok' : 'err');
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, 8000);
}

// ---------- login / logout ----------
function showLogin(message) {
  $('app-view').hidden = true;
  $('login-view').hidden = false;
  const err = $('login-error');
  err.textContent = message || '';
  err.hidden = !message;
  $('login-password').value = '';
  $('login-token').value = '';
  ($('login-username').value ? $('login-password') : $('login-username')).focus();
}

function signOut(message) {
  generation++;
  auth = null;
  try { sessionStorage.removeItem(STORE_KEY); } catch (_) { /* storage disabled */ }
  clearTimeout(tickTimer); tickTimer = null;
  rates.length = 0; lastCounters = null; lastProm = new Map();
  $('publish-form').reset();
  for (const id of ['clients-body', 'subs-body', 'retained-body', 'topic-tree', 'bridges', 'config-json', 'chart', 'node-info']) $(id).replaceChildren();
  bridgeCards.clear();
  current = null;
  showLogin(message);
}

async function startSession(candidate, remember) {
  auth = candidate;
  const brokers = await api('GET', '/brokers', { login: true });
  if (remember) {
    try { sessionStorage.setItem(STORE_KEY, JSON.stringify(auth)); } catch (_) { /* memory only */ }
  }
  $('login-view').hidden = true;
  $('app-view').hidden = false;
  $('whoami').textContent = auth.who;
  const b = brokers && Array.isArray(brokers.data) ? brokers.data[0] : null;
  if (b) {
    $('node-info').replaceChildren(el('div', { text: b.sysdescr || 'Broker' }), el('div', { class: 'muted', text: `version ${b.version || '?'}` }));
  }
  route();
  tick();
}

async function onLogin(ev) {
  ev.preventDefault();
  const user = $('login-username').value.trim();
  const pass = $('login-password').value;
  const token = $('login-token').value.trim();
  const candidate = token
    ? { header: 'Bearer ' + token, who: 'JWT' }
    : { header: basicHeader(user, pass), who: user };
  const btn = $('login-submit');
  btn.disabled = true;
  $('login-error').hidden = true;
  try {
    await startSession(candidate, true);
    status('login', true, `Signed in as ${candidate.who}`, 0);
  } catch (e) {
    auth = null;
    const msg = e.status === 401 ? `Sign-in refused: ${codeText(e.code) || 'HTTP 401'}.` : `Cannot reach the admin API: ${e.message}`;
    showLogin(msg);
  } finally {
    btn.disabled = false;
  }
}

// ---------- routing ----------
const VIEWS = {
  overview: { title: 'Overview', load: () => loadOverview() },
  clients: { title: 'Clients', load: () => clients.load() },
  subscriptions: { title: 'Subscriptions', load: () => subs.load() },
  topics: { title: 'Topic tree', load: () => loadTree() },
  retained: { title: 'Retained messages', load: () => retained.load() },
  bridges: { title: 'Bridges', load: () => loadBridges() },
  config: { title: 'Configuration', load: () => loadConfig() },
  publish: { title: 'Publish', load: () => {} },
};

function route() {
  if (!auth) return;
  let name = (location.hash.replace(/^#\/?/, '') || 'overview').split('?')[0];
  if (!VIEWS[name]) name = 'overview';
  current = name;
  for (const key of Object.keys(VIEWS)) {
    $('view-' + key).hidden = key !== name;
    const link = $('nav-' + key);
    link.classList.toggle('active', key === name);
    if (key === name) link.setAttribute('aria-current', 'page'); else link.removeAttribute('aria-current');
  }
  $('view-title').textContent = VIEWS[name].title;
  document.title = `${VIEWS[name].title} · TideMQ`;
  VIEWS[name].load();
}

// ---------- polling: overview counters and the rate chart ----------
function parseProm(text) {
  const out = new Map();
  const re = /^([A-Za-z_:][\w:]*)(\{(?:[^}"]|"(?:[^"\\]|\\.)*")*\})?\s+(\S+)/;
  for (const line of text.split('\n')) {
    if (!line || line[0] === '#') continue;
    const m = re.exec(line);
    if (!m) continue;
    const v = Number(m[3]);
    if (Number.isFinite(v)) out.set(m[1], (out.get(m[1]) || 0) + v); // labels summed
  }
  return out;
}

function setLive(ok, detail) {
  const live = $('live');
  live.dataset.state = ok ? 'live' : 'offline';
  live.textContent = ok ? 'live' : 'offline';
  live.title = detail || '';
}

async function tick() {
  clearTimeout(tickTimer);
  if (!auth) return;
  const gen = generation;
  if (!document.hidden) {
    try {
      const jobs = [api('GET', '/prometheus', { text: true }), api('GET', '/nodes')];
      if (current === 'overview') jobs.push(api('GET', '/metrics'));
      if (current === 'bridges') jobs.push(loadBridges());
      const [text, nodes, metrics] = await Promise.all(jobs);
      if (gen !== generation) return;
      onProm(text);
      onNodes(nodes);
      if (current === 'overview') onMetrics(metrics);
      setLive(true);
    } catch (e) {
      if (gen !== generation || !auth) return;
      setLive(false, e.message);
    }
  }
  if (gen === generation && auth) tickTimer = setTimeout(tick, TICK_MS);
}

function onProm(text) {
  const p = parseProm(text);
  lastProm = p;
  const now = Date.now();
  const c = { t: now, in: p.get('nanomq_messages_received'), out: p.get('nanomq_messages_sent'), drop: p.get('nanomq_messages_dropped') };
  if (lastCounters && now > lastCounters.t) {
    const dt = (now - lastCounters.t) / 1000;
    const r = (k) => (Number.isFinite(c[k]) && Number.isFinite(lastCounters[k]) ? Math.max(0, c[k] - lastCounters[k]) / dt : 0);
    rates.push({ t: now, in: r('in'), out: r('out'), drop: r('drop') });
    while (rates.length && now - rates[0].t > WINDOW_MS + TICK_MS * 2) rates.shift();
  }
  lastCounters = c;
  if (current === 'overview') renderOverviewCounters();
}

// The answering node comes first; in a cluster every live node follows, each naming itself.
function onNodes(nodes) {
  const all = nodes && Array.isArray(nodes.data) ? nodes.data.filter((x) => x && typeof x === 'object') : [];
  const n = all[0];
  if (!n) return;
  if (current === 'overview') {
    $('ov-uptime').textContent = fmtUptime(n.uptime);
    $('ov-uptime').title = n.uptime || '';
    $('ov-version').textContent = n.version || '–';
    $('ov-version').title = n.node_status || '';
    const cluster = all.some((x) => x && x.node !== undefined);
    $('ov-cluster').hidden = !cluster;
    if (cluster) {
      $('nodes-body').replaceChildren(...all.map((x, i) => el('tr', { data: { testid: 'node-row', node: String(x.node ?? '') } },
        el('td', { class: 'mono' }, String(x.node ?? ''), i === 0 ? el('span', { class: 'badge good', text: 'this node' }) : null),
        el('td', { class: 'num', text: fmtInt(Number(x.connections) || 0) }),
        el('td', { text: fmtUptime(x.uptime), title: x.uptime || '' }),
        el('td', { text: x.version || '' }))));
    }
  }
}

function onMetrics(m) {
  if (!m || typeof m !== 'object') return;
  $('ov-cpu').textContent = m.cpuinfo || '–';
  $('ov-memory').textContent = m.memory !== undefined ? fmtBytes(m.memory) + ' resident' : '';
}

// Overview cards fed from /prometheus: [element id, metric, format of the small line under it].
const PROM_CARDS = [
  ['ov-connections', 'nanomq_connections_count'], ['ov-connections-max', 'nanomq_connections_max', (v) => `max ${fmtInt(v)}`],
  ['ov-sessions', 'nanomq_sessions_count'], ['ov-sessions-max', 'nanomq_sessions_max', (v) => `max ${fmtInt(v)}`],
  ['ov-subscribers', 'nanomq_subscribers_count'], ['ov-topics', 'nanomq_topics_count', (v) => `${fmtInt(v)} topics`],
  ['ov-msg-in', 'nanomq_messages_received'], ['ov-msg-out', 'nanomq_messages_sent'], ['ov-msg-drop', 'nanomq_messages_dropped'],
  ['ov-retained', 'tidemq_retained_messages'],
];
function renderOverviewCounters() {
  for (const [id, metric, fmt] of PROM_CARDS) {
    const v = lastProm.get(metric);
    $(id).textContent = v === undefined ? (fmt ? '' : '–') : (fmt || fmtInt)(v);
  }
  const last = rates[rates.length - 1];
  for (const k of ['in', 'out', 'drop']) $('ov-rate-' + k).textContent = last ? `${fmtRate(last[k])} /s` : '';
  $('ov-msg-drop').parentElement.classList.toggle('alert', !!last && last.drop > 0);
  drawChart();
}

// Grid step: 1, 2 or 5 × 10^n, so that four steps cover the largest value.
function niceStep(max) {
  const raw = max > 0 ? max / 4 : 0.25;
  const e = Math.pow(10, Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 5, 10]) if (raw <= m * e) return m * e;
  return 10 * e;
}

function drawChart() {
  const box = $('chart');
  const W = Math.max(320, box.clientWidth || 800);
  const H = 240, L = 52, R = 14, T = 12, B = 26;
  const now = Date.now();
  const pts = rates.filter((p) => now - p.t <= WINDOW_MS + TICK_MS);
  let max = 0;
  for (const p of pts) max = Math.max(max, p.in, p.out, p.drop);
  const step = niceStep(max);
  const top = step * 4;
  const tick = (v) => (v === 0 ? '0' : step >= 1 ? nf.format(v) : v.toFixed(step >= 0.1 ? 1 : 2));
  const x = (t) => L + (1 - (now - t) / WINDOW_MS) * (W - L - R);
  const y = (v) => T + (1 - v / top) * (H - T - B);
  const root = svg('svg', { width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'Messages per second' });
  const defs = svg('defs');
  const clip = svg('clipPath', { id: 'plot-clip' });
  clip.append(svg('rect', { x: L, y: 0, width: W - L - R, height: H }));
  defs.append(clip);
  root.append(defs);
  for (let i = 0; i <= 4; i++) {
    const v = step * i, yy = y(v).toFixed(1);
    root.append(svg('line', { class: 'grid', x1: L, x2: W - R, y1: yy, y2: yy }));
    root.append(svg('text', { class: 'axis', x: L - 8, y: Number(yy) + 4, 'text-anchor': 'end' }, tick(v)));
  }
  for (let m = 0; m <= 5; m++) {
    const xx = x(now - m * 60000);
    root.append(svg('text', { class: 'axis', x: xx.toFixed(1), y: H - 8, 'text-anchor': m === 0 ? 'end' : m === 5 ? 'start' : 'middle' }, m === 0 ? 'now' : `−${m} min`));
  }
  if (pts.length >= 2) {
    const plot = svg('g', { 'clip-path': 'url(#plot-clip)' });
    const line = (k) => pts.map((p) => `${x(p.t).toFixed(1)},${y(p[k]).toFixed(1)}`).join(' ');
    const base = y(0).toFixed(1);
    plot.append(svg('polygon', { class: 'area in', points: `${x(pts[0].t).toFixed(1)},${base} ${line('in')} ${x(pts[pts.length - 1].t).toFixed(1)},${base}` }));
    for (const k of ['in', 'out', 'drop']) plot.append(svg('polyline', { class: 'line ' + k, points: line(k) }));
    root.append(plot);
  } else {
    root.append(svg('text', { class: 'axis', x: (L + W - R) / 2, y: H / 2, 'text-anchor': 'middle' }, 'Collecting data…'));
  }
  box.replaceChildren(root);
}

async function loadOverview() {
  renderOverviewCounters();
  try {
    const [nodes, metrics] = await Promise.all([api('GET', '/nodes'), api('GET', '/metrics')]);
    onNodes(nodes);
    onMetrics(metrics);
  } catch (e) {
    setLive(false, e.message);
  }
}

// ---------- paged tables ----------
function pager(prefix, state, meta, shown, reload) {
  const box = $(prefix + '-pager');
  const count = meta && Number.isFinite(meta.count) ? meta.count : shown;
  const first = shown ? (state.page - 1) * state.limit + 1 : 0;
  const hasNext = meta ? !!meta.hasnext : false;
  const limit = el('select', { id: prefix + '-limit', 'aria-label': 'Rows per page' },
    [10, 25, 50, 100].map((n) => el('option', { value: String(n), text: `${n} / page`, selected: n === state.limit })));
  limit.addEventListener('change', () => { state.limit = Number(limit.value); state.page = 1; reload(); });
  box.replaceChildren(
    el('span', { id: prefix + '-info', class: 'muted', text: shown ? `${fmtInt(first)}–${fmtInt(first + shown - 1)} of ${fmtInt(count)}` : `0 of ${fmtInt(count)}` }),
    el('span', { class: 'spacer' }),
    limit,
    el('button', { type: 'button', class: 'btn', id: prefix + '-prev', text: '‹ Prev', disabled: state.page <= 1, on: { click: () => { state.page--; reload(); } } }),
    el('span', { class: 'page', text: `page ${state.page}` }),
    el('button', { type: 'button', class: 'btn', id: prefix + '-next', text: 'Next ›', disabled: !hasNext, on: { click: () => { state.page++; reload(); } } }),
  );
}

function messageRow(tbody, cols, text, isError) {
  // The columns shown (a cluster-only one is hidden on a single node).
  const table = tbody.closest('table');
  const shown = table ? [...table.querySelectorAll('thead th')].filter((th) => getComputedStyle(th).display !== 'none').length : 0;
  tbody.replaceChildren(el('tr', { class: 'empty' }, el('td', { colSpan: shown || cols, class: isError ? 'error' : 'muted', text })));
}

// A filtered, paged table: GET path?_page&_limit&<filters> → { data: [...], meta }.
function pagedList(prefix, path, what, cols, filters, row, after) {
  const state = { page: 1, limit: 25 };
  const load = async () => {
    const tbody = $(prefix + '-body');
    let res;
    try {
      res = await api('GET', path, { query: { _page: state.page, _limit: state.limit, ...filters() } });
    } catch (e) {
      if (!e.quiet) messageRow(tbody, cols, `Could not load ${what}: ${e.message}`, true);
      return;
    }
    const list = Array.isArray(res && res.data) ? res.data : [];
    if (!list.length && state.page > 1) { state.page = 1; return load(); } // e.g. last row of the last page kicked
    if (!list.length) messageRow(tbody, cols, `No ${what} match.`);
    else tbody.replaceChildren(...list.map(row));
    pager(prefix, state, res && res.meta, list.length, load);
    if (after) after(res, list);
  };
  return { load, first: () => { state.page = 1; load(); } };
}
const val = (id) => $(id).value.trim();

// ---------- clients ----------
const clients = pagedList('clients', '/clients', 'clients', 9, () => ({
  _like_clientid: val('client-filter'), username: val('client-username'), conn_state: val('client-state'), proto_ver: val('client-proto'),
}), (c) => {
  const id = String(c.client_id ?? '');
  const connected = c.conn_state === 'connected';
  const kick = el('button', { type: 'button', class: 'btn danger small', text: 'Kick', title: 'Disconnect this client', data: { testid: 'kick-button', clientId: id } });
  kick.addEventListener('click', () => onKick(kick, id));
  return el('tr', { data: { clientId: id, testid: 'client-row' } },
    el('td', { class: 'mono' }, el('a', { href: '#/subscriptions', text: id, title: 'Show its subscriptions', on: { click: () => { $('sub-clientid').value = id; } } })),
    el('td', { class: c.username ? '' : 'muted', text: c.username || '—' }),
    el('td', {}, el('span', { class: 'badge ' + (connected ? 'good' : 'idle'), text: connected ? 'connected' : 'disconnected' })),
    el('td', { class: 'cluster-only mono', text: String(c.node ?? ''), data: { testid: 'client-node' } }),
    el('td', { text: protoText(c.proto_name, c.proto_ver) }),
    el('td', { class: 'num', text: c.keepalive !== undefined ? `${c.keepalive} s` : '' }),
    el('td', { text: c.clean_start ? 'yes' : 'no' }),
    el('td', { class: 'mono muted', text: c.will_topic || '' }),
    el('td', { class: 'actions' }, kick));
}, (res) => clusterNote('clients', res));

// A cluster's list: the node column shows, and nodes that did not answer are named.
function clusterNote(prefix, res) {
  const cluster = res && res.cluster && typeof res.cluster === 'object' ? res.cluster : null;
  $(prefix + '-table').classList.toggle('cluster', !!cluster);
  const missing = cluster && Array.isArray(cluster.missing) ? cluster.missing : [];
  const truncated = cluster && Array.isArray(cluster.truncated) ? cluster.truncated : [];
  const note = [
    missing.length ? `Not answering, so not listed here: ${missing.join(', ')}.` : '',
    truncated.length ? `Sent part of their list (use smaller pages): ${truncated.join(', ')}.` : '',
  ].filter(Boolean).join(' ');
  $(prefix + '-cluster-note').textContent = note;
  $(prefix + '-cluster-note').hidden = !note;
}

async function onKick(btn, id) {
  if (btn.dataset.confirm !== '1') { // the first click arms the button for 4 s
    btn.dataset.confirm = '1';
    btn.textContent = 'Confirm kick';
    btn.classList.add('armed');
    setTimeout(() => { if (btn.dataset.confirm === '1') { btn.dataset.confirm = ''; btn.textContent = 'Kick'; btn.classList.remove('armed'); } }, 4000);
    return;
  }
  btn.disabled = true;
  const keep = $('client-keep-session').checked;
  try {
    const r = await api('DELETE', '/clients/' + encodeURIComponent(id), { query: keep ? { keep_session: 'true' } : undefined });
    status('kick', true, `Kicked ${id}${keep ? ' (session kept)' : ''} — ${codeText(r && r.code)}`, r && r.code);
  } catch (e) {
    if (!e.quiet) status('kick', false, `Kick ${id} failed — ${failText(e)}`, e.code);
  }
  clients.load();
}

// ---------- subscriptions ----------
const subs = pagedList('subs', '/subscriptions', 'subscriptions', 5, () => ({
  clientid: val('sub-clientid'), topic: val('sub-topic'), qos: val('sub-qos'), share: val('sub-share'),
}), (s) => {
  const topic = String(s.topic ?? '');
  const share = /^\$share\/([^/]+)\//.exec(topic);
  return el('tr', { data: { clientId: String(s.clientid ?? ''), testid: 'sub-row' } },
    el('td', { class: 'mono', text: s.clientid ?? '' }),
    el('td', { class: 'mono', text: topic }),
    el('td', {}, el('span', { class: 'badge qos', text: `QoS ${s.qos}` })),
    el('td', { class: share ? '' : 'muted', text: share ? share[1] : '—' }),
    el('td', { class: 'cluster-only mono', text: String(s.node ?? ''), data: { testid: 'sub-node' } }));
}, (res) => clusterNote('subs', res));

// ---------- topic tree ----------
async function loadTree() {
  const box = $('topic-tree');
  let res;
  try {
    res = await api('GET', '/topic-tree');
  } catch (e) {
    if (!e.quiet) box.replaceChildren(el('p', { class: 'error', text: `Could not load the topic tree: ${e.message}` }));
    return;
  }
  const levels = Array.isArray(res && res.data) ? res.data : [];
  // Level i+1 lists the children of level i's nodes in order; cld_cnt says how many each has.
  const mk = (n) => ({ topic: String(n.topic ?? ''), count: Number(n.cld_cnt) || 0, clients: Array.isArray(n.clientid) ? n.clientid : [], children: [] });
  let parents = (levels[0] || []).map(mk);
  const roots = parents;
  let consistent = true;
  for (let i = 1; i < levels.length; i++) {
    const next = (levels[i] || []).map(mk);
    let k = 0;
    for (const p of parents) { p.children = next.slice(k, k + p.count); k += p.count; }
    if (k !== next.length) consistent = false;
    parents = next;
  }
  let nodes = 0, subs = 0;
  const render = (n, path, depth) => {
    nodes++; subs += n.clients.length;
    const label = depth === 0 && n.topic === '' ? '(root)' : n.topic === '' ? '(empty level)' : n.topic;
    const head = [
      el('span', { class: 'mono level', text: label }),
      depth > 1 ? el('span', { class: 'mono muted path', text: path }) : null,
      n.clients.length ? el('span', { class: 'badge', text: `${n.clients.length} subscriber${n.clients.length === 1 ? '' : 's'}`, title: n.clients.slice(0, 50).join('\n') }) : null,
    ];
    const clients = n.clients.length
      ? el('div', { class: 'chips' }, n.clients.slice(0, 20).map((c) => el('span', { class: 'chip mono', text: c })), n.clients.length > 20 ? el('span', { class: 'muted', text: `and ${n.clients.length - 20} more` }) : null)
      : null;
    const kids = n.children.map((c) => render(c, path ? `${path}/${c.topic}` : c.topic, depth + 1));
    if (!kids.length) return el('div', { class: 'leaf', data: { topic: path } }, el('div', { class: 'node-head' }, head), clients);
    return el('details', { open: depth < 2, data: { topic: path } }, el('summary', { class: 'node-head' }, head), clients, el('div', { class: 'kids' }, kids));
  };
  const tree = roots.map((r) => render(r, '', 0));
  if (!roots.length || (roots.length === 1 && !roots[0].children.length && !roots[0].clients.length)) {
    box.replaceChildren(el('p', { class: 'muted', text: 'No subscriptions yet.' }));
  } else {
    box.replaceChildren(...tree, consistent ? null : el('p', { class: 'error', text: 'The tree levels do not add up (cld_cnt); some nodes may be misplaced.' }));
  }
  $('tree-summary').textContent = `${fmtInt(nodes)} nodes, ${fmtInt(subs)} subscriptions`;
}

// ---------- retained messages ----------
function payloadPreview(b64) {
  let bytes;
  try {
    const bin = atob(String(b64 || ''));
    bytes = Uint8Array.from(bin, (ch) => ch.charCodeAt(0));
  } catch (_) {
    return { text: '(payload is not valid base64)', binary: true };
  }
  if (!bytes.length) return { text: '(empty)', binary: true };
  try {
    const s = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    if (!/[\u0000-\u0008\u000e-\u001f\u007f]/.test(s)) return { text: s.length > 300 ? s.slice(0, 300) + '…' : s, full: s.slice(0, 4000), binary: false };
  } catch (_) { /* not UTF-8: show hex */ }
  const hex = Array.from(bytes.slice(0, 48), (b) => b.toString(16).padStart(2, '0')).join(' ');
  return { text: hex + (bytes.length > 48 ? ' …' : ''), binary: true };
}

const retained = pagedList('retained', '/retained', 'retained messages', 4, () => ({ topic: val('retained-topic') || '#' }), (m) => {
  const p = payloadPreview(m.payload);
  return el('tr', { data: { topic: String(m.topic ?? ''), testid: 'retained-row' } },
    el('td', { class: 'mono', text: m.topic ?? '' }),
    el('td', {}, el('span', { class: 'badge qos', text: `QoS ${m.qos}` })),
    el('td', { class: 'num', text: fmtBytes(m.payload_size) }),
    el('td', { class: 'payload' + (p.binary ? ' mono muted' : ''), text: p.text, title: p.full || '' }));
});

// ---------- bridges ----------
const bridgeCards = new Map(); // name -> { card, fields, input, busy }
async function loadBridges() {
  const box = $('bridges');
  let conf, metrics;
  try {
    [conf, metrics] = await Promise.all([api('GET', '/bridges'), api('GET', '/metrics')]);
  } catch (e) {
    if (!e.quiet) box.replaceChildren(el('div', { class: 'panel error', text: `Could not load bridges: ${e.message}` }));
    bridgeCards.clear();
    return;
  }
  const nodes = conf && conf.data && conf.data.bridge && Array.isArray(conf.data.bridge.nodes) ? conf.data.bridge.nodes : [];
  const stats = new Map((metrics && Array.isArray(metrics.metrics) ? metrics.metrics : []).map((m) => [String(m.name), m]));
  const names = nodes.map((n) => String(n.name ?? ''));
  if (names.join('\u0000') !== Array.from(bridgeCards.keys()).join('\u0000')) {
    bridgeCards.clear();
    box.replaceChildren(...(nodes.length ? nodes.map((n, i) => bridgeCard(n, i)) : [el('div', { class: 'panel muted', text: 'No bridges are configured (bridges.mqtt.<name> in the configuration).' })]));
  }
  nodes.forEach((n) => updateBridge(n, stats.get(String(n.name ?? ''))));
}

function bridgeCard(n, i) {
  const name = String(n.name ?? '');
  const fields = {};
  const dd = (key, testid) => (fields[key] = el('dd', { data: testid ? { testid } : undefined }));
  const input = el('input', { type: 'checkbox', id: `bridge-switch-${i}`, role: 'switch', data: { testid: 'bridge-switch', bridge: name } });
  const entry = { fields, input, busy: false };
  input.addEventListener('change', () => onSwitch(entry, name));
  fields.state = el('span', { class: 'badge', data: { testid: 'bridge-state' } });
  const card = el('div', { class: 'panel bridge', data: { bridge: name, testid: 'bridge-card' } },
    el('div', { class: 'bridge-head' },
      el('h2', { class: 'mono', text: name }), fields.state, el('span', { class: 'spacer' }),
      el('label', { class: 'switch', htmlFor: input.id, title: 'Bridge on/off' }, input, el('span', { class: 'slider', 'aria-hidden': 'true' }), fields.onoff = el('span', { class: 'switch-label' }))),
    el('dl', { class: 'kv' },
      el('dt', { text: 'Server' }), dd('server'),
      el('dt', { text: 'Protocol' }), dd('proto'),
      el('dt', { text: 'Client id' }), dd('clientid'),
      el('dt', { text: 'Outbox' }), dd('outbox', 'bridge-outbox'),
      el('dt', { text: 'Sent / received' }), dd('msgs'),
      el('dt', { text: 'Bytes sent / received' }), dd('bytes'),
      el('dt', { text: 'Dropped (send / recv)' }), dd('drops'),
      el('dt', { text: 'Reconnects' }), dd('reconnects')),
    el('div', { class: 'topics' },
      el('div', {}, el('h3', { text: 'Forwards (local → remote)' }), fields.forwards = el('ul', { class: 'mono' })),
      el('div', {}, el('h3', { text: 'Subscriptions (remote → local)' }), fields.subs = el('ul', { class: 'mono' }))));
  entry.card = card;
  bridgeCards.set(name, entry);
  return card;
}

function updateBridge(n, m) {
  const entry = bridgeCards.get(String(n.name ?? ''));
  if (!entry) return;
  const f = entry.fields;
  const c = n.connector || {};
  const state = m && m.state ? String(m.state) : n.enable ? 'unknown' : 'disabled';
  f.state.textContent = state;
  f.state.className = 'badge ' + ({ connected: 'good', connecting: 'warn', disconnected: 'bad', disabled: 'idle' }[state] || 'idle');
  f.server.textContent = c.server || c.address || '—';
  f.proto.textContent = protoText('MQTT', c.proto_ver);
  f.clientid.textContent = c.clientid || '(generated)';
  f.outbox.textContent = m && m.outbox !== undefined ? `${fmtInt(m.outbox)} messages` : '—';
  f.msgs.textContent = m ? `${fmtInt(m.tx_msgs)} / ${fmtInt(m.rx_msgs)}` : '—';
  f.bytes.textContent = m ? `${fmtBytes(m.tx_bytes)} / ${fmtBytes(m.rx_bytes)}` : '—';
  f.drops.textContent = m ? `${fmtInt(m.send_drop)} / ${fmtInt(m.recv_drop)}` : '—';
  f.reconnects.textContent = m ? fmtInt(m.reconnects) : '—';
  const topicItems = (list, fmt) => (Array.isArray(list) && list.length ? list.map((t) => el('li', { text: fmt(t) })) : [el('li', { class: 'muted', text: 'none' })]);
  f.forwards.replaceChildren(...topicItems(n.forwards, (t) => `${t.local_topic || '(same)'} → ${t.remote_topic || '(same)'}`));
  f.subs.replaceChildren(...topicItems(n.subscription, (t) => `${t.remote_topic || '(same)'} → ${t.local_topic || '(same)'}  QoS ${t.qos ?? 0}`));
  if (!entry.busy) entry.input.checked = !!n.enable;
  f.onoff.textContent = entry.input.checked ? 'enabled' : 'disabled';
}

async function onSwitch(entry, name) {
  const on = entry.input.checked;
  entry.busy = true;
  entry.input.disabled = true;
  try {
    const r = await api('POST', '/bridges/switch/' + encodeURIComponent(name), { body: { data: { bridge_switch: on } } });
    status('bridge-switch', true, `Bridge ${name} switched ${on ? 'on' : 'off'} — ${codeText(r && r.code)}`, r && r.code);
  } catch (e) {
    entry.input.checked = !on;
    if (!e.quiet) status('bridge-switch', false, `Switching bridge ${name} failed — ${failText(e)}`, e.code);
  } finally {
    entry.busy = false;
    entry.input.disabled = false;
  }
  if (current === 'bridges') loadBridges();
}

// ---------- configuration (read only, secrets masked here too) ----------
function maskSecrets(value, key) {
  if (key !== undefined && SECRET_KEY.test(key) && value !== null && value !== '' && typeof value !== 'boolean') return '******';
  if (typeof value === 'string' && /-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(value)) return '******';
  if (Array.isArray(value)) return value.map((v) => maskSecrets(v, key !== undefined && SECRET_KEY.test(key) ? key : undefined));
  if (value && typeof value === 'object') {
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = maskSecrets(v, k);
    return out;
  }
  return value;
}

function jsonNodes(value, indent) {
  const pad = '  '.repeat(indent);
  if (value === null) return [el('span', { class: 'j-null', text: 'null' })];
  if (typeof value === 'string') return [el('span', { class: value === '******' ? 'j-secret' : 'j-str', text: JSON.stringify(value) })];
  if (typeof value === 'number') return [el('span', { class: 'j-num', text: String(value) })];
  if (typeof value === 'boolean') return [el('span', { class: 'j-bool', text: String(value) })];
  const isArr = Array.isArray(value);
  const entries = isArr ? value.map((v, i) => [i, v]) : Object.entries(value);
  if (!entries.length) return [isArr ? '[]' : '{}'];
  const out = [isArr ? '[\n' : '{\n'];
  entries.forEach(([k, v], i) => {
    out.push(pad + '  ');
    if (!isArr) out.push(el('span', { class: 'j-key', text: JSON.stringify(k) }), ': ');
    out.push(...jsonNodes(v, indent + 1));
    out.push(i < entries.length - 1 ? ',\n' : '\n');
  });
  out.push(pad + (isArr ? ']' : '}'));
  return out;
}

async function loadConfig() {
  const pre = $('config-json');
  const section = $('config-section').value;
  try {
    const res = await api('GET', '/configuration' + (section ? '/' + encodeURIComponent(section) : ''));
    const data = maskSecrets(res && res.data !== undefined ? res.data : res);
    pre.replaceChildren(...jsonNodes(data, 0));
  } catch (e) {
    if (!e.quiet) pre.replaceChildren(el('span', { class: 'error', text: `Could not load the configuration: ${e.message}` }));
  }
}

// ---------- publish ----------
async function onPublish(ev) {
  ev.preventDefault();
  const result = $('pub-result');
  const body = {
    topic: $('pub-topic').value.trim(),
    payload: $('pub-payload').value,
    qos: Number($('pub-qos').value),
    retain: $('pub-retain').checked,
  };
  const clientid = $('pub-clientid').value.trim();
  if (clientid) body.clientid = clientid;
  const fail = (msg, code) => { result.textContent = msg; result.className = 'error'; status('publish', false, msg, code); };
  if ($('pub-base64').checked) {
    const compact = body.payload.replace(/\s+/g, '');
    try { atob(compact); } catch (_) { return fail('The payload is not valid base64.'); }
    body.payload = compact;
    body.decoding = 'base64'; // NanoMQ: "decoding" = how the request's payload is encoded
  }
  const props = {};
  const ct = $('pub-content-type').value.trim();
  if (ct) props.content_type = ct;
  const exp = $('pub-expiry').value.trim();
  if (exp) props.message_expiry_interval = Number(exp);
  const pfi = $('pub-pfi').value;
  if (pfi) props.payload_format_indicator = Number(pfi);
  const rt = $('pub-response-topic').value.trim();
  if (rt) props.response_topic = rt;
  const cd = $('pub-correlation').value;
  if (cd) props.correlation_data = cd;
  const up = {};
  for (const line of $('pub-user-props').value.split('\n')) {
    if (!line.trim()) continue;
    const i = line.indexOf('=');
    if (i <= 0) return fail(`User property line without name=value: ${line.trim()}`);
    up[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  if (Object.keys(up).length) props.user_properties = up;
  if (Object.keys(props).length) body.properties = props;
  const btn = $('pub-submit');
  btn.disabled = true;
  try {
    const r = await api('POST', '/mqtt/publish', { body });
    const code = r ? r.code : undefined;
    const ok = code === 0;
    const msg = ok ? `Published to ${body.topic} — ${codeText(code)}` : `Publish to ${body.topic} failed — ${codeText(code)}`;
    result.textContent = `${msg} at ${new Date().toLocaleTimeString()}`;
    result.className = ok ? 'ok' : 'error';
    status('publish', ok, msg, code);
  } catch (e) {
    if (!e.quiet) fail(`Publish failed — ${failText(e)}`, e.code);
  } finally {
    btn.disabled = false;
  }
}

// ---------- wiring ----------
function init() {
  $('login-form').addEventListener('submit', onLogin);
  $('logout').addEventListener('click', () => { signOut('You have signed out.'); status('logout', true, 'Signed out', 0); });
  window.addEventListener('hashchange', route);
  window.addEventListener('resize', debounce(() => { if (current === 'overview') drawChart(); }, 150));
  document.addEventListener('visibilitychange', () => { if (!document.hidden && auth) tick(); });

  const wire = (list, form, typed, picked, refresh) => {
    $(form).addEventListener('submit', (e) => { e.preventDefault(); list.first(); });
    for (const id of typed) $(id).addEventListener('input', debounce(list.first, 300));
    for (const id of picked) $(id).addEventListener('change', list.first);
    $(refresh).addEventListener('click', list.load);
  };
  wire(clients, 'clients-filters', ['client-filter', 'client-username'], ['client-state', 'client-proto'], 'clients-refresh');
  wire(subs, 'subs-filters', ['sub-clientid', 'sub-topic', 'sub-share'], ['sub-qos'], 'subs-refresh');
  wire(retained, 'retained-filters', [], [], 'retained-refresh');

  $('tree-refresh').addEventListener('click', loadTree);
  $('tree-expand').addEventListener('click', () => { for (const d of $('topic-tree').querySelectorAll('details')) d.open = true; });
  $('tree-collapse').addEventListener('click', () => { for (const d of $('topic-tree').querySelectorAll('details')) d.open = false; });


  $('config-section').addEventListener('change', loadConfig);
  $('config-refresh').addEventListener('click', loadConfig);
  $('publish-form').addEventListener('submit', onPublish);

  let saved = null;
  try { saved = JSON.parse(sessionStorage.getItem(STORE_KEY) || 'null'); } catch (_) { saved = null; }
  if (saved && typeof saved.header === 'string') {
    startSession({ header: saved.header, who: String(saved.who || '') }, false).catch((e) => {
      auth = null;
      try { sessionStorage.removeItem(STORE_KEY); } catch (_) { /* ignore */ }
      showLogin(e.status === 401 ? 'Your session has ended; please sign in again.' : `Cannot reach the admin API: ${e.message}`);
    });
  } else {
    showLogin('');
  }
}

init(); // module scripts run after the document is parsed
