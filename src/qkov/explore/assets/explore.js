// qkov explore: the page. Talks only to its own server (/api/...); every string from the
// model or the user goes into the page through textContent, never as markup.
"use strict";

const state = {
  models: [], model: null, run: null, roles: [], head: null, dest: null, seq: 0,
  controller: null, timer: null,
};
const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

// A token as a reader should see it: newline and tab as symbols, an all-space token as ␣.
function visible(t) {
  let s = String(t).replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5").replace(/\r/g, "\u240d");
  s = s.replace(/[\u0000-\u001f\u007f]/g, (c) => "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0"));
  if (s.trim() === "") s = s.replace(/ /g, "\u2423") || "\u2205";
  return s;
}

function fmt(x, digits = 3, signed = false) {
  if (x === null || x === undefined || Number.isNaN(x)) return "\u2013";
  const s = Number(x).toFixed(digits);
  return signed && x >= 0 ? "+" + s : s;
}

async function getJSON(url, options) {
  const r = await fetch(url, options);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
  return data;
}

function setStatus(text) { $("status").textContent = text; }
function setError(text) { $("error").textContent = text || ""; }

// ------------------------------------------------------------------ models
async function loadModels() {
  const data = await getJSON("/api/models");
  state.models = data.models;
  const sel = $("model");
  sel.replaceChildren();
  for (const m of data.models) sel.append(new Option(m.name, m.name));
  await chooseModel(data.models[0].name);
}

async function chooseModel(name) {
  state.model = state.models.find((m) => m.name === name);
  $("model").value = name;
  const m = state.model;
  $("model-info").textContent = `${m.n_layers} layer${m.n_layers === 1 ? "" : "s"} \u00d7 ` +
    `${m.n_heads} heads${m.d_mlp ? ", MLPs" : ""}, n_ctx ${m.n_ctx}, vocab ${m.d_vocab}`;
  state.head = null; state.roles = []; state.run = null;
  delete document.body.dataset.run;
  renderHeads(); renderHeadPanel(null);
  // The text first, then the heads' roles: the server computes one request at a time, and
  // the roles take far longer on a large model (GPT-2 small: ~15 s, the text ~2 s).
  await runText();
  await loadRoles(name);
}

async function loadRoles(name) {
  if (!state.model.n_layers) { renderHeads(); return; }
  setStatus("classifying heads\u2026");
  // A minute on a 1B model: the status says which part runs (/api/progress, which the
  // server answers at once while its one compute thread classifies) and for how long.
  const started = Date.now();
  let done = false;
  const poll = setInterval(async () => {
    try {
      const p = await getJSON("/api/progress?model=" + encodeURIComponent(name));
      const seconds = Math.round((Date.now() - started) / 1000);
      if (!done && p.stage && state.model && state.model.name === name)
        setStatus(`classifying heads: ${p.stage}\u2026 (${seconds} s)`);
    } catch (e) { /* the progress line is a hint: the roles' own request reports errors */ }
  }, 1000);
  let data;
  try {
    data = await getJSON("/api/heads?model=" + encodeURIComponent(name));
  } finally {
    done = true;
    clearInterval(poll);
  }
  if (!state.model || state.model.name !== name) return;
  state.roles = data.heads;
  if (state.head === null) {
    const pick = data.heads.find((h) => h.label === "induction") || data.heads[0];
    state.head = [pick.layer, pick.head];
  }
  renderHeads();
  drawAll();
  setStatus("");
  await loadHead();
}

// ------------------------------------------------------------------ a text through the model
function scheduleRun() {
  clearTimeout(state.timer);
  state.timer = setTimeout(runText, 250);
}

async function runText() {
  const text = $("text").value;
  if (!text.trim()) { setError("Type some text for the model to read."); return; }
  if (state.controller) state.controller.abort();
  const controller = new AbortController();
  state.controller = controller;
  const seq = ++state.seq;
  setStatus("reading\u2026");
  try {
    const data = await getJSON("/api/run", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({model: state.model.name, text}), signal: controller.signal,
    });
    if (seq !== state.seq) return;
    state.run = data;
    if (state.dest === null || state.dest >= data.tokens.length) state.dest = data.tokens.length - 1;
    setError(""); setStatus("");
    renderTokens(); drawAll();
    document.body.dataset.run = data.model;  // which model the shown reading is of
  } catch (e) {
    if (e.name === "AbortError") return;
    if (seq === state.seq) { setError(e.message); setStatus(""); }
  }
}

function renderTokens() {
  const box = $("tokens");
  box.replaceChildren();
  const run = state.run;
  $("tok-count").textContent = `(${run.tokens.length} of n_ctx ${run.n_ctx})`;
  run.tokens.forEach((t, i) => {
    const span = el("span", "tok", visible(t));
    span.dataset.i = i;
    span.addEventListener("mouseenter", () => setDest(i));
    box.append(span);
    if (t.includes("\n")) box.append(el("br"));
  });
}

function setDest(i) {
  state.dest = i;
  drawAll();
}

function pattern() {
  const run = state.run;
  if (!run || !state.head || !run.patterns.length) return null;
  const [l, h] = state.head;
  return run.patterns[l] ? run.patterns[l][h] : null;
}

function drawAll() {
  paintTokens(); drawPattern(); renderPrediction();
}

function paintTokens() {
  const p = pattern(), i = state.dest;
  const spans = $("tokens").querySelectorAll(".tok");
  spans.forEach((s, j) => {
    s.classList.toggle("dest", j === i);
    const w = p && i !== null && j <= i ? p[i][j] : 0;
    s.style.backgroundColor = w > 0.005 ? `rgba(31, 119, 180, ${(0.1 + 0.9 * w).toFixed(3)})` : "";
    s.style.color = w > 0.5 ? "#fff" : "";
  });
}

// ------------------------------------------------------------------ attention pattern
function drawPattern() {
  const c = $("pattern"), ctx = c.getContext("2d");
  const p = pattern();
  ctx.clearRect(0, 0, c.width, c.height);
  $("pattern-box").classList.toggle("empty", !p);
  if (!p) {
    $("pattern-title").textContent = state.model && !state.model.n_layers
      ? "(a 0-layer model has no heads: its logits are the direct path W_E W_U)" : "";
    return;
  }
  const n = p.length, cell = c.width / n;
  $("pattern-title").textContent = `L${state.head[0]}H${state.head[1]}, ${n} \u00d7 ${n}`;
  ctx.fillStyle = "#fbfcfd"; ctx.fillRect(0, 0, c.width, c.height);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      const w = p[i][j];
      if (w < 0.003) continue;
      ctx.fillStyle = `rgba(31, 119, 180, ${Math.min(1, 0.08 + 0.92 * w)})`;
      ctx.fillRect(j * cell, i * cell, Math.max(cell, 1), Math.max(cell, 1));
    }
  }
  if (state.dest !== null && state.dest < n) {
    ctx.strokeStyle = "#ff7f0e"; ctx.lineWidth = 2;
    ctx.strokeRect(1, state.dest * cell, c.width - 2, Math.max(cell, 2));
  }
}

function patternCell(ev) {
  const p = pattern();
  if (!p) return null;
  const c = $("pattern"), r = c.getBoundingClientRect(), n = p.length;
  const i = Math.floor((ev.clientY - r.top) / r.height * n);
  const j = Math.floor((ev.clientX - r.left) / r.width * n);
  return i >= 0 && i < n && j >= 0 && j <= i ? [i, j] : null;
}

function showTip(ev, text) {
  const tip = $("tip");
  tip.textContent = text;
  tip.classList.add("on");
  tip.style.left = (ev.pageX + 14) + "px";
  tip.style.top = (ev.pageY + 14) + "px";
}
function hideTip() { $("tip").classList.remove("on"); }

function onPatternMove(ev) {
  const ij = patternCell(ev);
  if (!ij) { hideTip(); return; }
  const [i, j] = ij, t = state.run.tokens;
  if (i !== state.dest) setDest(i);
  showTip(ev, `destination #${i} \u201c${visible(t[i])}\u201d \u2190 source #${j} ` +
    `\u201c${visible(t[j])}\u201d: ${fmt(pattern()[i][j])}`);
}

// ------------------------------------------------------------------ predictions and paths
function bar(value, scale, cls) {
  const b = el("span", "bar " + cls);
  b.style.width = Math.min(100, Math.abs(value) / scale * 100).toFixed(1) + "%";
  return b;
}

function renderPrediction() {
  const box = $("prediction");
  box.replaceChildren(el("h2", null, "Prediction"));
  const run = state.run, i = state.dest;
  if (!run || i === null) { box.append(el("div", "muted", "Point at a token.")); return; }
  const pr = run.predictions[i], tg = pr.target;
  const head = el("div", "pred-head");
  head.append("after #" + i + " ", el("span", "t", visible(run.tokens[i])), " the model predicts");
  box.append(head);
  const top = el("table", "top");
  for (const c of pr.top) {
    const tr = el("tr", c.id === tg.id ? "hit" : null);
    const cell = el("td"); cell.append(el("span", "t", visible(c.token)));
    const b = el("td", "barcell"); b.append(bar(c.prob, 1, "pos"));
    tr.append(cell, el("td", "n", fmt(c.prob)), b);
    top.append(tr);
  }
  box.append(top);
  const what = el("div", "pred-head");
  what.append(tg.actual ? "actual next token " : "no next token: explaining the top prediction ",
    el("span", "t", visible(tg.token)),
    ` (p = ${fmt(tg.prob)}, rank ${tg.rank}); the paths pushing its logit:`);
  box.append(what);
  const a = pr.attribution;
  const rows = [...a.paths.map((p) => [p.name, p.logit]), ["other paths", a.rest]];
  const scale = Math.max(...rows.map((r) => Math.abs(r[1])), 1e-9);
  const tbl = el("table", "paths");
  for (const [name, v] of rows) {
    const tr = el("tr");
    const b = el("td", "barcell"); b.append(bar(v, scale, v >= 0 ? "pos" : "neg"));
    tr.append(el("td", "path", name), el("td", "n", fmt(v, 2, true)), b);
    tbl.append(tr);
  }
  const tr = el("tr", "total");
  tr.append(el("td", "path", "sum = logit"), el("td", "n", fmt(a.total, 2, true)), el("td"));
  tbl.append(tr);
  box.append(tbl);
  box.append(el("div", "muted", "Exact path expansion (attention patterns frozen): direct path " +
    "W_E W_U, each head, virtual heads (L0Hx>L1Hy), MLP starts [mlpN]; the terms sum to the " +
    "logit (the numbers of qkov attribute and the report)."));
}

// ------------------------------------------------------------------ heads
function renderHeads() {
  const box = $("heads");
  box.replaceChildren();
  if (state.model && !state.model.n_layers) {
    box.append(el("span", "muted", "no heads: a 0-layer model is a bigram table"));
    return;
  }
  for (const r of state.roles) {
    const b = el("button", "head " + r.label);
    b.type = "button";
    b.append(el("b", null, r.name), el("span", null, r.label.replace("_", " ")));
    const on = state.head && state.head[0] === r.layer && state.head[1] === r.head;
    b.classList.toggle("on", !!on);
    b.addEventListener("click", () => { state.head = [r.layer, r.head]; renderHeads(); drawAll(); loadHead(); });
    box.append(b);
  }
}

async function loadHead() {
  if (!state.head) return;
  const [l, h] = state.head, name = state.model.name;
  renderHeadPanel({loading: true});
  try {
    const data = await getJSON(`/api/head?model=${encodeURIComponent(name)}&layer=${l}&head=${h}`);
    if (state.model.name === name && state.head[0] === l && state.head[1] === h) renderHeadPanel(data);
  } catch (e) { setError(e.message); }
}

function eigenPlot(eigs, title) {
  const fig = el("figure");
  const c = el("canvas"); c.width = 150; c.height = 150;
  const ctx = c.getContext("2d");
  const r = Math.max(...eigs.map(([x, y]) => Math.hypot(x, y)), 1e-9) * 1.1;
  const X = (x) => 75 + x / r * 70, Y = (y) => 75 - y / r * 70;
  ctx.strokeStyle = "#c9d0d7"; ctx.beginPath(); ctx.moveTo(5, 75); ctx.lineTo(145, 75);
  ctx.moveTo(75, 5); ctx.lineTo(75, 145); ctx.stroke();
  for (const [x, y] of eigs) {
    ctx.fillStyle = x >= 0 ? "#2ca02c" : "#d62728";
    ctx.beginPath(); ctx.arc(X(x), Y(y), 3, 0, 2 * Math.PI); ctx.fill();
  }
  fig.append(c, el("figcaption", null, title));
  return fig;
}

function renderHeadPanel(d) {
  const box = $("head-panel");
  box.replaceChildren(el("h2", null, "Head" + (state.head ? ` L${state.head[0]}H${state.head[1]}` : "")));
  if (!d) { box.append(el("div", "muted", "Choose a head.")); return; }
  if (d.loading) { box.append(el("div", "muted", "computing circuits\u2026")); return; }
  const role = el("div", "role");
  role.append(el("span", "label " + d.label, d.label), d.decided_by
    ? ` (${d.decided_by} ${fmt(d.scores[d.decided_by])} on the random-token probe)` : "");
  if (d.partners && d.partners.length) role.append(`; its key reads ${d.partners.join(", ")}`);
  box.append(role);
  const stats = el("table", "stats");
  const rows = [
    ["QK \u03a3\u03bb/\u03a3|\u03bb|", fmt(d.qk_eigenvalue_score, 3, true), "W_E W_QK W_E\u1d40: +1 matches tokens"],
    ["OV \u03a3\u03bb/\u03a3|\u03bb|", fmt(d.ov_eigenvalue_score, 3, true), "W_E W_OV W_U: +1 copies"],
    ["OV top-1 self", fmt(d.ov_top1_fraction), "tokens whose own logit tops their OV row"],
    ["copying score", fmt(d.scores.copying, 3, true), "behavioural, on the probe"],
    ["previous token", fmt(d.scores.previous_token), "score on the probe"],
    ["induction", fmt(d.scores.induction), "score on the probe"],
  ];
  for (const [k, v, note] of rows) {
    const tr = el("tr"); tr.append(el("td", null, k), el("td", "n", v), el("td", "muted", note));
    stats.append(tr);
  }
  box.append(stats);
  const figs = el("div", "figs");
  figs.append(eigenPlot(d.qk_eigenvalues, "QK eigenvalues"), eigenPlot(d.ov_eigenvalues, "OV eigenvalues"));
  box.append(figs);
  box.append(el("h3", null, "Top skip-trigrams  source \u2026 destination \u2192 out"));
  const tbl = el("table", "trigrams");
  for (const t of d.skip_trigrams) {
    const tr = el("tr");
    for (const k of ["source", "destination", "out"]) {
      const td = el("td"); td.append(el("span", "t", visible(t[k]))); tr.append(td);
    }
    tr.append(el("td", "n", fmt(t.score, 2, true)));
    tbl.append(tr);
  }
  box.append(tbl);
  const over = d.trigram_min_count
    ? `tokens seen at least ${d.trigram_min_count} times in training` : "all tokens";
  box.append(el("div", "muted", d.sampled_sources
    ? `Estimate: ranked over a seeded sample of ${d.sampled_sources} source tokens of ` +
      `${state.model.d_vocab} (as qkov analyze does at this size), and over ${over}; ` +
      "the OV top-1 fraction is over the same sample."
    : `Ranked over ${over}.`));
  if (d.score_units !== "logits") {
    box.append(el("div", "muted", "Scores are written before the final norm: divided by its " +
      "scale at a position they are logits (the report gives the scale on the evaluation text)."));
  }
}

// ------------------------------------------------------------------ start
document.addEventListener("DOMContentLoaded", () => {
  $("text").value = "import os\nimport sys\n\ndef read(path):\n    with open(path) as f:\n" +
    "        return f.read()\n\nimport os\nimport sys\n";
  $("text").addEventListener("input", scheduleRun);
  $("model").addEventListener("change", (e) => chooseModel(e.target.value).catch((x) => setError(x.message)));
  $("pattern").addEventListener("mousemove", onPatternMove);
  $("pattern").addEventListener("mouseleave", hideTip);
  loadModels().catch((e) => setError(e.message));
});
