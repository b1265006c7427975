// hostcp dashboard: lists the key's jobs with live progress and shows one job's results.
// Every API call carries the key as a Bearer header; images and downloads are fetched the same
// way and shown through blob: URLs, because <img src> and <a href> cannot send the header.
"use strict";

const KEY = "hostcp_api_key";
const TERMINAL = new Set(["succeeded", "failed", "canceled", "timed_out"]);
const state = { current: null, shown: null, timer: null, blobs: [] };

const $ = (id) => document.getElementById(id);

function apiKey() { return sessionStorage.getItem(KEY) || ""; }

function say(text, isError) {
  const m = $("message");
  m.textContent = text || "";
  m.className = isError ? "error" : "";
}

async function api(path, asBlob) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + apiKey() } });
  if (!r.ok) {
    let detail = r.status + " " + r.statusText;
    try { const p = await r.json(); detail = p.detail || p.title || detail; } catch (e) { /* not JSON */ }
    const err = new Error(detail);
    err.status = r.status;
    throw err;
  }
  return asBlob ? r.blob() : r.json();
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  row.appendChild(td);
  return td;
}

function fmt(x, digits) {
  return typeof x === "number" ? x.toFixed(digits === undefined ? 3 : digits) : (x ?? "");
}

function renderJobs(jobs) {
  const body = $("jobs").querySelector("tbody");
  body.replaceChildren();
  $("jobs-empty").hidden = jobs.length > 0;
  for (const job of jobs) {
    const tr = document.createElement("tr");
    tr.dataset.jobId = job.id;
    tr.dataset.status = job.status;
    if (job.id === state.current) tr.className = "current";
    cell(tr, job.id.slice(0, 8));
    cell(tr, job.method);
    const st = cell(tr, job.status);
    st.className = "status " + job.status;
    const p = document.createElement("progress");
    p.max = 1; p.value = job.progress || 0;
    cell(tr, "").appendChild(p);
    const created = new Date(job.created_at);
    cell(tr, created.toLocaleDateString() + " " + created.toLocaleTimeString());
    tr.addEventListener("click", () => select(job.id));
    body.appendChild(tr);
  }
}

async function refresh() {
  clearTimeout(state.timer);
  if (!apiKey()) { say("Enter an API key to see your jobs."); return; }
  let busy = false;
  try {
    const page = await api("/v1/jobs?page_size=50");
    renderJobs(page.items);
    busy = page.items.some((j) => !TERMINAL.has(j.status));
    if (!state.current && page.items.length) state.current = page.items[0].id;
    if (state.current) busy = (await showJob(state.current)) || busy;
    say("");
  } catch (e) {
    say(e.status === 401 ? "The API key was refused." : "Error: " + e.message, true);
    if (e.status === 401) return;
  }
  // poll quickly while something runs, slowly otherwise
  state.timer = setTimeout(refresh, busy ? 1000 : 5000);
}

function select(jobId) {
  state.current = jobId;
  state.shown = null;
  refresh();
}

async function showJob(jobId) {
  const job = await api("/v1/jobs/" + encodeURIComponent(jobId));
  $("detail").hidden = false;
  $("detail-id").textContent = job.id;
  $("detail-status").textContent = job.status;
  $("detail-status").className = "badge " + job.status;
  $("detail-stage").textContent = job.stage || "";
  $("detail-progress").value = job.progress || 0;
  $("detail-error").hidden = !job.error;
  $("detail-error").textContent = job.error ? (job.error.title + ": " + (job.error.detail || "")) : "";
  if (job.status !== "succeeded") {
    $("results").hidden = true;
    return !TERMINAL.has(job.status);
  }
  if (state.shown !== job.id) {  // results never change once a job succeeded: load them once
    await showResults(job);
    state.shown = job.id;
  }
  return false;
}

function releaseBlobs() {
  for (const url of state.blobs) URL.revokeObjectURL(url);
  state.blobs = [];
}

async function showImage(img, path) {
  img.dataset.loaded = "";
  const url = URL.createObjectURL(await api(path, true));
  state.blobs.push(url);
  img.onload = () => { img.dataset.loaded = "1"; };
  img.src = url;
}

function showSummary(job) {
  const s = job.summary || {};
  const t = job.timings || {};
  const comp = s.comparison;
  const items = [
    ["Method", comp ? "compare: " + (job.methods || []).join(", ") : job.method],
    ["Fraction", job.fraction], ["Seed", job.seed],
    ["Training points", s.n_train], ["Selected", s.n_selected],
    ["Suspected mislabels", s.n_suspected],
    ["Expected label errors", job.expected_label_errors == null ? undefined : fmt(job.expected_label_errors, 1)],
    ["Evaluation", job.evaluation], ["Curves on", s.curves_on],
    ["Run time (s)", fmt(t.total_s, 2)],
  ];
  if (comp) items.splice(4, 0, ["Injected flips", comp.n_flipped ? comp.n_flipped + " (" + comp.inject_flips + ")" : "none"]);
  const dl = $("summary");
  dl.replaceChildren();
  for (const [k, v] of items) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v === undefined ? "" : String(v);
    dl.append(dt, dd);
  }
}

async function allPages(path) {
  let items = [], token = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api(path + sep + "page_size=1000" +
                           (token ? "&page_token=" + encodeURIComponent(token) : ""));
    items = items.concat(page.items);
    token = page.next_page_token;
  } while (token);
  return items;
}

async function showSubset(job) {
  const subset = await allPages("/v1/jobs/" + job.id + "/subset");
  const counts = new Map();
  for (const row of subset) counts.set(row.label, (counts.get(row.label) || 0) + 1);
  const body = $("subset-summary").querySelector("tbody");
  body.replaceChildren();
  for (const [label, n] of [...counts.entries()].sort()) {
    const tr = document.createElement("tr");
    cell(tr, label); cell(tr, n); cell(tr, fmt(n / subset.length, 2));
    body.appendChild(tr);
  }
  const tr = document.createElement("tr");
  cell(tr, "all"); cell(tr, subset.length); cell(tr, "1.00");
  body.appendChild(tr);
}

async function showMislabels(job) {
  const page = await api("/v1/jobs/" + job.id + "/mislabels?suspected_only=true&page_size=20");
  const body = $("mislabels-table").querySelector("tbody");
  body.replaceChildren();
  for (const m of page.items) {
    const tr = document.createElement("tr");
    cell(tr, m.rank); cell(tr, m.index); cell(tr, m.id); cell(tr, m.given_label);
    cell(tr, m.suggested_label);
    cell(tr, m.suggested_prob == null ? "–" : fmt(m.suggested_prob));
    cell(tr, m.label_error_prob == null ? "–" : fmt(m.label_error_prob));
    body.appendChild(tr);
  }
  const total = (job.summary || {}).n_suspected;
  $("mislabel-count").textContent = total === undefined ? "" :
    "(" + total + " suspected" + (total > page.items.length ? ", first " + page.items.length + " shown" : "") + ")";
}

async function download(path, filename) {
  try {
    const url = URL.createObjectURL(await api(path, true));
    const a = document.createElement("a");
    a.href = url; a.download = filename;
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) { say("Download failed: " + e.message, true); }
}

function showDownloads(job) {
  const box = $("downloads");
  box.replaceChildren();
  const base = "/v1/jobs/" + job.id;
  const files = [];
  for (const kind of ["subset", "values", "mislabels", "curves"]) {
    for (const f of ["csv", "parquet"]) files.push([kind + "." + f, base + "/" + kind + "?format=" + f]);
  }
  // a comparison job: every method's values (the plain ones are its first method's)
  for (const m of (job.method === "compare" ? job.methods || [] : [])) {
    files.push(["values-" + m + ".csv", base + "/values?format=csv&method=" + encodeURIComponent(m)]);
  }
  const plots = ["curves", "classes", "mislabels"];
  if (((job.summary || {}).mislabels || {}).confusion) plots.push("confusion");
  if ((job.summary || {}).injected_flips) plots.push("flips");
  for (const plot of plots) {
    for (const f of ["png", "svg"]) files.push([plot + "." + f, base + "/plots/" + plot + "." + f]);
  }
  for (const [label, path] of files) {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = label; b.dataset.path = path;
    b.addEventListener("click", () => download(path, job.id.slice(0, 8) + "-" + label));
    box.appendChild(b);
  }
}

function accuracyAt(curve, fraction) {
  const p = (curve || []).find((r) => Math.abs(r.fraction - fraction) < 1e-9);
  return p ? fmt(p.accuracy) : "–";
}

function showComparison(job) {
  const comp = (job.summary || {}).comparison;
  $("comparison").hidden = !comp;
  for (const el of document.querySelectorAll(".default-method")) {
    el.textContent = comp ? "(first method: " + comp.default_method + ")" : "";
  }
  const body = $("comparison-table").querySelector("tbody");
  body.replaceChildren();
  if (!comp) return;
  $("comparison-note").textContent = comp.n_flipped
    ? "(" + comp.n_flipped + " labels flipped by the job)" : "(no injected flips: no flip scores)";
  for (const r of comp.methods) {
    const tr = document.createElement("tr");
    tr.dataset.method = r.method;
    cell(tr, r.method); cell(tr, fmt(r.run_time_s, 2));
    cell(tr, r.flip_roc_auc === undefined ? "–" : fmt(r.flip_roc_auc));
    cell(tr, r.ndcg === undefined ? "–" : fmt(r.ndcg));
    for (const f of [0.05, 0.2, 0.5]) cell(tr, accuracyAt(r.addition, f));
    body.appendChild(tr);
  }
}

function showCandidates(job) {
  // a recommended job: every candidate subset's validation score, and why the winner won
  const extra = (job.summary || {}).extra || {};
  const rows = Array.isArray(extra.candidates) ? extra.candidates : null;
  $("candidates").hidden = !rows;
  const body = $("candidates-table").querySelector("tbody");
  body.replaceChildren();
  if (!rows) return;
  $("candidates-learner").textContent = "(learner: " + extra.learner + ", " +
    extra.n_validation_rows + " validation rows)";
  $("candidates-why").textContent = extra.winner + ": " + extra.why;
  for (const r of rows) {
    const tr = document.createElement("tr");
    tr.dataset.candidate = r.candidate;
    cell(tr, r.candidate);
    if (r.skipped) {
      cell(tr, "skipped: " + r.skipped);
    } else {
      cell(tr, fmt(r.validation_accuracy_mean)); cell(tr, fmt(r.validation_accuracy_sd));
      cell(tr, fmt(r.paired_se_vs_leader)); cell(tr, r.suspected_in_subset);
      cell(tr, fmt(r.build_seconds, 1)); cell(tr, r.winner ? "✔" : "");
    }
    body.appendChild(tr);
  }
}

async function showResults(job) {
  releaseBlobs();
  showSummary(job);
  showDownloads(job);
  showComparison(job);
  showCandidates(job);
  const flips = !!(job.summary || {}).injected_flips;
  const confusion = !!((job.summary || {}).mislabels || {}).confusion;
  $("figure-confusion").hidden = !confusion;
  $("plot-curves").classList.toggle("wide", job.method === "compare");  // two panels
  $("figure-flips").hidden = !flips;
  $("results").hidden = false;
  await Promise.all([
    showImage($("plot-curves"), "/v1/jobs/" + job.id + "/plots/curves.png"),
    showImage($("plot-classes"), "/v1/jobs/" + job.id + "/plots/classes.png"),
    flips ? showImage($("plot-flips"), "/v1/jobs/" + job.id + "/plots/flips.png") : null,
    confusion ? showImage($("plot-confusion"), "/v1/jobs/" + job.id + "/plots/confusion.png") : null,
    showSubset(job), showMislabels(job),
  ]);
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = apiKey();
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $("api-key").value.trim());
    state.current = null; state.shown = null;
    refresh();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    $("api-key").value = "";
    clearTimeout(state.timer);
    $("jobs").querySelector("tbody").replaceChildren();
    $("detail").hidden = true;
    state.current = null; state.shown = null;
    say("Key forgotten.");
  });
  refresh();
});
