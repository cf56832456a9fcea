// The twinstream page: pick or drop an image, POST it to /search or /recognize, show the results.
// Everything from the server is inserted with textContent (never innerHTML): labels and
// attributes come from whoever ingested the images.
"use strict";

const $ = (selector) => document.querySelector(selector);
const fileInput = $("#file");
const drop = $("#drop");
const preview = $("#preview");
const grid = $("#grid");
const summary = $("#summary");
const verdict = $("#verdict");
const errorBox = $("#error");
let currentFile = null;
let previewUrl = null;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

function setFile(file) {
  if (!file) return;
  currentFile = file;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  preview.src = previewUrl;
  preview.alt = file.name;
  preview.hidden = false;
  $("#drop-hint").hidden = true;
  run();
}

// A similarity people can read: the calibrated probability that it is the same identity when the
// model card has a calibration, the raw cosine beside it (or alone, for older models).
function similarity(hit) {
  const score = el("div", "score");
  const bar = el("div", "bar");
  const fill = el("span");
  const p = hit.probability;
  fill.style.width = `${Math.max(0, Math.min(1, p ?? hit.score)) * 100}%`;
  bar.append(fill);
  if (p === null || p === undefined) {
    score.append(el("span", "value", hit.score.toFixed(3)), bar);
  } else {
    const value = el("span", "value", `${(p * 100).toFixed(p > 0.99 || p < 0.01 ? 1 : 0)}%`);
    value.title = "probability that it is the same identity (calibrated)";
    value.dataset.testid = "probability";
    score.append(value, el("span", "cosine", `cos ${hit.score.toFixed(3)}`), bar);
  }
  return score;
}

function card(hit, rank) {
  // Search hits are items (id, attributes); recognition hits are identities (label, references).
  const identity = hit.label !== undefined && hit.attributes === undefined;
  const label = identity ? hit.label : String(hit.attributes.label ?? "(no label)");
  const item = el("li", "card");
  item.dataset.id = identity ? hit.label : hit.id;
  item.dataset.testid = "result";
  const img = el("img");
  img.src = hit.thumbnail_url;
  img.alt = label;
  img.loading = "lazy";
  img.onerror = () => { img.style.visibility = "hidden"; };
  const detail = identity ? `${hit.references} reference${hit.references === 1 ? "" : "s"}`
                          : hit.id;
  item.append(el("span", "rank", `#${rank}`), img, el("span", "label", label),
              similarity(hit), el("span", "id", detail));
  item.title = identity ? hit.label : JSON.stringify(hit.attributes, null, 1);
  return item;
}

function showHits(hits) {
  grid.replaceChildren(...hits.map((hit, i) => card(hit, i + 1)));
}

function showVerdict(body) {
  const chance = body.probability === null || body.probability === undefined ? ""
    : ` · probability ${(body.probability * 100).toFixed(1)}%`;
  const compare = body.known ? "≥" : "<";
  const detail = el("div", "detail",
    `best match ${body.score.toFixed(4)} ${compare} threshold ${body.threshold.toFixed(4)}` +
    chance);
  const reason = el("div", "reason", `threshold: ${body.threshold_reason}`);
  reason.dataset.testid = "threshold-reason";
  verdict.replaceChildren(el("div", "label", body.known ? body.label : "unknown"), detail,
                          reason);
  if (body.warning) verdict.append(el("div", "warning", body.warning));
  verdict.className = body.known ? "verdict" : "verdict unknown";
  verdict.dataset.label = body.known ? body.label : "unknown";
  verdict.dataset.probability = body.probability ?? "";
  verdict.hidden = false;
}

async function run() {
  if (!currentFile) return;
  const form = new FormData();
  form.append("image", currentFile);
  form.append("k", $("#k").value);
  const recognise = mode() === "recognize";
  const filter = $("#filter").value.trim();
  if (filter && !recognise) form.append("filter", filter);
  showError("");
  summary.textContent = recognise ? "Recognising…" : "Searching…";
  document.body.dataset.state = "busy";
  try {
    const response = await fetch(recognise ? "recognize" : "search",
                                 { method: "POST", body: form });
    const body = await response.json().catch(() => ({ message: response.statusText }));
    if (!response.ok) {
      grid.replaceChildren();
      verdict.hidden = true;
      summary.textContent = "";
      showError(body.message || `request failed (${response.status})`);
      return;
    }
    if (recognise) showVerdict(body); else verdict.hidden = true;
    showHits(body.hits);
    const t = body.timings_ms || {};
    const ms = Object.values(t).reduce((a, b) => a + b, 0);
    summary.textContent = `${body.hits.length} result${body.hits.length === 1 ? "" : "s"} · ` +
      `model ${body.model_version.slice(0, 12)} · ${ms.toFixed(1)} ms on the server`;
  } catch (err) {
    showError(`cannot reach the service: ${err.message}`);
    summary.textContent = "";
  } finally {
    document.body.dataset.state = "done";
  }
}

async function showStatus() {
  const status = $("#status");
  try {
    const response = await fetch("readyz");
    const body = await response.json();
    const index = body.checks.index || {};
    const model = body.checks.model || {};
    if (body.ready) {
      status.textContent = `index “${index.name}” · ${index.count} items · ` +
        `model ${String(model.version).slice(0, 12)}`;
      status.className = "status";
    } else {
      const problem = Object.entries(body.checks).find(([, c]) => !c.ok);
      status.textContent = `not ready: ${problem[0]}: ${problem[1].error}`;
      status.className = "status bad";
    }
  } catch (err) {
    status.textContent = `service unreachable: ${err.message}`;
    status.className = "status bad";
  }
}

fileInput.addEventListener("change", () => setFile(fileInput.files[0]));
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
for (const type of ["dragleave", "drop"]) {
  drop.addEventListener(type, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  setFile(event.dataTransfer.files[0]);
});
for (const input of document.querySelectorAll("input[name=mode], #k")) {
  input.addEventListener("change", run);
}
$("#filter").addEventListener("change", run);
showStatus();
