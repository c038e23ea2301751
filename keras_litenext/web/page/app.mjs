// The page of `keras-litenext web`: MediaPipe Tasks (ImageSegmenter / ImageClassifier, WebAssembly,
// CPU) run a .tflite file with its TFLite metadata on images dropped or picked here. One code path
// for a drop, a pick and the headless check: handleFiles(). window.litenext exposes its results.

const VISION = "./vendor/@mediapipe/tasks-vision/";
const $ = (id) => document.getElementById(id);
const state = { task: null, info: null, vision: null, fileset: null, busy: Promise.resolve() };
// ?confidence=1: each result also carries the segmenter's confidence masks (the check compares them)
const CONFIDENCE = new URLSearchParams(location.search).get("confidence") === "1";
const api = { ready: null, results: [], errors: [], timeRuns: 0, version: null, idle: () => state.busy, handleFiles };
window.litenext = api;

// -- messages: one readable line, never a blank page --------------------------------------------------
function setStatus(text) { $("status").textContent = text; }
function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = false;
  api.errors.push(message);
}
function clearError() { $("error").hidden = true; }
const reason = (err) => (err && err.message ? err.message : String(err)).split("\n")[0];
window.addEventListener("error", (e) => showError(`Unexpected error: ${reason(e.error || e.message)}`));
window.addEventListener("unhandledrejection", (e) => showError(`Unexpected error: ${reason(e.reason)}`));

// -- the TFLite metadata MediaPipe reads: which task, the activation, name and description -------------
function tables(buf) {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const table = (pos) => ({ pos, vt: pos - v.getInt32(pos, true) });
  const off = (t, slot) => { const vo = 4 + 2 * slot; return vo < v.getUint16(t.vt, true) ? v.getUint16(t.vt + vo, true) : 0; };
  const ind = (p) => p + v.getUint32(p, true);
  return {
    root: () => table(ind(0)),
    sub: (t, s) => { const o = off(t, s); return o ? table(ind(t.pos + o)) : null; },
    list: (t, s) => { const o = off(t, s); if (!o) return []; const p = ind(t.pos + o), n = v.getUint32(p, true);
      return Array.from({ length: n }, (_, i) => table(ind(p + 4 + 4 * i))); },
    bytes: (t, s) => { const o = off(t, s); if (!o) return null; const p = ind(t.pos + o);
      return buf.subarray(p + 4, p + 4 + v.getUint32(p, true)); },
    str: (t, s) => { const o = off(t, s); if (!o) return null; const p = ind(t.pos + o);
      return new TextDecoder().decode(buf.subarray(p + 4, p + 4 + v.getUint32(p, true))); },
    u8: (t, s) => { const o = off(t, s); return o ? v.getUint8(t.pos + o) : 0; },
    u32: (t, s) => { const o = off(t, s); return o ? v.getUint32(t.pos + o, true) : 0; },
  };
}

export function readMetadata(bytes, name) {
  if (bytes.length < 8 || new TextDecoder().decode(bytes.subarray(4, 8)) !== "TFL3") {
    throw new Error(`${name}: not a .tflite file (no TFL3 identifier)`);
  }
  try {
    const m = tables(bytes), model = m.root();
    const entry = m.list(model, 6).find((e) => m.str(e, 0) === "TFLITE_METADATA");
    if (!entry) throw new Error("none");
    const data = m.bytes(m.list(model, 4)[m.u32(entry, 1)], 0);
    const md = tables(data), root = md.root(), sub = md.list(root, 3)[0];
    const out = sub ? md.list(sub, 3)[0] : null, content = out ? md.sub(out, 3) : null;
    const reader = { 2: "ImageSegmenter", 1: "ImageClassifier" }[content ? md.u8(content, 0) : 0];
    let activation = null;
    for (const c of sub ? md.list(sub, 9) : []) {
      if (md.str(c, 0) !== "SEGMENTER_METADATA") continue;
      const opts = tables(md.bytes(c, 1));
      activation = ["NONE", "SIGMOID", "SOFTMAX"][opts.u8(opts.root(), 0)];
    }
    if (!reader) throw new Error("none");
    const info = { reader, activation, metadata: {} };
    [["name", 0], ["description", 1], ["version", 2], ["author", 4], ["license", 5]].forEach(([k, s]) => { info.metadata[k] = md.str(root, s); });
    return info;
  } catch (err) {
    throw new Error(`${name}: no TFLite metadata naming an image segmenter or classifier (write the file with keras-litenext export)`);
  }
}

// -- MediaPipe Tasks ------------------------------------------------------------------------------------
async function loadVision() {
  if (state.vision) return state.vision;
  try {
    state.vision = await import(VISION + "vision_bundle.mjs");
    state.fileset = await state.vision.FilesetResolver.forVisionTasks(new URL(VISION + "wasm", location.href).href);
    api.version = VISION;
  } catch (err) {
    state.vision = null;
    throw new Error(`MediaPipe Tasks could not be loaded from ${VISION} (${reason(err)}); build the page again with keras-litenext web`);
  }
  return state.vision;
}

const PALETTE = [[0, 0, 0], [255, 0, 80], [0, 160, 255], [255, 200, 0], [180, 0, 255], [0, 220, 160], [255, 120, 0], [120, 255, 0]];

function completeInfo(info, labels) {
  // what the build writes in model.json; a dropped model gets it from MediaPipe's labels
  info.labels = info.labels || labels;
  info.classes = info.classes || (info.activation === "SIGMOID" ? ["background", ...labels] : labels.slice());
  info.colors = info.colors || info.classes.map((_, i) => PALETTE[i % PALETTE.length]);
  info.category_to_class = info.category_to_class || info.labels.map((l, i) => { const j = info.classes.indexOf(l); return j >= 0 ? j : i; });
  return info;
}

async function createTask(bytes, info, name) {
  const vision = await loadVision();
  const base = { baseOptions: { modelAssetBuffer: bytes, delegate: "CPU" }, runningMode: "IMAGE" };
  let task;
  try {
    task = info.reader === "ImageClassifier"
      ? await vision.ImageClassifier.createFromOptions(state.fileset, { ...base, maxResults: -1 })
      : await vision.ImageSegmenter.createFromOptions(state.fileset, { ...base, outputCategoryMask: true, outputConfidenceMasks: CONFIDENCE });
  } catch (err) {
    throw new Error(`${name}: MediaPipe's ${info.reader} rejects this model (${reason(err)})`);
  }
  const labels = info.reader === "ImageSegmenter" ? task.getLabels() : (info.labels || []);
  if (state.task) state.task.close();
  state.task = task;
  state.info = completeInfo(info, labels);
  renderCard(state.info);
  setStatus(`Ready: ${state.info.source_file || name} (${info.reader}, ${state.info.classes.length} classes). Drop images.`);
}

async function loadModelFile(file) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  const info = readMetadata(bytes, file.name);
  info.source_file = file.name;
  info.size_bytes = bytes.length;
  await createTask(bytes, info, file.name);
}

async function loadBuiltModel() {
  let info, bytes;
  try {
    const response = await fetch("model.json");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    info = await response.json();
    const model = await fetch(info.file);
    if (!model.ok) throw new Error(`${info.file}: HTTP ${model.status}`);
    bytes = new Uint8Array(await model.arrayBuffer());
  } catch (err) {
    throw new Error(`The page's model could not be loaded (${reason(err)}): serve this folder over HTTP (keras-litenext web --serve), not as a file`);
  }
  await createTask(bytes, info, info.source_file);
}

// -- one image --------------------------------------------------------------------------------------------
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length ? (s[(s.length - 1) >> 1] + s[s.length >> 1]) / 2 : null; };

function runOnce(bitmap) {
  const t0 = performance.now();
  const result = state.info.reader === "ImageClassifier" ? state.task.classify(bitmap) : state.task.segment(bitmap);
  return { result, ms: performance.now() - t0 };
}

function classMask(result, info) {
  const mask = result.categoryMask, cats = mask.getAsUint8Array();
  const lut = new Uint8Array(256);  // MediaPipe's "no category" (255, one-logit files) is class 0
  info.category_to_class.forEach((c, i) => { lut[i] = c; });
  const cls = new Uint8Array(cats.length);
  for (let i = 0; i < cats.length; i++) cls[i] = lut[cats[i]];
  return { cls, width: mask.width, height: mask.height };
}

function softmax(xs) { const m = Math.max(...xs), e = xs.map((x) => Math.exp(x - m)), s = e.reduce((a, b) => a + b, 0); return e.map((x) => x / s); }

async function runImage(file) {
  if (!state.task) throw new Error(`${file.name}: no model is loaded`);
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  } catch (err) {
    throw new Error(`${file.name}: not an image this browser can decode (PNG or JPEG)`);
  }
  const info = state.info, record = { name: file.name, width: bitmap.width, height: bitmap.height, reader: info.reader, classes: info.classes };
  let { result, ms } = runOnce(bitmap);
  if (info.reader === "ImageClassifier") {
    const scores = new Array(info.classes.length).fill(0);
    for (const c of result.classifications[0].categories) scores[c.index] = c.score;
    record.scores = scores;  // the logits (the metadata states no activation)
    record.probabilities = softmax(scores);
    record.top = scores.indexOf(Math.max(...scores));
  } else {
    const { cls, width, height } = classMask(result, info);
    if (CONFIDENCE) record.confidence = (result.confidenceMasks || []).map((m) => new Uint8Array(m.getAsFloat32Array().slice().buffer));
    result.close();
    record.mask = cls;
    record.width = width;
    record.height = height;
    record.areas = info.classes.map(() => 0);
    for (const c of cls) record.areas[c]++;
  }
  record.ms = ms;
  const times = [];
  for (let i = 0; i < api.timeRuns; i++) {
    const again = runOnce(bitmap);
    times.push(again.ms);
    if (again.result.close) again.result.close();
  }
  record.runs = times.length;
  record.median_ms = times.length ? median(times) : null;
  renderResult(record, bitmap);
  bitmap.close();
  return record;
}

// -- drawing ----------------------------------------------------------------------------------------------
function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  Object.assign(e, props);
  for (const c of children) e.append(c);
  return e;
}
const hex = (c) => `rgb(${c[0]}, ${c[1]}, ${c[2]})`;

function renderCard(info) {
  const card = info.card || {}, md = info.metadata || {};
  const rows = [["Model", card.model || md.name], ["File", `${info.source_file || ""}${info.size_bytes ? ` (${(info.size_bytes / 1024).toFixed(0)} KiB)` : ""}`],
    ["File kind", card.file_description || card.file_kind], ["int8 mode", card.int8_mode], ["Task", card.task ? `${card.task} (${info.reader})` : info.reader],
    ["Classes", info.classes.join(", ")], ["Training data", card.training_data],
    ["Splits", card.splits ? Object.entries(card.splits).map(([k, v]) => `${k} ${v}`).join(", ") : null],
    ["Test metrics", card.test ? Object.entries(card.test).map(([k, v]) => `${k} ${Number(v).toFixed(4)}`).join(", ") : null],
    ["Evaluation", card.evaluation], ["int8 gate", card.gate], ["Description", md.description],
    ["Version", md.version], ["Licence", md.license]];
  const dl = el("dl");
  for (const [k, v] of rows) if (v) dl.append(el("dt", { textContent: k }), el("dd", { textContent: v }));
  $("card").replaceChildren(el("h2", { textContent: `Model card: ${md.name || info.source_file}` }), dl);
}

function renderResult(r, bitmap) {
  const info = state.info, canvas = el("canvas", { width: r.width, height: r.height });
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, r.width, r.height);
  const box = el("div", { className: "result" }, el("h3", { textContent: r.name }), canvas);
  if (r.mask) {
    const img = ctx.getImageData(0, 0, r.width, r.height), a = 0.45;
    for (let i = 0; i < r.mask.length; i++) {
      const c = r.mask[i];
      if (!c) continue;
      const col = info.colors[c];
      for (let k = 0; k < 3; k++) img.data[4 * i + k] = (1 - a) * img.data[4 * i + k] + a * col[k];
    }
    ctx.putImageData(img, 0, 0);
    const total = r.mask.length;
    box.append(el("ul", { className: "legend" }, ...info.classes.map((name, i) => el("li", {},
      el("span", { className: "swatch", style: `background:${hex(info.colors[i])}` }),
      `${name}: ${r.areas[i]} px (${(100 * r.areas[i] / total).toFixed(1)} %)`))));
  } else {
    box.append(el("ul", { className: "legend" }, ...info.classes.map((name, i) => el("li", {},
      `${i === r.top ? "▶ " : ""}${name}: ${(100 * r.probabilities[i]).toFixed(1)} %`,
      el("div", { className: "bar", style: `width:${Math.round(100 * r.probabilities[i])}px` })))));
  }
  const timing = r.median_ms != null ? `; median of ${r.runs} runs ${r.median_ms.toFixed(1)} ms` : "";
  box.append(el("div", { className: "time", textContent: `${r.width}×${r.height} px; inference ${r.ms.toFixed(1)} ms${timing}` }));
  $("results").prepend(box);
}

function renderFailure(message) {
  $("results").prepend(el("div", { className: "result failed" }, el("h3", { textContent: "Not processed" }), message));
}

// -- files: drop, pick, check ------------------------------------------------------------------------------
function toBase64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

export function handleFiles(files) {
  const list = Array.from(files);
  state.busy = state.busy.then(async () => {
    clearError();
    for (const file of list.filter((f) => f.name.toLowerCase().endsWith(".tflite"))) {
      try { setStatus(`Loading ${file.name}…`); await loadModelFile(file); } catch (err) { showError(reason(err)); setStatus("The model was not loaded."); }
    }
    for (const file of list.filter((f) => !f.name.toLowerCase().endsWith(".tflite"))) {
      try {
        const r = await runImage(file);
        api.results.push({ ...r, mask: r.mask ? toBase64(r.mask) : undefined, confidence: r.confidence ? r.confidence.map(toBase64) : undefined });
      } catch (err) {
        const message = reason(err);
        showError(message);
        renderFailure(message);
        api.results.push({ name: file.name, error: message });
      }
    }
  });
  return state.busy;
}

function wire() {
  const drop = $("drop");
  $("images").addEventListener("change", (e) => { handleFiles(e.target.files); });
  $("model").addEventListener("change", (e) => { handleFiles(e.target.files); });
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, () => drop.classList.remove("over"));
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => { e.preventDefault(); handleFiles(e.dataTransfer.files); });
}

wire();
api.ready = state.busy = loadBuiltModel().catch((err) => {
  showError(reason(err));
  setStatus("No model: drop a .tflite file.");
  return false;
}).then((ok) => ok !== false);
