// edge-central console: vanilla JS, no build step. Reads the JSON API with the session cookie and keeps
// itself current from the server's event stream (/api/events), so a change on an agent shows up here
// as soon as central hears it; nothing here polls.
'use strict';

const state = { agents: new Map(), rollouts: new Map(), bundles: [], selected: null };
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v;
    else if (k === 'style') e.style.cssText = v; // CSSOM, allowed by the CSP (style attributes are not)
    else if (k.startsWith('data-')) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? '' : String(c)));
  return e;
}

async function api(path, init) {
  const res = await fetch(path, { credentials: 'same-origin', ...init });
  if (res.status === 401) {
    location.href = '/login';
    throw new Error('not signed in');
  }
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
  return body;
}

function fmtTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleTimeString();
}

// ---------- fleet table ----------
function filters() {
  return { group: $('#f-group').value, version: $('#f-version').value, online: $('#f-online').value };
}

function matches(a, f) {
  if (f.group && !a.groups.includes(f.group)) return false;
  if (f.version && a.version !== f.version) return false;
  if (f.online && String(a.online === true) !== f.online) return false;
  return true;
}

function refreshFilterOptions() {
  const groups = new Set();
  const versions = new Set();
  for (const a of state.agents.values()) {
    a.groups.forEach((g) => groups.add(g));
    if (a.version) versions.add(a.version);
  }
  for (const [sel, values] of [['#f-group', groups], ['#f-version', versions]]) {
    const s = $(sel);
    const have = new Set([...s.options].map((o) => o.value));
    for (const v of [...values].sort()) if (!have.has(v)) s.append(el('option', { value: v }, v));
  }
  const dl = $('#group-names');
  dl.replaceChildren(...[...groups].sort().map((g) => el('option', { value: g })));
}

function agentRow(a) {
  const status = a.online === true ? 'online' : a.online === false ? 'offline' : 'unknown';
  const tr = el(
    'tr',
    { 'data-device': a.deviceId, 'data-testid': 'agent-row' },
    el('td', { class: 'mono' }, a.deviceId),
    el('td', { class: status, 'data-testid': 'agent-status' }, status),
    el('td', {}, a.groups.join(', ')),
    el('td', { 'data-testid': 'agent-version' }, a.model ? `${a.model}@${a.version}` : '—'),
    el('td', { 'data-testid': 'agent-phase' }, a.phase || ''),
    el('td', {}, a.queueDepth ?? ''),
    el('td', {}, a.processed == null ? '' : `${a.processed} / ${a.failed}`),
    el('td', {}, a.p50 == null ? '' : `${a.p50} / ${a.p99}`),
    el('td', {}, a.resultCount),
    el('td', { title: a.lastError ? a.lastError.message : '' }, a.lastError ? `${a.lastError.code}: ${a.lastError.message}`.slice(0, 80) : ''),
  );
  tr.addEventListener('click', () => showAgent(a.deviceId));
  return tr;
}

let renderQueued = false;
function renderAgents() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    const f = filters();
    const rows = [...state.agents.values()].filter((a) => matches(a, f)).sort((x, y) => x.deviceId.localeCompare(y.deviceId));
    $('#agents tbody').replaceChildren(...rows.map(agentRow));
    const all = [...state.agents.values()];
    const online = all.filter((a) => a.online === true).length;
    $('#summary').textContent = `${all.length} agents, ${online} online, ${all.length - online} offline`;
    $('#shown').textContent = `${rows.length} shown`;
    refreshFilterOptions();
  });
}

// ---------- agent detail ----------
function dl(target, pairs) {
  target.replaceChildren(...pairs.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v == null ? '—' : v)]));
}

async function showAgent(id) {
  state.selected = id;
  const a = await api(`/api/agents/${encodeURIComponent(id)}`);
  if (state.selected !== id) return;
  $('#detail').hidden = false;
  $('#d-id').textContent = id;
  const h = a.health || {};
  dl($('#d-health'), [
    ['status', a.online === true ? 'online' : a.online === false ? 'offline' : 'unknown'],
    ['agent version', h.agentVersion],
    ['uptime (s)', h.uptimeSec],
    ['config', h.configId],
    ['queue depth', h.ingest ? h.ingest.queueDepth : null],
    ['paused', h.ingest ? String(h.ingest.paused) : null],
    ['processed / failed / quarantined', h.counts ? `${h.counts.processed} / ${h.counts.failed} / ${h.counts.quarantined}` : null],
    ['latency p50 / p99 (ms)', h.latencyMs ? `${h.latencyMs.p50} / ${h.latencyMs.p99}` : null],
    ['RSS (MB)', h.rssMb],
    ['disk free (GB)', h.diskFreeBytes != null ? (h.diskFreeBytes / 1e9).toFixed(1) : null],
    ['health at', fmtTime(h.at)],
  ]);
  const ms = a.modelState || {};
  dl($('#d-model'), [
    ['serving', h.model ? `${h.model.id}@${h.model.version} (${h.model.runtime}/${h.model.provider})` : null],
    ['desired', a.desired ? `${a.desired.id}@${a.desired.version} (${a.desired.rolloutId})` : null],
    ['rollout phase', ms.phase ? `${ms.phase}${ms.rolloutId ? ` (${ms.rolloutId})` : ''}` : null],
    ['reason', ms.reason],
  ]);
  $('#d-results tbody').replaceChildren(
    ...a.results.map((r) => el('tr', {}, el('td', {}, fmtTime(r.at)), el('td', {}, r.label), el('td', {}, r.score == null ? '' : r.score.toFixed(3)), el('td', {}, r.model), el('td', { class: 'mono' }, r.resultId))),
  );
  $('#d-errors tbody').replaceChildren(...a.errors.map((e) => el('tr', {}, el('td', {}, fmtTime(e.at)), el('td', {}, e.code), el('td', {}, e.message))));
}

for (const btn of document.querySelectorAll('#detail [data-cmd]')) {
  btn.addEventListener('click', async () => {
    const out = $('#d-command');
    out.hidden = false;
    out.textContent = `${btn.dataset.cmd}…`;
    try {
      const r = await api(`/api/agents/${encodeURIComponent(state.selected)}/commands/${btn.dataset.cmd}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({}),
      });
      const resp = r.responses[0];
      out.textContent = resp.status === 'ok' ? JSON.stringify(resp.data, null, 2) : `error: ${resp.error}`;
    } catch (e) {
      out.textContent = e.message;
    }
  });
}

$('#d-close').addEventListener('click', () => {
  state.selected = null;
  $('#detail').hidden = true;
  $('#d-command').hidden = true;
});

// ---------- rollouts ----------
function rolloutRow(r) {
  const c = r.counts;
  const done = c.succeeded + c.failed + c['timed-out'] + (c.offline || 0);
  const pct = c.total ? Math.round((100 * c.succeeded) / c.total) : 0;
  const halt = el('button', { type: 'button', disabled: !(r.status === 'canary' || r.status === 'widening') }, 'Halt');
  halt.addEventListener('click', async (ev) => {
    ev.stopPropagation();
    try {
      await api(`/api/rollouts/${encodeURIComponent(r.id)}/halt`, { method: 'POST' });
    } catch (e) {
      $('#r-message').textContent = e.message;
    }
  });
  return el(
    'tr',
    { 'data-rollout': r.id, 'data-testid': 'rollout-row' },
    el('td', { class: 'mono' }, r.id),
    el('td', {}, `${r.bundle.id}@${r.bundle.version}`),
    el('td', {}, r.group),
    el('td', { class: `st-${r.status}`, 'data-testid': 'rollout-status' }, r.status),
    el(
      'td',
      { 'data-testid': 'rollout-progress' },
      el('span', { class: 'bar' }, el('i', { style: `width:${pct}%` })),
      ` ${c.succeeded}/${c.total} active, ${c.failed + c['timed-out']} failed, ${c.total - done - c.reverted} waiting${c.offline ? `, ${c.offline} offline` : ''}${c.reverted ? `, ${c.reverted} reverted` : ''}`,
    ),
    el('td', { 'data-testid': 'rollout-reason' }, r.reason || ''),
    el('td', {}, halt),
  );
}

function renderRollouts() {
  const rows = [...state.rollouts.values()].sort((a, b) => (a.createdAt < b.createdAt ? 1 : a.createdAt > b.createdAt ? -1 : 0));
  $('#rollout-list tbody').replaceChildren(...rows.map(rolloutRow));
}

$('#new-rollout').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const msg = $('#r-message');
  msg.className = 'message';
  msg.textContent = '';
  try {
    const r = await api('/api/rollouts', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        bundle: $('#r-bundle').value,
        group: $('#r-group').value.trim(),
        canary: Number($('#r-canary').value),
        maxFailures: Number($('#r-maxfail').value),
        deviceTimeoutSec: Number($('#r-timeout').value),
      }),
    });
    state.rollouts.set(r.id, r);
    renderRollouts();
    msg.className = 'message ok';
    msg.textContent = `started ${r.id}`;
  } catch (e) {
    msg.textContent = e.message;
  }
});

// ---------- registry ----------
function renderBundles() {
  $('#bundles tbody').replaceChildren(
    ...state.bundles.map((b) =>
      el('tr', {}, el('td', {}, `${b.id}@${b.version}`), el('td', {}, `${(b.size / 1e6).toFixed(2)} MB`), el('td', { class: 'mono', title: b.sha256 }, b.sha256.slice(0, 16) + '…'), el('td', { class: 'mono' }, b.keyId), el('td', {}, fmtTime(b.uploadedAt))),
    ),
  );
  const sel = $('#r-bundle');
  const current = sel.value;
  sel.replaceChildren(...state.bundles.map((b) => el('option', { value: `${b.id}@${b.version}` }, `${b.id}@${b.version}`)));
  if (current) sel.value = current;
}

// ---------- live updates ----------
function connect() {
  const es = new EventSource('/api/events');
  es.addEventListener('hello', () => {
    $('#live').textContent = 'live';
    $('#live').classList.add('on');
    void load(); // (re)load everything once the stream is up, so nothing between load and stream is missed
  });
  es.addEventListener('agents', (ev) => {
    for (const a of JSON.parse(ev.data)) {
      if (a.removed) state.agents.delete(a.deviceId);
      else state.agents.set(a.deviceId, a);
      if (a.deviceId === state.selected) void showAgent(a.deviceId).catch(() => {});
    }
    renderAgents();
  });
  es.addEventListener('rollout', (ev) => {
    const r = JSON.parse(ev.data);
    state.rollouts.set(r.id, r);
    renderRollouts();
  });
  es.onerror = () => {
    $('#live').textContent = 'reconnecting';
    $('#live').classList.remove('on');
  };
}

async function load() {
  const [agents, rollouts, bundles] = await Promise.all([api('/api/agents'), api('/api/rollouts'), api('/api/bundles')]);
  state.agents = new Map(agents.agents.map((a) => [a.deviceId, a]));
  state.rollouts = new Map(rollouts.rollouts.map((r) => [r.id, r]));
  state.bundles = bundles.bundles;
  renderAgents();
  renderRollouts();
  renderBundles();
}

for (const id of ['#f-group', '#f-version', '#f-online']) $(id).addEventListener('change', renderAgents);
connect();
