// twinlm playground: plain JavaScript, no build step, nothing fetched but this server's API.
"use strict";
const $ = (id) => document.getElementById(id);
let INFO = null;
let genAbort = null;

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("apikey").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function call(path, body) {
  const r = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  const data = await r.json().catch(() => ({ error: { message: r.statusText } }));
  if (!r.ok) throw new Error((data.error && data.error.message) || r.statusText);
  return data;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function showError(out, err) { out.replaceChildren(el("div", { class: "error" }, err.message || String(err))); }

function model(section, endpoint) {
  const s = document.querySelector(`#${section} select[data-endpoint="${endpoint}"]`);
  return s && s.value ? s.value : undefined;
}

// Highlight [start, end) spans of text (offsets count Unicode code points, as the server's do).
function highlight(text, spans) {
  const chars = Array.from(text);
  const out = [];
  let at = 0;
  const types = {};
  for (const s of [...spans].sort((a, b) => a.start - b.start)) {
    if (s.start < at || s.start < 0) continue;
    out.push(chars.slice(at, s.start).join(""));
    const m = el("mark", s.type ? { "data-type": s.type } : {}, chars.slice(s.start, s.end).join(""));
    if (s.type) {
      if (!(s.type in types)) types[s.type] = Object.keys(types).length % 4;
      if (types[s.type]) m.classList.add("t" + types[s.type]);
    }
    if (s.cls) m.classList.add(s.cls);
    if (s.title) m.title = s.title;
    out.push(m);
    at = s.end;
  }
  out.push(chars.slice(at).join(""));
  return out;
}

// ------------------------------------------------------------------------------------------------ tabs, models
document.querySelectorAll("#tabs button").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll("#tabs button, .tab").forEach((x) => x.classList.remove("on"));
  b.classList.add("on");
  $(b.dataset.tab).classList.add("on");
}));

async function loadInfo() {
  try {
    const r = await fetch("/info", { headers: headers() });
    if (!r.ok) throw new Error((await r.json()).error.message);
    INFO = await r.json();
  } catch (e) {
    $("status").textContent = "cannot read /info: " + e.message;
    return;
  }
  $("status").textContent = INFO.models.map((m) => `${m.name}: ${m.task || m.paradigms.join("+")}`).join(" · ");
  document.querySelectorAll("select[data-endpoint]").forEach((sel) => {
    const able = INFO.models.filter((m) => m.endpoints.includes(sel.dataset.endpoint));
    sel.replaceChildren(...able.map((m) => el("option", { value: m.name }, m.name)));
    if (!able.length) sel.replaceChildren(el("option", { value: "" }, "(no model serves this)"));
  });
  const mlm = INFO.models.find((m) => m.endpoints.includes("fill-mask"));
  if (mlm && mlm.mask_token) document.querySelectorAll(".masktok").forEach((c) => { c.textContent = mlm.mask_token; });
  drawMasks();
}
$("apikey").addEventListener("change", loadInfo);

// ------------------------------------------------------------------------------------------------ fill-mask
$("fill-go").addEventListener("click", async () => {
  const out = $("fill-out");
  try {
    const data = await call("/v1/fill-mask", { model: model("fill", "fill-mask"), text: $("fill-text").value, top_k: 5 });
    out.replaceChildren(...data.masks.map((row, i) => el("table", { class: "cands" },
      el("tr", {}, el("th", {}, `blank ${i + 1}`), el("th", {}, "p"), el("th", {}, "sentence")),
      ...row.map((c) => el("tr", {}, el("td", {}, c.token),
        el("td", {}, el("span", { class: "bar", style: `width:${Math.round(c.score * 80)}px` }), " ",
          c.score.toFixed(3)), el("td", {}, c.sequence))))));
  } catch (e) { showError(out, e); }
});

// ------------------------------------------------------------------------------------------------ classify
$("cls-go").addEventListener("click", async () => {
  const out = $("cls-out");
  try {
    const data = await call("/v1/classify", { model: model("classify", "classify"), text: $("cls-text").value });
    const r = data.results[0];
    out.replaceChildren(r.labels ? `labels: ${r.labels.join(", ") || "(none)"}`
      : el("span", {}, el("b", {}, r.label), ` (${r.score.toFixed(3)})`));
  } catch (e) { showError(out, e); }
});

// ------------------------------------------------------------------------------------------------ QA
$("qa-go").addEventListener("click", async () => {
  const out = $("qa-out");
  const context = $("qa-c").value;
  try {
    const a = await call("/v1/answer", { model: model("qa", "answer"), question: $("qa-q").value, context });
    if (a.start < 0) { out.replaceChildren("no answer found in the context"); return; }
    out.replaceChildren(el("div", {}, "answer: ", el("b", { id: "qa-answer" }, a.answer)),
      el("div", { class: "ctx" }, ...highlight(context, [{ start: a.start, end: a.end, cls: "answer",
        title: `score ${typeof a.score === "number" ? a.score.toFixed(3) : a.score}` }])));
  } catch (e) { showError(out, e); }
});

// ------------------------------------------------------------------------------------------------ NER
$("ner-go").addEventListener("click", async () => {
  const out = $("ner-out");
  const text = $("ner-text").value;
  try {
    const data = await call("/v1/tag", { model: model("ner", "tag"), text });
    const ents = data.results[0];
    out.replaceChildren(...highlight(text, ents.map((e) => ({ ...e, title: `${e.type} ${e.score.toFixed(3)}` }))),
      el("div", { class: "muted" }, ents.length ? "" : "(no entities)"));
  } catch (e) { showError(out, e); }
});

// ------------------------------------------------------------------------------------------------ streaming
// Appends each streamed text piece to `out` as it arrives; resolves to the finish reason ("stop", "length").
async function streamCompletion(body, out, signal) {
  const r = await fetch("/v1/completions", { method: "POST", headers: headers(), signal,
    body: JSON.stringify({ ...body, stream: true }) });
  if (!r.ok) {
    const data = await r.json().catch(() => ({}));
    throw new Error((data.error && data.error.message) || `${r.status} ${r.statusText}`);
  }
  let reason = null;
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 2);
      if (!line.startsWith("data: ")) continue;
      const payload = line.slice(6);
      if (payload === "[DONE]") return reason;
      const chunk = JSON.parse(payload);
      if (chunk.error) throw new Error(chunk.error.message);
      const text = chunk.choices[0].text;
      if (text) out.append(el("span", { class: "piece" }, text));
      if (chunk.choices[0].finish_reason) reason = chunk.choices[0].finish_reason;
    }
  }
  return reason;
}

function num(id) { const v = $(id).value; return v === "" ? undefined : Number(v); }

// #gen-out's data-state says where the stream is (streaming, done, stopped, error); #gen-meta sums it up.
$("gen-go").addEventListener("click", async () => {
  const out = $("gen-out"), meta = $("gen-meta");
  if (genAbort) genAbort.abort();
  const mine = new AbortController();
  genAbort = mine;
  out.replaceChildren(el("b", {}, $("gen-prompt").value));
  out.dataset.state = "streaming";
  meta.textContent = "streaming…";
  const k = num("gen-k");
  const started = performance.now();
  const took = () => `${((performance.now() - started) / 1000).toFixed(2)} s`;
  try {
    const reason = await streamCompletion({ model: model("generate", "completions"), prompt: $("gen-prompt").value,
      temperature: num("gen-t"), top_k: k ? k : undefined, top_p: num("gen-p"), max_tokens: num("gen-n"),
      seed: num("gen-seed") }, out, mine.signal);
    if (genAbort !== mine) return;  // a newer run owns the output now
    const pieces = out.querySelectorAll(".piece").length;
    meta.textContent = `${pieces} streamed pieces in ${took()} · finished: ${reason || "?"}`;
    out.dataset.state = "done";
  } catch (e) {
    if (genAbort !== mine) return;
    if (e.name === "AbortError") {
      meta.textContent = `stopped after ${took()}`;
      out.dataset.state = "stopped";
    } else {
      out.append(el("div", { class: "error" }, e.message));
      meta.textContent = "";
      out.dataset.state = "error";
    }
  }
});
$("gen-stop").addEventListener("click", () => { if (genAbort) genAbort.abort(); });

// ------------------------------------------------------------------------------------------------ side by side
$("side-go").addEventListener("click", async () => {
  const prompt = $("side-prompt").value;
  const n = num("side-n") || 16;
  const left = $("side-mlm"), right = $("side-clm");
  left.replaceChildren(el("b", {}, prompt), " …");
  right.replaceChildren(el("b", {}, prompt));
  left.dataset.state = right.dataset.state = "running";
  // A byte-level BPE continuation carries its own leading space; add one only where neither side has it.
  const join = (text) => (!text || /^\s/.test(text) || /\s$/.test(prompt) ? text : " " + text);
  const masked = call("/v1/mask-predict", { model: model("side", "mask-predict"), prompt, max_tokens: n, steps: 10 })
    .then((d) => { left.replaceChildren(el("b", {}, prompt), join(d.text)); left.dataset.state = "done"; })
    .catch((e) => { showError(left, e); left.dataset.state = "error"; });
  const causal = streamCompletion({ model: model("side", "completions"), prompt, max_tokens: n, temperature: 0.8,
    top_k: 40 }, right).then(() => { right.dataset.state = "done"; })
    .catch((e) => { right.append(el("div", { class: "error" }, e.message)); right.dataset.state = "error"; });
  await Promise.all([masked, causal]);
});

// ------------------------------------------------------------------------------------------------ mask view
let maskTimer = null;
function matrix(tokens, causal) {
  const head = el("tr", {}, el("th", {}), ...tokens.map((t) => el("th", {}, t)));
  const rows = tokens.map((t, i) => el("tr", {}, el("th", {}, t),
    ...tokens.map((_, j) => el("td", (causal && j > i) ? { title: `${t} cannot see ${tokens[j]}` }
      : { class: "see", title: `${t} sees ${tokens[j]}` }))));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows));
}
async function drawMasks() {
  const m = model("masks", "tokenize");
  if (!m) return;
  try {
    const data = await call("/v1/tokenize", { model: m, text: $("mask-text").value, truncate: true });
    const tokens = data.tokens.slice(0, 40).map((t) => t.replace(/\s/g, "·") || "∅");
    $("mask-bi").replaceChildren(matrix(tokens, false));
    $("mask-causal").replaceChildren(matrix(tokens, true));
  } catch (e) { showError($("mask-bi"), e); }
}
$("mask-text").addEventListener("input", () => { clearTimeout(maskTimer); maskTimer = setTimeout(drawMasks, 200); });
document.querySelector('#masks select').addEventListener("change", drawMasks);

loadInfo();
