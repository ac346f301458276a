// Train an optgraph artifact with onnxruntime-node.
//
//   node train.mjs ARTIFACT_DIR DATA.safetensors [--batch-size 32] [--epochs 1] [--steps N]
//                  [--threads 1] [--save DIR]
//
// DATA.safetensors holds one tensor per data input and target of the model,
// named as in manifest.json (data_inputs, targets), with the samples along
// dim 0. Batches are taken in order; the schedule advances after every epoch
// (ReduceLROnPlateau gets the epoch's mean loss). Prints one JSON line per
// step. --save writes a complete artifact (graphs, manifest, the trained
// checkpoint) that optgraph.TrainingSession in Python resumes.

import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import ort from "onnxruntime-node";
import { readSafetensors, sliceRows, TrainingSession } from "../js/optgraph.mjs";

const { values: options, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    "batch-size": { type: "string", default: "32" },
    epochs: { type: "string", default: "1" },
    steps: { type: "string" },
    threads: { type: "string", default: "1" },
    save: { type: "string" },
  },
});
if (positionals.length !== 2) {
  console.error("usage: node train.mjs ARTIFACT_DIR DATA.safetensors [--batch-size B] [--epochs E] [--steps N] [--threads T] [--save DIR]");
  process.exit(2);
}
const [artifactDir, dataFile] = positionals;
const batchSize = Number(options["batch-size"]);
const epochs = Number(options.epochs);
const maxSteps = options.steps === undefined ? Infinity : Number(options.steps);

const manifest = JSON.parse(readFileSync(join(artifactDir, "manifest.json"), "utf8"));
const graphs = Object.fromEntries(Object.entries(manifest.graphs).map(([name, spec]) => [name, readFileSync(join(artifactDir, spec.file))]));
const checkpoint = readFileSync(join(artifactDir, "checkpoint.safetensors"));
const sessionOptions = { intraOpNumThreads: Number(options.threads), interOpNumThreads: 1 };
const session = await TrainingSession.create(ort, { manifest, graphs, checkpoint }, sessionOptions);

const data = readSafetensors(readFileSync(dataFile), dataFile);
for (const name of session.dataNames) {
  if (!data[name]) throw new Error(`${dataFile}: no tensor '${name}' (the model takes ${session.dataNames.join(", ")})`);
}
const samples = data[session.dataNames[0]].dims[0];

let step = 0;
training: for (let epoch = 0; epoch < epochs; epoch++) {
  let total = 0;
  let batches = 0;
  for (let start = 0; start < samples; start += batchSize) {
    if (step >= maxSteps) break training;
    const end = Math.min(start + batchSize, samples);
    const batch = Object.fromEntries(session.dataNames.map((name) => [name, sliceRows(ort, data[name], start, end)]));
    const loss = await session.step(batch);
    console.log(JSON.stringify({ step, epoch, loss, lr: session.lr }));
    total += loss;
    batches += 1;
    step += 1;
  }
  await session.schedulerStep(total / batches);
}

if (options.save) {
  mkdirSync(options.save, { recursive: true });
  for (const spec of Object.values(manifest.graphs)) copyFileSync(join(artifactDir, spec.file), join(options.save, spec.file));
  writeFileSync(join(options.save, "manifest.json"), JSON.stringify(manifest, null, 1));
  writeFileSync(join(options.save, "checkpoint.safetensors"), session.checkpoint());
}
