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

function card(hit, rank) {
  const item = el("li", "card");
  item.dataset.id = hit.id;
  item.dataset.testid = "result";
  const img = el("img");
  img.src = hit.thumbnail_url;
  img.alt = hit.attributes.label || hit.id;
  img.loading = "lazy";
  img.onerror = () => { img.style.visibility = "hidden"; };
  const score = el("div", "score");
  const bar = el("div", "bar");
  const fill = el("span");
  fill.style.width = `${Math.max(0, Math.min(1, hit.score)) * 100}%`;
  bar.append(fill);
  score.append(el("span", "value", hit.score.toFixed(3)), bar);
  item.append(el("span", "rank", `#${rank}`), img,
              el("span", "label", String(hit.attributes.label ?? "(no label)")),
              score, el("span", "id", hit.id));
  item.title = JSON.stringify(hit.attributes, null, 1);
  return item;
}

function showHits(hits) {
  grid.replaceChildren(...hits.map((hit, i) => card(hit, i + 1)));
}

function showVerdict(body) {
  verdict.replaceChildren(
    el("div", "label", body.known ? body.label : "unknown"),
    el("div", "detail", body.known
      ? `best match ${body.score.toFixed(3)} ≥ threshold ${body.threshold.toFixed(3)}`
      : `best match ${body.score.toFixed(3)} < threshold ${body.threshold.toFixed(3)}`));
  verdict.className = body.known ? "verdict" : "verdict unknown";
  verdict.dataset.label = body.known ? body.label : "unknown";
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
