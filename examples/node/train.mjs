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
// checkpoint, the manifest's sha256 of each) that optgraph.TrainingSession in
// Python resumes. The files a manifest names must be plain names inside the
// artifact directory (checkManifest), so nothing is read or written elsewhere;
// their sha256, where the manifest lists them, must match.

import { createHash } from "node:crypto";
import {
  lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync,
} from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import ort from "onnxruntime-node";
import {
  CHECKPOINT_FILE,
  checkManifest,
  MANIFEST_FILE,
  readSafetensors,
  SHA256_KEY,
  sliceRows,
  TrainingSession,
} from "../js/optgraph.mjs";

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

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

/** The bytes of a file of the artifact, checked against the manifest's sha256 where it lists one. */
function readChecked(manifest, file) {
  const bytes = readFileSync(join(artifactDir, file));
  const expected = manifest[SHA256_KEY]?.[file];
  if (expected !== undefined && sha256(bytes) !== String(expected).toLowerCase()) {
    throw new Error(`${join(artifactDir, file)}: contents do not match the sha256 in ${MANIFEST_FILE} (corrupt or edited)`);
  }
  return bytes;
}

const manifest = JSON.parse(readFileSync(join(artifactDir, MANIFEST_FILE), "utf8"));
checkManifest(manifest); // before any file it names is opened
const graphs = Object.fromEntries(Object.entries(manifest.graphs).map(([name, spec]) => [name, readChecked(manifest, spec.file)]));
const checkpoint = readChecked(manifest, CHECKPOINT_FILE);
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
  // the graphs as read (and checked), the trained checkpoint, and a manifest whose sha256 lists what was written
  const files = Object.fromEntries(Object.entries(manifest.graphs).map(([name, spec]) => [spec.file, graphs[name]]));
  files[CHECKPOINT_FILE] = session.checkpoint();
  const digests = Object.fromEntries(Object.entries(files).map(([file, bytes]) => [file, sha256(bytes)]));
  files[MANIFEST_FILE] = new TextEncoder().encode(JSON.stringify({ ...manifest, [SHA256_KEY]: digests }, null, 1));
  saveDirectory(resolve(options.save), files);
}

// Write a fresh staging folder beside the target and rename it into place: nothing is written through a
// link already in the target, and only an empty folder or an optgraph artifact (nothing but its own files)
// is replaced, as optgraph's Python save does.
function saveDirectory(target, files) {
  const present = (path) => lstatSync(path, { throwIfNoEntry: false }) !== undefined; // links count, dangling too
  if (present(target)) {
    if (lstatSync(target).isSymbolicLink() || !lstatSync(target).isDirectory()) {
      throw new Error(`${target}: exists and is not a directory; refusing to replace it`);
    }
    const entries = readdirSync(target);
    let known = null;
    if (entries.includes(MANIFEST_FILE) && lstatSync(join(target, MANIFEST_FILE)).isFile()) {
      try {
        const old = JSON.parse(readFileSync(join(target, MANIFEST_FILE), "utf8"));
        if (old?.format === "optgraph-artifact") {
          known = new Set([MANIFEST_FILE, CHECKPOINT_FILE, ...Object.values(old.graphs ?? {}).map((g) => g?.file)]);
        }
      } catch {}
    }
    const foreign = entries.filter((name) => !known?.has(name) || !lstatSync(join(target, name)).isFile());
    if (entries.length > 0 && foreign.length > 0) {
      throw new Error(`${target}: holds ${foreign.slice(0, 5).join(", ")}, which saving would delete; choose an empty or new folder`);
    }
  }
  mkdirSync(dirname(target), { recursive: true });
  const staging = mkdtempSync(join(dirname(target), `.${basename(target)}.tmp-`));
  for (const [file, bytes] of Object.entries(files)) writeFileSync(join(staging, file), bytes, { flag: "wx" });
  const old = present(target) ? `${staging}.old` : null;
  if (old) renameSync(target, old);
  renameSync(staging, target);
  if (old) rmSync(old, { recursive: true, force: true });
}
