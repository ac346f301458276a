// Train an optgraph artifact from JavaScript with any onnxruntime binding
// (onnxruntime-node, onnxruntime-web): no Python, no PyTorch.
//
// Everything needed is in the artifact directory: manifest.json says, for
// every graph, which inputs are data and which are state, and which output
// feeds which state input on the next call; checkpoint.safetensors holds the
// state tensors under the same names. See docs/artifact-format.md.

export const FORMAT = "optgraph-artifact";
export const VERSION = 1;
export const MANIFEST_FILE = "manifest.json";
export const CHECKPOINT_FILE = "checkpoint.safetensors";
export const SHA256_KEY = "sha256"; // manifest key: {file name: hex sha256} of the graphs and the checkpoint
// The graphs this session runs. An artifact may hold more (grad_step and update_step, the train step split
// for data-parallel training): a session keeps their bytes, to save them, but does not load them.
export const SESSION_GRAPHS = ["train_step", "scheduler_step", "eval"];

// safetensors dtype -> [onnxruntime tensor type, typed array]
const DTYPES = {
  F64: ["float64", Float64Array],
  F32: ["float32", Float32Array],
  F16: ["float16", Uint16Array],
  I64: ["int64", BigInt64Array],
  I32: ["int32", Int32Array],
  I16: ["int16", Int16Array],
  I8: ["int8", Int8Array],
  U8: ["uint8", Uint8Array],
  BOOL: ["bool", Uint8Array],
};
const SAFETENSORS_DTYPE = Object.fromEntries(Object.entries(DTYPES).map(([key, [type]]) => [type, key]));
const TYPED_ARRAY = Object.fromEntries(Object.values(DTYPES).map(([type, array]) => [type, array]));

/** Parse safetensors bytes into {name: {type, dims, data}}; each data is a fresh, aligned typed array. */
export function readSafetensors(bytes, file = "safetensors file") {
  if (bytes.byteLength < 8) throw new Error(`${file}: too short to be a safetensors file`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = Number(view.getBigUint64(0, true));
  const dataStart = 8 + headerLength;
  if (dataStart > bytes.byteLength) throw new Error(`${file}: header runs past the end of the file`);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, dataStart)));
  const tensors = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const kind = DTYPES[info.dtype];
    if (!kind) throw new Error(`${file}: tensor '${name}' has unsupported dtype ${info.dtype}`);
    const [begin, end] = info.data_offsets;
    if (dataStart + end > bytes.byteLength) throw new Error(`${file}: tensor '${name}' runs past the end of the file`);
    const raw = new Uint8Array(bytes.subarray(dataStart + begin, dataStart + end)); // a copy, so it is aligned
    tensors[name] = { type: kind[0], dims: info.shape, data: new kind[1](raw.buffer, 0, (end - begin) / kind[1].BYTES_PER_ELEMENT) };
  }
  return tensors;
}

/** Serialize {name: {type, dims, data}} (onnxruntime tensors work) as safetensors bytes. */
export function writeSafetensors(tensors) {
  const header = {};
  let offset = 0;
  const names = Object.keys(tensors).sort();
  for (const name of names) {
    const { type, dims, data } = tensors[name];
    header[name] = { dtype: SAFETENSORS_DTYPE[type], shape: Array.from(dims), data_offsets: [offset, offset + data.byteLength] };
    offset += data.byteLength;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((8 + json.length) % 8)) % 8); // the data starts 8-byte aligned
  const headerBytes = new TextEncoder().encode(json);
  const bytes = new Uint8Array(8 + headerBytes.length + offset);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(headerBytes.length), true);
  bytes.set(headerBytes, 8);
  let at = 8 + headerBytes.length;
  for (const name of names) {
    const data = tensors[name].data;
    bytes.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), at);
    at += data.byteLength;
  }
  return bytes;
}

/** Rows [start, end) of a {type, dims, data} tensor along dim 0, as an onnxruntime tensor (no copy). */
export function sliceRows(ort, tensor, start, end) {
  const row = tensor.dims.slice(1).reduce((a, b) => a * b, 1);
  return new ort.Tensor(tensor.type, tensor.data.subarray(start * row, end * row), [end - start, ...tensor.dims.slice(1)]);
}

const isData = (spec) => spec.role === "input" || spec.role === "target";

/** A name of a file directly inside the artifact directory: no folders, no parent, nothing absolute. */
/**
 * Refuse an integer input holding a value outside its manifest `index_range` (a class index or token id
 * the graph would read out of bounds), before anything runs. Only whole-input ranges are checked here;
 * optgraph's Python session also checks ranges limited to a `region`.
 */
function checkIndexRange(input, tensor) {
  const { low, high, also = [], region } = input.index_range;
  if (region) return;
  const values = tensor.data;
  for (let i = 0; i < values.length; i++) {
    const value = Number(values[i]);
    if ((value < low || value >= high) && !also.includes(value)) {
      const extra = also.length ? ` or one of ${JSON.stringify(also)}` : "";
      throw new Error(`${input.role} '${input.name}': value ${value} at flat index ${i} is out of range; expected ${low} <= value < ${high}${extra}`);
    }
  }
}

/**
 * A symbolic dimension of a manifest shape: a symbol ("batch") or an expression of symbols ("batch*seq")
 * with names, ints, + - * // and parentheses (docs/artifact-format.md). Returns {text, symbols, evaluate(sizes)}.
 */
export function parseDim(text) {
  const tokens = [];
  const pattern = /\s*(?:(\d+)|([A-Za-z_][A-Za-z0-9_]*)|(\/\/|[-+*()]))/y;
  let at = 0;
  while (at < text.length) {
    pattern.lastIndex = at;
    const match = pattern.exec(text);
    if (!match) {
      if (text.slice(at).trim() === "") break;
      throw new Error(`symbolic dimension '${text}': unexpected '${text.slice(at).trim()[0]}'`);
    }
    tokens.push(match[1] !== undefined ? { int: Number(match[1]) } : match[2] !== undefined ? { name: match[2] } : { op: match[3] });
    at = pattern.lastIndex;
  }
  let i = 0;
  const fail = () => {
    throw new Error(`symbolic dimension '${text}': unexpected ${i < tokens.length ? JSON.stringify(tokens[i]) : "end"}`);
  };
  const factor = () => {
    const token = tokens[i++] ?? fail();
    if (token.int !== undefined) return () => token.int;
    if (token.name !== undefined) return (sizes) => sizes[token.name];
    if (token.op === "-") {
      const operand = factor();
      return (sizes) => -operand(sizes);
    }
    if (token.op !== "(") (i--, fail());
    const inner = expression();
    if (tokens[i++]?.op !== ")") (i--, fail());
    return inner;
  };
  const binary = (operand, ops) => () => {
    let left = operand();
    while (ops[tokens[i]?.op]) {
      const [apply, right] = [ops[tokens[i++].op], operand()];
      const l = left;
      left = (sizes) => apply(l(sizes), right(sizes));
    }
    return left;
  };
  const term = binary(factor, { "*": (a, b) => a * b, "//": (a, b) => (b === 0 ? NaN : Math.floor(a / b)) });
  const expression = binary(term, { "+": (a, b) => a + b, "-": (a, b) => a - b });
  const evaluate = expression();
  if (i !== tokens.length) fail();
  const symbols = [...new Set(tokens.filter((t) => t.name !== undefined).map((t) => t.name))];
  return { text, symbols, isSymbol: tokens.length === 1 && tokens[0].name !== undefined, evaluate };
}

/**
 * Refuse a batch whose sizes disagree with the manifest, as optgraph's Python session does (optgraph/batch.py):
 * the rank and fixed sizes; one size per symbol across inputs; derived dimensions ("batch*seq") equal to their
 * value; each symbol within its `symbols` bounds. Throws an Error naming the input and the dimension.
 */
export function checkShapes(specs, feeds, bounds = {}) {
  const sizes = {};
  const source = {};
  const derived = [];
  const where = (spec, k) => `${spec.role} '${spec.name}' dimension ${k}`;
  const bind = (name, size, site, how) => {
    const { min, max } = bounds[name] ?? {};
    if ((min !== undefined && size < min) || (max !== undefined && size > max)) {
      const range = min !== undefined && max !== undefined ? `between ${min} and ${max}` : min !== undefined ? `at least ${min}` : `at most ${max}`;
      throw new Error(`${site} (${how}) is ${size}; '${name}' must be ${range}`);
    }
    sizes[name] = size;
    source[name] = site;
  };
  for (const spec of specs) {
    const dims = Array.from(feeds[spec.name].dims);
    if (dims.length !== spec.shape.length || spec.shape.some((d, k) => typeof d === "number" && d !== dims[k])) {
      throw new Error(`${spec.role} '${spec.name}': expected ${spec.dtype} array of shape [${spec.shape.join(", ")}], got shape [${dims.join(", ")}]`);
    }
    spec.shape.forEach((d, k) => {
      if (typeof d === "number") return;
      const expr = parseDim(d);
      if (!expr.isSymbol) derived.push([where(spec, k), expr, dims[k]]);
      else if (!(d in sizes)) bind(d, dims[k], where(spec, k), `'${d}'`);
      else if (sizes[d] !== dims[k]) {
        throw new Error(`${where(spec, k)} ('${d}') is ${dims[k]}, but ${source[d]} ('${d}') is ${sizes[d]}; they must agree`);
      }
    });
  }
  for (let pending = derived, progress = true; pending.length && progress; ) {
    const waiting = [];
    for (const [site, expr, size] of pending) {
      const unknown = expr.symbols.filter((n) => !(n in sizes));
      if (unknown.length === 1) {
        // affine in the unknown: solve from three points
        const at = [0, 1, 2].map((x) => expr.evaluate({ ...sizes, [unknown[0]]: x }));
        const slope = at[1] - at[0];
        const value = (size - at[0]) / slope;
        if (slope !== 0 && at[2] === at[0] + 2 * slope && Number.isInteger(value) && value >= 0) {
          bind(unknown[0], value, site, `'${expr.text}', so '${unknown[0]}' is ${value}`);
        } else waiting.push([site, expr, size]);
      } else if (unknown.length) waiting.push([site, expr, size]);
      else if (expr.evaluate(sizes) !== size) {
        const values = expr.symbols.map((n) => `${n} = ${sizes[n]} from ${source[n]}`).join(", ");
        throw new Error(`${site} is ${size}, expected ${expr.text} = ${expr.evaluate(sizes)} (${values})`);
      }
    }
    progress = waiting.length < pending.length;
    pending = waiting;
  }
}

export function isPlainFileName(file) {
  return typeof file === "string" && file !== "" && file !== "." && file !== ".." && !/[/\\\0]/.test(file);
}

/**
 * Check what a reader relies on before it opens any file a manifest names: the format and version,
 * and graph files that are plain names inside the artifact directory, distinct, and not the manifest
 * or the checkpoint. Throws an Error that names the offending value.
 */
export function checkManifest(manifest) {
  if (manifest?.format !== FORMAT || manifest.version !== VERSION) {
    throw new Error(`${MANIFEST_FILE}: expected format ${FORMAT} version ${VERSION}, got ${manifest?.format} version ${manifest?.version}`);
  }
  if (typeof manifest.graphs !== "object" || manifest.graphs === null) throw new Error(`${MANIFEST_FILE}: no graphs`);
  const files = Object.values(manifest.graphs).map((spec) => spec?.file);
  for (const file of files) {
    if (!isPlainFileName(file)) {
      throw new Error(`${MANIFEST_FILE}: file name ${JSON.stringify(file)} must be a plain name inside the artifact directory (no '/', '\\', '..', NUL)`);
    }
  }
  if (new Set(files).size !== files.length || files.includes(MANIFEST_FILE) || files.includes(CHECKPOINT_FILE)) {
    throw new Error(`${MANIFEST_FILE}: graph files ${JSON.stringify(files)} must be distinct and not ${MANIFEST_FILE}/${CHECKPOINT_FILE}`);
  }
}

/** One artifact being trained: the state lives in onnxruntime tensors and is fed from step to step. */
export class TrainingSession {
  /**
   * @param ort the onnxruntime module (onnxruntime-node or onnxruntime-web)
   * @param artifact {manifest: parsed manifest.json, graphs: {name: Uint8Array}, checkpoint: Uint8Array}
   * @param options onnxruntime session options for every graph
   */
  static async create(ort, { manifest, graphs, checkpoint }, options = {}) {
    checkManifest(manifest);
    const state = new Map();
    for (const [name, t] of Object.entries(readSafetensors(checkpoint, "checkpoint.safetensors"))) {
      state.set(name, new ort.Tensor(t.type, t.data, t.dims));
    }
    const sessions = {};
    for (const name of SESSION_GRAPHS) {
      const spec = manifest.graphs[name];
      if (!spec) throw new Error(`${MANIFEST_FILE}: no graph '${name}'`);
      if (!graphs[name]) throw new Error(`${spec.file}: missing`);
      sessions[name] = await ort.InferenceSession.create(graphs[name], options);
      for (const input of spec.inputs) {
        if (!isData(input) && !state.has(input.name)) throw new Error(`checkpoint.safetensors: no tensor '${input.name}' for ${spec.file}`);
      }
    }
    return new TrainingSession(ort, manifest, sessions, state);
  }

  constructor(ort, manifest, sessions, state) {
    this.ort = ort;
    this.manifest = manifest;
    this.sessions = sessions;
    this.state = state;
  }

  /** The data inputs then targets of train_step, in the order step() takes them. */
  get dataNames() {
    return [...this.manifest.data_inputs, ...this.manifest.targets];
  }

  async #run(graph, data) {
    const spec = this.manifest.graphs[graph];
    const feeds = {};
    for (const input of spec.inputs) {
      feeds[input.name] = isData(input) ? data[input.name] : this.state.get(input.name);
      if (feeds[input.name] === undefined) throw new Error(`${graph}: no value given for ${input.role} '${input.name}'`);
    }
    const batch = spec.inputs.filter(isData);
    checkShapes(batch, feeds, this.manifest.symbols);
    for (const input of batch) {
      if (input.index_range) checkIndexRange(input, feeds[input.name]);
    }
    const results = await this.sessions[graph].run(feeds);
    for (const output of spec.outputs) {
      if (output.feeds) this.state.set(output.feeds, results[output.name]);
    }
    return results;
  }

  /** One optimizer step on a batch {name: ort.Tensor}; returns the loss. Throws if the step was skipped. */
  async step(batch) {
    const results = await this.#run("train_step", batch);
    const loss = Number(results.loss.data[0]);
    if (results.update_applied && !results.update_applied.data[0]) {
      throw new Error(`step skipped: the loss (${loss}), a gradient or a new buffer value is not finite; the state is unchanged`);
    }
    return loss;
  }

  /** Advance the learning-rate schedule by one epoch; ReduceLROnPlateau needs the metric. */
  async schedulerStep(metric) {
    const metricSpec = this.manifest.graphs.scheduler_step.inputs.find(isData);
    const data = {};
    if (metricSpec) {
      if (metric === undefined) throw new Error("schedulerStep() needs the metric for this schedule");
      data[metricSpec.name] = new this.ort.Tensor(metricSpec.dtype, TYPED_ARRAY[metricSpec.dtype].from([metric]), []);
    }
    await this.#run("scheduler_step", data);
  }

  /** The current learning rate of every parameter group. */
  get lr() {
    return Array.from(this.state.get("schedule.lr").data);
  }

  /** The model's outputs {name: ort.Tensor} in eval mode. */
  async eval(inputs) {
    return this.#run("eval", inputs);
  }

  /** The whole state as safetensors bytes: write it as checkpoint.safetensors next to the graphs and manifest. */
  checkpoint() {
    return writeSafetensors(Object.fromEntries(this.state));
  }
}
