// The browser example: fetch an artifact and a data file, train with onnxruntime-web, plot the loss.
//
// Query parameters fill the form: artifact, data, batch, epochs, steps (a cap);
// autorun=1 starts at once; report=URL POSTs {losses, lrs, seconds} (or {error}) there at the end.
import * as ort from "./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs";
import { checkManifest, readSafetensors, sliceRows, TrainingSession } from "../js/optgraph.mjs";

ort.env.wasm.wasmPaths = new URL("./node_modules/onnxruntime-web/dist/", import.meta.url).href;
ort.env.wasm.numThreads = self.crossOriginIsolated ? 0 : 1; // 0: onnxruntime-web picks; threads need isolation

const query = new URLSearchParams(location.search);
const form = document.getElementById("settings");
const status = document.getElementById("status");
for (const [key, value] of query) if (form.elements[key]) form.elements[key].value = value;

async function fetchBytes(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

async function loadSession(base) {
  const manifest = JSON.parse(new TextDecoder().decode(await fetchBytes(new URL("manifest.json", base))));
  checkManifest(manifest); // before fetching any file it names
  const graphs = {};
  for (const [name, spec] of Object.entries(manifest.graphs)) graphs[name] = await fetchBytes(new URL(spec.file, base));
  const checkpoint = await fetchBytes(new URL("checkpoint.safetensors", base));
  return TrainingSession.create(ort, { manifest, graphs, checkpoint }, { executionProviders: ["wasm"] });
}

function plot(losses) {
  const canvas = document.getElementById("plot");
  const g = canvas.getContext("2d");
  const [w, h, pad] = [canvas.width, canvas.height, 40];
  g.clearRect(0, 0, w, h);
  g.strokeStyle = "#888";
  g.strokeRect(pad, 10, w - pad - 10, h - pad - 10);
  if (losses.length === 0) return;
  const top = Math.max(...losses);
  const bottom = Math.min(0, ...losses);
  const x = (i) => pad + ((w - pad - 10) * i) / Math.max(1, losses.length - 1);
  const y = (v) => 10 + ((h - pad - 10) * (top - v)) / (top - bottom || 1);
  g.strokeStyle = "#1f6fd0";
  g.lineWidth = 2;
  g.beginPath();
  losses.forEach((v, i) => (i ? g.lineTo(x(i), y(v)) : g.moveTo(x(i), y(v))));
  g.stroke();
  g.fillStyle = "#222";
  g.fillText(top.toPrecision(3), 2, 16);
  g.fillText(bottom.toPrecision(3), 2, h - pad);
  g.fillText(`step ${losses.length}`, w - 70, h - pad + 18);
  g.fillText("loss", pad + 4, 24);
}

async function train(settings) {
  const started = performance.now();
  const base = new URL(settings.artifact, location.href);
  status.textContent = `loading ${base}`;
  const session = await loadSession(base);
  const data = readSafetensors(await fetchBytes(new URL(settings.data, location.href)), settings.data);
  for (const name of session.dataNames) {
    if (!data[name]) throw new Error(`${settings.data}: no tensor '${name}' (the model takes ${session.dataNames.join(", ")})`);
  }
  const samples = data[session.dataNames[0]].dims[0];
  const [losses, lrs] = [[], []];
  training: for (let epoch = 0; epoch < settings.epochs; epoch++) {
    let total = 0;
    let batches = 0;
    for (let start = 0; start < samples; start += settings.batch) {
      if (losses.length >= settings.steps) break training;
      const end = Math.min(start + settings.batch, samples);
      const batch = Object.fromEntries(session.dataNames.map((name) => [name, sliceRows(ort, data[name], start, end)]));
      const loss = await session.step(batch);
      losses.push(loss);
      lrs.push(session.lr);
      total += loss;
      batches += 1;
      plot(losses);
      status.textContent = `epoch ${epoch + 1}  step ${losses.length}  loss ${loss.toFixed(4)}  lr ${session.lr.map((v) => v.toPrecision(3))}`;
      await new Promise((resolve) => setTimeout(resolve, 0)); // let the page paint
    }
    await session.schedulerStep(total / batches);
  }
  const seconds = (performance.now() - started) / 1000;
  status.textContent += `\ndone: ${losses.length} steps in ${seconds.toFixed(1)} s`;
  return { losses, lrs, seconds, threads: ort.env.wasm.numThreads };
}

async function run() {
  const f = form.elements;
  const settings = {
    artifact: f.artifact.value,
    data: f.data.value,
    batch: Number(f.batch.value),
    epochs: Number(f.epochs.value),
    steps: query.has("steps") ? Number(query.get("steps")) : Infinity,
  };
  let report;
  try {
    report = await train(settings);
  } catch (error) {
    status.textContent = `error: ${error.message ?? error}`;
    report = { error: String(error.stack ?? error) };
  }
  if (query.has("report")) await fetch(query.get("report"), { method: "POST", body: JSON.stringify(report) });
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  run();
});
if (query.get("autorun") === "1") run();
