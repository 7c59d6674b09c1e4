"""The page at ``/``: try a served model on an image, in the browser.

One self-contained HTML document (inline CSS and script, no external assets).
It lists the models from ``/v2/models`` (a model and a version picker), shows
the chosen one's name, version and input size from its metadata, and sends a
chosen or dropped image to ``POST .../classify`` as the raw body. It shows the
top-k labels with score bars and the latency measured in the page, or the
server's ``{"error": ...}`` message. A Content-Security-Policy allows only the
inline script and style (by hash) and requests to this server.
"""

from __future__ import annotations

import base64
import hashlib

from starlette.requests import Request
from starlette.responses import HTMLResponse

STYLE = """
:root { color-scheme: light dark; --accent: #2f6fde; --muted: #888; --line: #8884; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 44rem; padding: 1.5rem; }
h1 { font-size: 1.35rem; margin: 0 0 1rem; }
h1 small { color: var(--muted); font-weight: normal; font-size: .8rem; margin-left: .4rem; }
.row { display: flex; gap: .8rem; flex-wrap: wrap; align-items: end; margin-bottom: .8rem; }
label.field { display: flex; flex-direction: column; font-size: .8rem; color: var(--muted); gap: .2rem; }
select, input[type=number] { font: inherit; padding: .3rem .4rem; min-width: 6rem; }
#info { font-size: .9rem; margin: 0 0 1rem; color: var(--muted); }
#info b { color: CanvasText; font-weight: 600; }
#drop { display: flex; flex-direction: column; align-items: center; justify-content: center; gap: .4rem;
        border: 2px dashed var(--line); border-radius: .6rem; padding: 1.6rem 1rem; cursor: pointer;
        text-align: center; }
#drop.over { border-color: var(--accent); background: #2f6fde14; }
#drop input { max-width: 100%; }
#output { display: grid; grid-template-columns: 9rem 1fr; gap: 1rem; margin-top: 1.2rem; }
#output[hidden] { display: none; }
#preview { width: 9rem; height: 9rem; object-fit: contain; border-radius: .4rem; background: #8882; }
#results { list-style: none; padding: 0; margin: 0; }
#results li { display: grid; grid-template-columns: 8rem 1fr 4rem; gap: .5rem; align-items: center;
              margin-bottom: .35rem; }
#results .label { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
#results li:first-child .label { font-weight: 600; }
.bar { height: .8rem; border-radius: .4rem; background: #8883; overflow: hidden; }
.bar span { display: block; height: 100%; background: var(--accent); }
.score { text-align: right; font-variant-numeric: tabular-nums; }
#latency { color: var(--muted); font-size: .85rem; margin: .5rem 0 0; }
#error { color: #c62828; background: #c628281a; border-radius: .4rem; padding: .6rem .8rem; }
#error[hidden] { display: none; }
"""

SCRIPT = """
"use strict";
const $ = (id) => document.getElementById(id);
const state = { models: [], file: null, url: null };

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const text = await response.text();
  let body = null;
  try { body = JSON.parse(text); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && typeof body.error === "string" ? body.error
      : `${response.status} ${response.statusText} ${text.slice(0, 200)}`.trim();
    throw new Error(message);
  }
  if (body === null) throw new Error(`the server answered ${url} with something that is not JSON`);
  return body;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function modelPath() {
  return `v2/models/${encodeURIComponent($("model").value)}/versions/${encodeURIComponent($("version").value)}`;
}

function fill(select, values, chosen) {
  select.replaceChildren(...values.map((value) => new Option(value, value, false, value === chosen)));
}

async function loadModels() {
  try {
    const index = await getJSON("v2/models");
    state.models = index.models;
    if (!state.models.length) throw new Error("the server has no models");
    fill($("model"), state.models.map((m) => m.name), state.models[0].name);
    await modelChanged();
  } catch (err) {
    showError(`cannot list the models: ${err.message}`);
  }
}

async function modelChanged() {
  const model = state.models.find((m) => m.name === $("model").value);
  fill($("version"), model.versions, model.versions[model.versions.length - 1]);
  await versionChanged();
}

async function versionChanged() {
  $("info").textContent = "";
  try {
    const meta = await getJSON(modelPath());
    const shape = meta.inputs[0].shape;
    const classes = meta.outputs[0].shape[meta.outputs[0].shape.length - 1];
    const parts = [["model", meta.name], ["version", $("version").value],
                   ["input", `${shape[2]}\u00d7${shape[1]} px`], ["classes", String(classes)]];
    for (const [key, value] of parts) {
      const b = document.createElement("b");
      b.textContent = value;
      $("info").append(`${key} `, b, "  ");
    }
    $("info").dataset.model = meta.name;
    $("info").dataset.version = $("version").value;
    $("info").dataset.input = `${shape[2]}x${shape[1]}`;
    if (state.file) await classify(state.file);
  } catch (err) {
    showError(err.message);
  }
}

function render(predictions) {
  const items = predictions.map((p) => {
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = label.title = p.label;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fillBar = document.createElement("span");
    fillBar.style.width = `${Math.max(0, Math.min(1, p.score)) * 100}%`;
    bar.append(fillBar);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `${(p.score * 100).toFixed(1)}%`;
    li.append(label, bar, score);
    return li;
  });
  $("results").replaceChildren(...items);
}

async function classify(file) {
  state.file = file;
  $("error").hidden = true;
  $("results").replaceChildren();
  $("latency").textContent = "classifying\u2026";
  if (state.url) URL.revokeObjectURL(state.url);
  state.url = URL.createObjectURL(file);
  $("preview").src = state.url;
  $("preview").alt = file.name;
  $("output").hidden = false;
  const k = Math.max(1, Math.min(1000, parseInt($("topk").value, 10) || 5));
  const started = performance.now();
  try {
    const answer = await getJSON(`${modelPath()}/classify?top_k=${k}`, {
      method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" } });
    const ms = performance.now() - started;
    render(answer.results[0].predictions);
    $("latency").textContent = `${file.name}: ${answer.model_name} version ${answer.model_version}, ` +
      `answered in ${ms.toFixed(1)} ms`;
    $("latency").dataset.ms = ms.toFixed(3);
  } catch (err) {
    $("latency").textContent = "";
    showError(err.message);
  }
}

function setUp() {
  const drop = $("drop");
  $("file").addEventListener("change", () => { if ($("file").files.length) classify($("file").files[0]); });
  $("model").addEventListener("change", modelChanged);
  $("version").addEventListener("change", versionChanged);
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const files = e.dataTransfer ? e.dataTransfer.files : [];
    if (files.length) classify(files[0]);
    else showError("drop an image file (nothing usable was dropped)");
  });
  loadModels();
}

setUp();
"""

HTML = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>graft serve</title>
<link rel="icon" href="data:,">
<style>{STYLE}</style>
</head>
<body>
<h1>graft serve <small>try a model on an image</small></h1>
<div class="row">
  <label class="field">model <select id="model"></select></label>
  <label class="field">version <select id="version"></select></label>
  <label class="field">top k <input id="topk" type="number" min="1" max="1000" value="5"></label>
</div>
<p id="info"></p>
<label id="drop" for="file">
  <span>Drop an image here, or choose a file</span>
  <input id="file" type="file" accept="image/*">
</label>
<p id="error" role="alert" hidden></p>
<section id="output" hidden>
  <img id="preview" alt="">
  <div>
    <ol id="results"></ol>
    <p id="latency"></p>
  </div>
</section>
<script>{SCRIPT}</script>
</body>
</html>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CONTENT_SECURITY_POLICY = (f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)}; "
                           "img-src blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                           "frame-ancestors 'none'")


async def index(request: Request) -> HTMLResponse:
    """GET /: the page."""
    return HTMLResponse(HTML, headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                                       "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})
