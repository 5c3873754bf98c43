// gpuledger showback page: plain JS + SVG, no build step. Reads /v1/whoami, /v1/showback
// and /v1/exports/chargeback (CSV) with the token the user gives (URL fragment #token=... or the form),
// under the idle policy chosen on the page (who pays for idle: holder, share_unallocated, platform),
// kept in sessionStorage for this tab only; the fragment never reaches the server or its logs.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const KINDS = [["used_gpu_hours", "--used"], ["allocated_idle_gpu_hours", "--idle"],
               ["unmeasured_gpu_hours", "--unmeasured"], ["unallocated_gpu_hours", "--unallocated"]];
let role = null;

function token() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("gpuledger-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("gpuledger-token");
}

async function api(path) {
  const headers = {};
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  const r = await fetch(path, { headers });
  if (!r.ok) {
    let e = { code: "http_" + r.status, message: r.statusText, hint: "" };
    try { e = (await r.json()).error; } catch (_) { /* not JSON */ }
    const err = new Error(e.message + (e.hint ? "\nhint: " + e.hint : ""));
    err.status = r.status;
    throw err;
  }
  return r;
}

function el(name, attrs, text) {
  const n = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  if (text !== undefined) n.textContent = text;
  return n;
}

function color(v) { return getComputedStyle(document.documentElement).getPropertyValue(v).trim(); }

// Horizontal bars, one row per tenant; segments = [[value, cssVar, label], ...].
function bars(svg, rows, segmentsOf, fmt) {
  const left = 130, right = 70, rowH = 22, width = +svg.getAttribute("width");
  svg.replaceChildren();
  svg.setAttribute("height", String(Math.max(40, rows.length * rowH + 10)));
  const totals = rows.map((r) => segmentsOf(r).reduce((a, s) => a + (s[0] || 0), 0));
  const max = Math.max(1e-9, ...totals);
  const scale = (width - left - right) / max;
  rows.forEach((r, i) => {
    const y = 5 + i * rowH;
    svg.appendChild(el("text", { x: left - 6, y: y + 14, "text-anchor": "end" }, r.tenant));
    let x = left;
    for (const [value, cssVar, label] of segmentsOf(r)) {
      const w = Math.max(0, (value || 0) * scale);
      if (w <= 0) continue;
      const rect = el("rect", { x, y: y + 2, width: w.toFixed(2), height: rowH - 6, fill: color(cssVar),
                                "data-tenant": r.tenant, "data-kind": label });
      rect.appendChild(el("title", {}, `${r.tenant} ${label}: ${fmt(value)}`));
      svg.appendChild(rect);
      x += w;
    }
    svg.appendChild(el("text", { x: x + 4, y: y + 14 }, fmt(totals[i])));
  });
}

const h = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(1));
const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(0) + " %");

function render(body) {
  const rows = body.rows;
  $("currency").textContent = body.currency;
  $("period").textContent = body.period
    ? `${body.period.start} – ${body.period.end} (end exclusive), ${rows.length} tenants, total ${body.total_cost} ${body.currency}, idle policy ${body.idle_policy}`
    : "no data yet";
  bars($("chart-usage"), rows, (r) => KINDS.map(([k, c]) => [r[k], c, k.replace("_gpu_hours", "")]), h);
  bars($("chart-cost"), rows, (r) => [[Number(r.cost), "--cost", "cost"]], (v) => Number(v).toFixed(2));
  const tbody = document.querySelector("#table tbody");
  tbody.replaceChildren(...rows.map((r) => {
    const tr = document.createElement("tr");
    for (const v of [r.tenant, h(r.used_gpu_hours), h(r.allocated_idle_gpu_hours), h(r.unmeasured_gpu_hours),
                     h(r.unallocated_gpu_hours), h(r.memory_gb_hours), h(r.energy_kwh), pct(r.coverage),
                     `${r.cost} ${r.currency}`]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    return tr;
  }));
  const sum = (k) => rows.reduce((a, r) => a + (r[k] || 0), 0);
  const foot = document.createElement("tr");
  for (const v of ["total", h(sum("used_gpu_hours")), h(sum("allocated_idle_gpu_hours")), h(sum("unmeasured_gpu_hours")),
                   h(sum("unallocated_gpu_hours")), "", "", "", `${body.total_cost ?? "–"} ${body.currency}`]) {
    const td = document.createElement("td");
    td.textContent = v;
    foot.appendChild(td);
  }
  document.querySelector("#table tfoot").replaceChildren(foot);
  const month = body.period ? body.period.start.slice(0, 7) : null;
  const link = $("download");
  link.hidden = !(month && (role === "admin" || role === "finance"));
  link.dataset.month = month || "";
  link.textContent = `Download chargeback CSV (${month})`;
  document.body.dataset.ready = "1";
}

function query() {
  const p = new URLSearchParams({ group_by: "tenant", limit: "1000", idle_policy: $("idle-policy").value });
  if ($("start").value && $("end").value) {
    p.set("start", $("start").value); p.set("end", $("end").value);
  } else if ($("month").value) {
    const [y, m] = $("month").value.split("-").map(Number);
    const next = m === 12 ? `${y + 1}-01` : `${y}-${String(m + 1).padStart(2, "0")}`;
    p.set("start", `${$("month").value}-01`); p.set("end", `${next}-01`);
  }
  return "/v1/showback?" + p.toString();
}

async function load() {
  $("error").textContent = "";
  document.body.dataset.ready = "";
  try {
    const who = await (await api("/v1/whoami")).json();
    role = who.role;
    $("who").textContent = who.auth ? `token ${who.token_id}: ${who.role}${who.tenant ? " of " + who.tenant : ""}`
                                    : "authentication is off (development server)";
    $("token-form").hidden = true;
    const body = await (await api(query())).json();
    if (body.period && !$("month").value && !$("start").value) $("month").value = body.period.start.slice(0, 7);
    render(body);
  } catch (e) {
    if (e.status === 401) $("token-form").hidden = false;
    $("error").textContent = e.message;
  }
}

async function download(ev) {
  ev.preventDefault();
  const month = ev.currentTarget.dataset.month;
  try {
    const policy = encodeURIComponent($("idle-policy").value);
    const r = await api(`/v1/exports/chargeback?month=${encodeURIComponent(month)}&format=csv&idle_policy=${policy}`);
    const url = URL.createObjectURL(await r.blob());
    const a = document.createElement("a");
    a.href = url; a.download = `gpuledger-chargeback-${month}.csv`;
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) { $("error").textContent = e.message; }
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("gpuledger-token", $("token-input").value.trim());
  load();
});
$("period-form").addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
$("month").addEventListener("change", () => { $("start").value = ""; $("end").value = ""; });
$("download").addEventListener("click", download);
load();
