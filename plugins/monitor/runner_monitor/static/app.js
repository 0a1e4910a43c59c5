// runner monitor: a small vanilla-JS dashboard over /api. No build step.
// Views by location hash: #/jobs?state=..., #/job/<id>, #/group/<id>, #/workers, #/queues.
// Live updates: server-sent events (/api/stream) say "something changed"; the current view is
// fetched again. If EventSource is missing or keeps failing, the page polls instead.
"use strict";

const STATES = ["queued", "received", "started", "retrying", "succeeded", "failed", "dead"];
const RANGES = [["", "any time"], ["900", "last 15 min"], ["3600", "last hour"],
                ["86400", "last 24 h"], ["604800", "last 7 days"]];
const POLL_MS = 3000;
let role = "read";
let refreshing = null;

// --- helpers ---------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

async function api(path, options) {
  const res = await fetch(path, Object.assign({credentials: "same-origin"}, options || {}));
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) throw new Error((body && body.error) || `${res.status} ${res.statusText}`);
  return body;
}

function when(ts) {
  if (!ts) return "";
  const d = new Date(ts * 1000);
  const ago = (Date.now() / 1000) - ts;
  let rel;
  if (ago < 0) rel = "just now";
  else if (ago < 60) rel = `${Math.round(ago)}s ago`;
  else if (ago < 3600) rel = `${Math.round(ago / 60)}m ago`;
  else if (ago < 86400) rel = `${Math.round(ago / 3600)}h ago`;
  else rel = `${Math.round(ago / 86400)}d ago`;
  return h("time", {datetime: d.toISOString(), title: d.toLocaleString()}, rel);
}

function secs(s) {
  if (s === null || s === undefined) return "";
  return s < 10 ? `${s.toFixed(2)}s` : s < 120 ? `${s.toFixed(1)}s` : `${Math.round(s / 60)}m`;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}

function badge(state) { return h("span", {class: `badge state-${state}`}, state); }
function shortId(id) { return id.length > 12 ? id.slice(0, 12) + "…" : id; }

function route() {
  const [path, query] = (location.hash.slice(1) || "/jobs").split("?");
  return {parts: path.split("/").filter(Boolean), params: new URLSearchParams(query || "")};
}

function setHash(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  const next = `#${path}${q.toString() ? "?" + q : ""}`;
  if (location.hash !== next) location.hash = next; else render();
}

// --- views -----------------------------------------------------------------------------------
async function jobsView(params) {
  const filters = {state: params.get("state") || "", job: params.get("job") || "",
                   route: params.get("route") || "", range: params.get("range") || "",
                   q: params.get("q") || ""};
  const query = new URLSearchParams({limit: "200"});
  for (const k of ["state", "job", "route", "q"]) if (filters[k]) query.set(k, filters[k]);
  if (filters.range) query.set("since", String(Date.now() / 1000 - Number(filters.range)));
  const data = await api(`/api/jobs?${query}`);
  const change = (key) => (e) => setHash("/jobs", Object.assign({}, filters, {[key]: e.target.value}));
  const select = (key, label, values) => h("label", {}, label,
    h("select", {name: key, onchange: change(key)},
      values.map(([v, text]) => h("option", {value: v, selected: v === filters[key]}, text))));
  const counts = data.facets.states;
  const chips = h("div", {class: "chips"}, STATES.map((s) =>
    h("a", {href: `#/jobs?state=${s}`, class: `chip state-${s}${filters.state === s ? " on" : ""}`},
      s, h("b", {}, counts[s] || 0))));
  const search = h("form", {class: "search", onsubmit: (e) => {
      e.preventDefault();
      setHash("/jobs", Object.assign({}, filters, {q: e.target.elements.q.value.trim()}));
    }},
    h("input", {name: "q", type: "search", placeholder: "search by job id", value: filters.q}),
    h("button", {type: "submit"}, "Search"));
  const form = h("div", {class: "filters"},
    select("state", "State ", [["", "any"], ...STATES.map((s) => [s, s])]),
    select("job", "Type ", [["", "any"], ...data.facets.jobs.map((j) => [j, j])]),
    select("route", "Route ", [["", "any"], ...data.facets.routes.map((r) => [r, r])]),
    select("range", "Updated ", RANGES), search,
    (filters.state || filters.job || filters.route || filters.range || filters.q)
      ? h("a", {href: "#/jobs", class: "clear"}, "clear filters") : null);
  const rows = data.jobs.map((j) => h("tr", {"data-id": j.id, class: "job-row",
      onclick: () => { location.hash = `#/job/${j.id}`; }},
    h("td", {class: "mono"}, h("a", {href: `#/job/${j.id}`}, shortId(j.id))),
    h("td", {}, j.job || "?"), h("td", {class: "summary", title: j.summary}, j.summary),
    h("td", {}, j.route || ""), h("td", {}, badge(j.state),
      j.repeats ? h("span", {class: "repeat", title: `completed ${j.runs} times: ${j.repeats} repeated`}, ` ran ${j.runs}×`) : null),
    h("td", {class: "num"}, j.attempt ? `${j.attempt}${j.attempts_allowed ? "/" + j.attempts_allowed : ""}` : ""),
    h("td", {}, j.worker || ""), h("td", {class: "num"}, secs(j.duration)),
    h("td", {}, when(j.updated)), h("td", {class: "error"}, j.error || "")));
  return [h("h2", {}, "Jobs ", h("small", {}, `${data.total} matching`)), chips, form,
    h("table", {id: "jobs-table"},
      h("thead", {}, h("tr", {}, ["id", "type", "input", "route", "state", "attempt", "worker",
                                   "duration", "updated", "error"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", {colspan: 10, class: "muted"},
        "No jobs yet. Jobs appear here as workers report them.")))) ];
}

function section(title, ...body) { return h("section", {}, h("h3", {}, title), ...body); }
function pre(id, text) { return h("pre", {id, class: "block"}, text); }

async function retry(id, button, note) {
  button.disabled = true;
  note.textContent = "sending back…";
  try {
    const done = await api(`/api/jobs/${encodeURIComponent(id)}/retry`,
      {method: "POST", headers: {"X-Runner-Monitor": "1"}});
    note.textContent = `sent back on ${done.routing_key} as a fresh first attempt`;
    refresh();
  } catch (e) {
    note.textContent = `retry failed: ${e.message}`;
    button.disabled = false;
  }
}

// What the result store kept of a finished job: its outputs (images as previews), its group.
function storedSection(id, r) {
  const links = [];
  if (r.group) links.push(h("p", {id: "member-of"}, "member of group ",
    h("a", {href: `#/group/${r.group}`, class: "mono"}, shortId(r.group))));
  if (r.callback_of) links.push(h("p", {id: "callback-of"}, "callback of group ",
    h("a", {href: `#/group/${r.callback_of}`, class: "mono"}, shortId(r.callback_of))));
  const items = r.outputs.map((o) => {
    const url = `/api/results/${encodeURIComponent(id)}/outputs/${o.index}`;
    return h("li", {class: "output"},
      o.image ? h("a", {href: url, target: "_blank", rel: "noopener"},
        h("img", {class: "preview", src: url, alt: o.name})) : null,
      o.shared ? h("span", {class: "mono"}, o.name)
        : h("a", {href: url, class: "mono", download: o.image ? null : o.name}, o.name),
      ` ${bytes(o.size)}`,
      o.shared ? h("span", {class: "muted"}, " (on shared storage: runner result ID --output-dir DIR)") : null);
  });
  return section("Stored result", ...links,
    h("p", {}, badge(r.status), " kept in the result store"),
    items.length ? h("ul", {id: "stored-outputs", class: "outputs"}, items) : h("p", {class: "muted"}, "no output files"));
}

async function groupView(id) {
  let g;
  try { g = await api(`/api/groups/${encodeURIComponent(id)}`); }
  catch (e) { return [h("p", {class: "muted"}, `Group ${id}: ${e.message}`)]; }
  const cb = g.callback;
  const rows = g.members.map((m, i) => h("tr", {"data-id": m.id},
    h("td", {class: "num"}, i + 1), h("td", {class: "mono"}, h("a", {href: `#/job/${m.id}`}, shortId(m.id))),
    h("td", {}, m.job), h("td", {}, badge(m.status)), h("td", {class: "error"}, m.error || "")));
  return [
    h("p", {class: "crumbs"}, h("a", {href: "#/jobs"}, "← jobs")),
    h("h2", {}, "Group ", h("span", {class: "mono id"}, g.id), " ", h("span", {id: "group-state"}, badge(g.status))),
    h("p", {id: "group-counts"}, `${g.succeeded} succeeded, ${g.failed} failed, ${g.pending} pending of ${g.total}` +
      ` (on failure: ${g.on_failure})`),
    cb ? section("Callback", h("p", {id: "group-callback"},
      h("a", {href: `#/job/${cb.id}`, class: "mono"}, cb.id), " ", badge(cb.status),
      cb.error ? h("span", {class: "error"}, ` ${cb.error}`) : "")) : null,
    section("Members", h("table", {id: "group-members"},
      h("thead", {}, h("tr", {}, ["#", "id", "type", "status", "error"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows))),
  ];
}

async function jobView(id) {
  let j, stored = null;
  try { stored = await api(`/api/results/${encodeURIComponent(id)}`); } catch (e) { stored = null; }
  try { j = await api(`/api/jobs/${encodeURIComponent(id)}`); }
  catch (e) {
    if (!stored) return [h("p", {class: "muted"}, `Job ${id}: ${e.message}`)];
    return [h("p", {class: "crumbs"}, h("a", {href: "#/jobs"}, "← jobs")),
      h("h2", {}, stored.job, " ", h("span", {class: "mono id"}, id), " ", h("span", {id: "job-state"}, badge(stored.status))),
      stored.error ? section("Error", h("p", {id: "error", class: "error"}, stored.error)) : null,
      storedSection(id, stored)];
  }
  const note = h("span", {id: "retry-note", class: "note"});
  const button = j.retryable ? h("button", {id: "retry", class: "retry"}, "Retry") : null;
  if (button) button.addEventListener("click", () => retry(j.id, button, note));
  const facts = [["route", j.route], ["queue", j.queue], ["worker", j.worker],
    ["attempt", j.attempt ? `${j.attempt}${j.attempts_allowed ? " of " + j.attempts_allowed : ""}` : ""],
    ["runs", j.repeats ? `${j.runs} (${j.repeats} repeated)` : j.runs],
    ["submitted", when(j.submitted_at)], ["started", when(j.started_at)],
    ["finished", when(j.finished_at)], ["duration", secs(j.duration)],
    ["exit code", j.exit_code], ["next try in", j.state === "retrying" && j.retry_delay != null ? secs(j.retry_delay) : null],
    ["dead-lettered", j.dead_reason]].filter(([, v]) => v !== null && v !== undefined && v !== "");
  const out = [
    h("p", {class: "crumbs"}, h("a", {href: "#/jobs"}, "← jobs")),
    h("h2", {}, j.job || "?", " ", h("span", {class: "mono id"}, j.id), " ",
      h("span", {id: "job-state"}, badge(j.state)), " ", button, note),
    h("dl", {class: "facts"}, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
  ];
  if (j.error) out.push(section("Error", h("p", {id: "error", class: "error"}, j.error)));
  if (j.traceback) out.push(section("Traceback", pre("traceback", j.traceback)));
  if (j.stderr) out.push(section("Stderr (tail)", pre("stderr", j.stderr)));
  out.push(section("Parameters", pre("params", JSON.stringify(j.params || {}, null, 2))));
  if (j.outputs && j.outputs.length) {
    out.push(section("Outputs", h("ul", {id: "outputs"},
      j.outputs.map((o) => h("li", {}, h("span", {class: "mono"}, o.name), ` ${bytes(o.size)}`)))));
  }
  if (stored) out.push(storedSection(id, stored));
  if (j.value !== null && j.value !== undefined) out.push(section("Value", pre("value", JSON.stringify(j.value, null, 2))));
  out.push(section("Attempts", h("table", {id: "attempts"},
    h("thead", {}, h("tr", {}, ["#", "outcome", "worker", "finished", "duration", "exit", "error"].map((c) => h("th", {}, c)))),
    h("tbody", {}, j.attempts.map((a) => h("tr", {},
      h("td", {class: "num"}, a.attempt), h("td", {}, badge(a.outcome),
        a.repeat ? h("span", {class: "repeat", title: "this attempt had already completed: a duplicate run"}, " repeat") : null),
      h("td", {}, a.worker || ""),
      h("td", {}, when(a.finished_at)), h("td", {class: "num"}, secs(a.duration)),
      h("td", {class: "num"}, a.exit_code ?? ""), h("td", {class: "error"}, a.error || "")))))));
  out.push(section("Timeline", h("ol", {id: "timeline", class: "timeline"}, j.events.map((e) =>
    h("li", {}, when(e.ts), " ", h("b", {}, e.event.replace(/^job\./, "")),
      e.attempt ? ` attempt ${e.attempt}` : "", e.worker ? ` on ${e.worker}` : "",
      e.delay != null ? ` (next in ${secs(e.delay)})` : "", e.by ? ` by ${e.by}` : "",
      e.error ? h("span", {class: "error"}, ` ${e.error}`) : "", e.reason ? ` — ${e.reason}` : "")))));
  return out;
}

async function workersView() {
  const data = await api("/api/workers");
  const rows = data.workers.map((w) => h("tr", {"data-worker": w.name},
    h("td", {class: "mono"}, w.name), h("td", {}, badge(w.state)), h("td", {}, w.queue),
    h("td", {class: "mono"}, (w.bindings || []).join(" ")),
    h("td", {}, h("span", {class: "slots", title: `${w.busy || 0} of ${w.concurrency} busy`},
      Array.from({length: w.concurrency || 0}, (_, i) => h("i", {class: i < (w.busy || 0) ? "busy" : ""}))),
      ` ${w.busy || 0}/${w.concurrency || 0}`),
    h("td", {}, (w.running || []).map((r) => h("div", {}, h("a", {href: `#/job/${r.job_id}`}, shortId(r.job_id)),
      ` ${r.job} #${r.attempt} `, when(r.started_at)))),
    h("td", {class: "num"}, w.processed ?? ""), h("td", {class: "num"}, w.dropped || 0),
    h("td", {}, when(w.last_seen))));
  return [h("h2", {}, "Workers"), h("table", {id: "workers-table"},
    h("thead", {}, h("tr", {}, ["name", "state", "queue", "bindings", "slots", "running", "processed",
                                 "events dropped", "last seen"].map((c) => h("th", {}, c)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", {colspan: 9, class: "muted"}, "No worker has reported yet."))))];
}

async function queuesView() {
  const data = await api("/api/queues");
  const rows = data.queues.map((q) => h("tr", {"data-queue": q.name},
    h("td", {class: "mono"}, q.name), h("td", {class: "num"}, q.depth ?? "?"),
    h("td", {class: "num"}, q.consumers), h("td", {class: "num"}, `${q.busy}/${q.slots}`),
    h("td", {class: "mono"}, q.bindings.join(" ")), h("td", {}, when(q.checked_at))));
  return [h("h2", {}, "Queues"), h("table", {id: "queues-table"},
    h("thead", {}, h("tr", {}, ["queue", "ready", "consumers", "busy slots", "bindings", "checked"].map((c) => h("th", {}, c)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", {colspan: 6, class: "muted"}, "No queue known yet."))))];
}

// --- rendering and live updates --------------------------------------------------------------
// --- charts: plain SVG, no library (the dashboard has no build step) --------------------------
const SVG = "http://www.w3.org/2000/svg";
const OUTCOME_COLORS = {succeeded: "#2e7d32", failed: "#ef6c00", dead: "#c62828"};
const WINDOWS = [["600", "10 min"], ["3600", "1 hour"], ["21600", "6 hours"], ["86400", "24 hours"]];

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const c of children.flat()) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

function lineChart(id, points, keys, colors, unit) {
  // points: [{t, key: value...}]; one polyline per key, y from 0 to the largest value.
  const W = 640, H = 200, L = 48, B = 24, T = 10, R = 10;
  const top = Math.max(1e-9, ...points.flatMap(p => keys.map(k => p[k] || 0)));
  const t0 = points.length ? points[0].t : 0, t1 = points.length ? points[points.length - 1].t : 1;
  const x = t => L + (W - L - R) * ((t - t0) / Math.max(1e-9, t1 - t0));
  const y = v => T + (H - T - B) * (1 - v / top);
  const svg = s("svg", {id, viewBox: `0 0 ${W} ${H}`, role: "img", class: "chart",
                        "aria-label": `${keys.join(", ")} (${unit})`});
  for (const frac of [0, 0.5, 1]) {
    svg.append(s("line", {x1: L, x2: W - R, y1: y(top * frac), y2: y(top * frac), class: "grid"}));
    svg.append(s("text", {x: L - 6, y: y(top * frac) + 4, "text-anchor": "end", class: "axis"},
                 (top * frac).toPrecision(2)));
  }
  svg.append(s("text", {x: L, y: H - 6, class: "axis"}, new Date(t0 * 1000).toLocaleTimeString()));
  svg.append(s("text", {x: W - R, y: H - 6, "text-anchor": "end", class: "axis"}, "now"));
  for (const k of keys) {
    const d = points.map(p => `${x(p.t).toFixed(1)},${y(p[k] || 0).toFixed(1)}`).join(" ");
    svg.append(s("polyline", {points: d, fill: "none", stroke: colors[k], "stroke-width": 2,
                              "data-series": k}));
  }
  return svg;
}

function legend(keys, colors, values) {
  return h("p", {class: "legend"}, keys.map(k => h("span", {"data-series": k},
    h("i", {style: `background:${colors[k]}`}), ` ${k}`, values ? ` ${values[k]}` : "")));
}

async function chartsView(params) {
  const windowS = params.get("window") || "600";
  const data = await api(`/api/stats?window=${encodeURIComponent(windowS)}`);
  const totals = {};
  for (const k of Object.keys(OUTCOME_COLORS)) {
    totals[k] = `(${Math.round(data.series.reduce((n, p) => n + p[k] * data.step, 0))})`;
  }
  const picker = h("select", {name: "window", onchange: e => setHash("/charts", {window: e.target.value})},
    WINDOWS.map(([v, label]) => h("option", {value: v, selected: v === windowS}, label)));
  const rows = data.durations.map(d => h("tr", {"data-job": d.job},
    h("td", {}, d.job), h("td", {class: "num"}, d.n), h("td", {class: "num p50"}, secs(d.p50)),
    h("td", {class: "num p95"}, secs(d.p95)), h("td", {class: "num"}, secs(d.max)),
    h("td", {}, h("span", {class: "bar p50", style: `width:${Math.round(100 * d.p50 / Math.max(1e-9, ...data.durations.map(x => x.max)))}%`}),
               h("span", {class: "bar p95", style: `width:${Math.round(100 * d.p95 / Math.max(1e-9, ...data.durations.map(x => x.max)))}%`}))));
  return [
    h("h2", {}, "Jobs per second, by outcome ", picker),
    legend(Object.keys(OUTCOME_COLORS), OUTCOME_COLORS, totals),
    lineChart("rate-chart", data.series, Object.keys(OUTCOME_COLORS), OUTCOME_COLORS, "jobs/s"),
    h("h2", {}, "Duration percentiles, by job type"),
    data.durations.length
      ? h("table", {id: "durations"}, h("thead", {}, h("tr", {}, h("th", {}, "job"), h("th", {}, "attempts"),
            h("th", {}, "p50"), h("th", {}, "p95"), h("th", {}, "max"), h("th", {}, ""))), h("tbody", {}, rows))
      : h("p", {class: "muted"}, "No attempt has ended in this window."),
  ];
}

async function render() {
  const {parts, params} = route();
  const view = parts[0] || "jobs";
  document.querySelectorAll("nav a[data-nav]").forEach((a) =>
    a.classList.toggle("on", a.dataset.nav === (view === "job" || view === "group" ? "jobs" : view)));
  let content;
  try {
    if (view === "job" && parts[1]) content = await jobView(decodeURIComponent(parts[1]));
    else if (view === "group" && parts[1]) content = await groupView(decodeURIComponent(parts[1]));
    else if (view === "workers") content = await workersView();
    else if (view === "charts") content = await chartsView(params);
    else if (view === "queues") content = await queuesView();
    else content = await jobsView(params);
  } catch (e) {
    content = [h("p", {class: "error"}, `Could not load: ${e.message}`)];
  }
  const main = document.getElementById("view");
  const focused = document.activeElement && document.activeElement.name;
  main.replaceChildren(...content);
  if (focused === "q") { const q = main.querySelector("input[name=q]"); if (q) { q.focus(); } }
}

function refresh() {
  // Coalesce bursts of changes into one fetch at a time.
  if (refreshing) { refreshing.again = true; return; }
  refreshing = {again: false};
  render().finally(() => {
    const again = refreshing.again;
    refreshing = null;
    if (again) refresh();
  });
}

function live(mode) {
  const el = document.getElementById("live");
  el.textContent = mode === "sse" ? "● live" : mode === "poll" ? "● polling" : "○ reconnecting";
  el.className = `live ${mode}`;
}

function startPolling() {
  live("poll");
  setInterval(refresh, POLL_MS);
}

function startStream() {
  if (!window.EventSource) return startPolling();
  const source = new EventSource("/api/stream");
  let failures = 0;
  source.addEventListener("open", () => { failures = 0; live("sse"); });
  source.addEventListener("change", () => { failures = 0; live("sse"); refresh(); });
  source.addEventListener("error", () => {
    failures += 1;
    if (source.readyState === EventSource.CLOSED || failures >= 3) {
      source.close();
      startPolling();
    } else {
      live("down");
    }
  });
}

async function main() {
  try {
    const me = await api("/api/me");
    role = me.role;
  } catch (e) { role = "none"; }
  document.getElementById("role").textContent = role === "admin" ? "admin" : role === "read" ? "read-only" : "";
  document.body.dataset.role = role;
  window.addEventListener("hashchange", render);
  await render();
  startStream();
  // The charts' time axis moves on even when nothing new happens.
  setInterval(() => { if (route().parts[0] === "charts") refresh(); }, 5000);
}

main();
