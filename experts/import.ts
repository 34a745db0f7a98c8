// `hetmoe import`: the expert layers of a Hugging Face MoE checkpoint (safetensors + config.json) into
// a model store. Only MoE tensors are read — routed experts, the router gate, shared experts — one
// matrix at a time, so memory stays at a few matrices whatever the model's size. Dense checkpoints
// are magnitude-pruned to the target format (error per matrix in the manifest); checkpoints already
// in the pattern are compressed losslessly. The store is written atomically (store-writer.ts).
//
// Naming conventions (HF `nn.Linear` weights are [out × in], the store's row-major [rows × cols]):
//   mixtral                 model.layers.L.block_sparse_moe.experts.E.{w1 = gate, w3 = up, w2 = down}.weight
//                           model.layers.L.block_sparse_moe.gate.weight                       [E × D]
//   qwen2_moe, qwen3_moe,   model.layers.L.mlp.experts.E.{gate_proj, up_proj, down_proj}.weight
//   olmoe, deepseek(_v2)    model.layers.L.mlp.gate.weight                                    [E × D]
//   shared experts          qwen2_moe: mlp.shared_expert.*_proj (+ mlp.shared_expert_gate.weight [1 × D])
//                           deepseek:  mlp.shared_experts.*_proj (n_shared_experts merged into one MLP)
import { readFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { HetmoeError } from '../runtime/errors.js'
import { version } from '../runtime/version.js'
import { compress, followsPattern, prune } from './formats.js'
import type { ExpertRef, LayerRef, MatrixRef, ModelManifest, WeightDtype, WeightFormat } from './manifest.js'
import { Checkpoint } from './safetensors.js'
import { writeStore, type StoreWriter } from './store-writer.js'

export type Architecture = 'mixtral' | 'qwen2_moe' | 'qwen3_moe' | 'olmoe' | 'deepseek'

export interface ImportOptions {
  out: string
  /** Defaults to 'dense'. */
  format?: WeightFormat
  /** Defaults to 'bf16'. */
  dtype?: WeightDtype
  /** Replace an existing directory at `out`. Defaults to false. */
  overwrite?: boolean
  /** Called after each matrix: matrices done, matrices in all, and the tensor just written. */
  onProgress?: (done: number, total: number, tensor: string) => void
}

/** What the importer takes from config.json. */
export interface MoeConfig {
  arch: Architecture
  modelType: string
  hidden: number
  layers: number
  vocabSize: number
  experts: number
  inner: number
  topK: number
  normalize: boolean
  /** Layer indices that have MoE blocks. */
  moeLayers: number[]
  /** Inner size of the (one, merged) shared expert; 0 when none. */
  sharedInner: number
  /** Qwen2-MoE's sigmoid gate on the shared expert. */
  sharedGate: boolean
}

function configError(file: string, field: string, message: string): never {
  throw new HetmoeError('BAD_MODEL', `${file}: ${field}: ${message}`)
}

/** Reads and checks config.json. */
export function readMoeConfig(dir: string): MoeConfig {
  const file = join(resolve(dir), 'config.json')
  let c: Record<string, unknown>
  try {
    c = JSON.parse(readFileSync(file, 'utf8'))
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    throw new HetmoeError('BAD_MODEL', `${file}: ${code ? `cannot read (${code})` : `not JSON (${(err as Error).message})`}`, { cause: err })
  }
  if (typeof c !== 'object' || c === null || Array.isArray(c)) configError(file, 'config', 'not a JSON object')
  const int = (field: string, fallback?: number, min = 1): number => {
    const v = c[field] ?? fallback
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > 2 ** 24) configError(file, field, `expected an integer >= ${min}, got ${JSON.stringify(v)}`)
    return v
  }
  const modelType = c.model_type
  const archs: Record<string, Architecture> = { mixtral: 'mixtral', qwen2_moe: 'qwen2_moe', qwen3_moe: 'qwen3_moe', olmoe: 'olmoe', deepseek: 'deepseek', deepseek_v2: 'deepseek' }
  if (typeof modelType !== 'string' || !(modelType in archs)) {
    throw new HetmoeError('UNSUPPORTED', `${file}: model_type ${JSON.stringify(modelType)} is not an MoE architecture hetmoe imports (${Object.keys(archs).join(', ')})`)
  }
  const arch = archs[modelType]
  const act = c.hidden_act ?? 'silu'
  if (act !== 'silu') throw new HetmoeError('UNSUPPORTED', `${file}: hidden_act ${JSON.stringify(act)}: hetmoe imports SwiGLU (silu) experts`)
  const hidden = int('hidden_size')
  const layers = int('num_hidden_layers')
  const vocabSize = int('vocab_size', 0, 0)
  const topK = int('num_experts_per_tok')
  let experts: number
  let inner: number
  let normalize: boolean
  let sharedInner = 0
  let sharedGate = false
  let moeLayers = Array.from({ length: layers }, (_, i) => i)
  const bool = (field: string, fallback: boolean): boolean => {
    const v = c[field] ?? fallback
    if (typeof v !== 'boolean') configError(file, field, `expected true or false, got ${JSON.stringify(v)}`)
    return v
  }
  switch (arch) {
    case 'mixtral':
      experts = int('num_local_experts')
      inner = int('intermediate_size')
      normalize = true // Mixtral renormalises the top-k softmax weights
      break
    case 'olmoe':
      experts = int('num_experts')
      inner = int('intermediate_size')
      normalize = bool('norm_topk_prob', false)
      break
    case 'qwen2_moe':
    case 'qwen3_moe': {
      experts = int('num_experts')
      inner = int('moe_intermediate_size')
      normalize = bool('norm_topk_prob', false) // the HF config classes default to false
      const step = int('decoder_sparse_step', 1)
      const mlpOnly = c.mlp_only_layers ?? []
      if (!Array.isArray(mlpOnly) || mlpOnly.some((x) => !Number.isSafeInteger(x))) configError(file, 'mlp_only_layers', 'expected a list of layer indices')
      moeLayers = moeLayers.filter((i) => !(mlpOnly as number[]).includes(i) && (i + 1) % step === 0)
      if (arch === 'qwen2_moe') {
        sharedInner = int('shared_expert_intermediate_size', 0, 0)
        sharedGate = sharedInner > 0
      }
      break
    }
    case 'deepseek': {
      experts = int('n_routed_experts')
      inner = int('moe_intermediate_size')
      normalize = bool('norm_topk_prob', false)
      const scoring = c.scoring_func ?? 'softmax'
      const method = c.topk_method ?? 'greedy'
      const scale = c.routed_scaling_factor ?? 1
      if (scoring !== 'softmax' || method !== 'greedy' || scale !== 1) {
        throw new HetmoeError('UNSUPPORTED', `${file}: DeepSeek routing with scoring_func=${JSON.stringify(scoring)}, topk_method=${JSON.stringify(method)}, routed_scaling_factor=${JSON.stringify(scale)}: hetmoe's gate routing is softmax top-k (greedy, scale 1)`)
      }
      const first = int('first_k_dense_replace', 0, 0)
      const freq = int('moe_layer_freq', 1)
      moeLayers = moeLayers.filter((i) => i >= first && i % freq === 0)
      sharedInner = int('n_shared_experts', 0, 0) * inner
      break
    }
  }
  if (topK > experts) configError(file, 'num_experts_per_tok', `${topK} is more than the ${experts} experts`)
  if (moeLayers.length === 0) configError(file, 'num_hidden_layers', 'no layer has an MoE block')
  return { arch, modelType, hidden, layers, vocabSize, experts, inner, topK, normalize, moeLayers, sharedInner, sharedGate }
}

interface Names {
  gate: (l: number) => string
  expert: (l: number, e: number, m: 'gate' | 'up' | 'down') => string
  shared?: (l: number, m: 'gate' | 'up' | 'down') => string
  sharedGate?: (l: number) => string
  /** Matches any routed-expert tensor name; groups: layer, expert. */
  expertPattern: RegExp
}

function namesFor(cfg: MoeConfig): Names {
  if (cfg.arch === 'mixtral') {
    const w = { gate: 'w1', up: 'w3', down: 'w2' }
    return {
      gate: (l) => `model.layers.${l}.block_sparse_moe.gate.weight`,
      expert: (l, e, m) => `model.layers.${l}.block_sparse_moe.experts.${e}.${w[m]}.weight`,
      expertPattern: /^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\./,
    }
  }
  const sharedStem = cfg.arch === 'qwen2_moe' ? 'shared_expert' : 'shared_experts'
  return {
    gate: (l) => `model.layers.${l}.mlp.gate.weight`,
    expert: (l, e, m) => `model.layers.${l}.mlp.experts.${e}.${m}_proj.weight`,
    ...(cfg.sharedInner ? { shared: (l: number, m: string) => `model.layers.${l}.mlp.${sharedStem}.${m}_proj.weight` } : {}),
    ...(cfg.sharedGate ? { sharedGate: (l: number) => `model.layers.${l}.mlp.shared_expert_gate.weight` } : {}),
    expertPattern: /^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\./,
  }
}

/** Imports the checkpoint in `dir` into a model store at options.out. */
export async function importCheckpoint(dir: string, options: ImportOptions): Promise<ModelManifest> {
  const format = options.format ?? 'dense'
  const dtype = options.dtype ?? 'bf16'
  const cfg = readMoeConfig(dir)
  const ck = Checkpoint.open(dir)
  try {
    const names = namesFor(cfg)
    checkNoStrayExperts(ck, cfg, names)
    const D = cfg.hidden
    if (format !== 'dense' && (D % 16 !== 0 || cfg.inner % 16 !== 0 || (cfg.sharedInner && cfg.sharedInner % 16 !== 0))) {
      throw new HetmoeError('UNSUPPORTED', `${ck.dir}: ${format} needs hidden and intermediate sizes that are multiples of 16 (D = ${D}, F = ${cfg.inner}${cfg.sharedInner ? `, shared F = ${cfg.sharedInner}` : ''}); import as dense`)
    }
    const perExpert = 3
    const total = cfg.moeLayers.length * (cfg.experts + (cfg.sharedInner ? 1 : 0)) * perExpert
    let done = 0
    let pruned = 0
    let lossless = 0
    function tensor(name: string, shape: number[]): Float32Array
    function tensor(name: string, shape: number[], read: false): undefined
    function tensor(name: string, shape: number[], read = true): Float32Array | undefined {
      const t = ck.tensor(name)
      if (!t) throw new HetmoeError('BAD_MODEL', `${ck.dir}: tensor "${name}" is missing (config.json says ${cfg.experts} experts in layers ${cfg.moeLayers.join(', ')})`)
      if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
        throw new HetmoeError('BAD_MODEL', `${t.file}: tensor "${name}" has shape [${t.shape}], config.json implies [${shape}]`)
      }
      return read ? ck.readFloat32(name) : undefined
    }
    const matrix = (w: StoreWriter, name: string, rows: number, cols: number): MatrixRef => {
      const info = ck.tensor(name)
      if (format === 'dense' && info && ((info.dtype === 'BF16' && dtype === 'bf16') || (info.dtype === 'F32' && dtype === 'fp32'))) {
        // Already in the stored dtype: the bytes go through unchanged (checked for NaN/Inf on the way).
        tensor(name, [rows, cols], false)
        const raw = ck.readRaw(name)
        const values = info.dtype === 'BF16' ? new Uint16Array(raw.buffer) : new Float32Array(raw.buffer)
        const bad = firstNonFinite(values)
        if (bad >= 0) throw new HetmoeError('BAD_MODEL', `${info.file}: tensor "${name}" holds a non-finite value at [${Math.floor(bad / cols)}, ${bad % cols}]`)
        const ref = w.addMatrix({ rows, cols, format, dtype, values })
        options.onProgress?.(++done, total, name)
        return ref
      }
      const data = tensor(name, [rows, cols])
      for (let i = 0; i < data.length; i++) {
        if (!Number.isFinite(data[i])) throw new HetmoeError('BAD_MODEL', `${ck.tensor(name)!.file}: tensor "${name}" holds a non-finite value at [${Math.floor(i / cols)}, ${i % cols}]`)
      }
      let ref: MatrixRef
      if (format === 'dense') ref = w.addMatrix(compress(data, rows, cols, 'dense', dtype))
      else if (followsPattern(data, rows, cols, format)) {
        lossless++
        ref = w.addMatrix(compress(data, rows, cols, format, dtype), 0)
      } else {
        pruned++
        const p = prune(data, rows, cols, format)
        ref = w.addMatrix(compress(p.pruned, rows, cols, format, dtype), p.error)
      }
      options.onProgress?.(++done, total, name)
      return ref
    }
    const expert = (w: StoreWriter, name: (m: 'gate' | 'up' | 'down') => string, F: number): ExpertRef => ({
      gate: matrix(w, name('gate'), F, D),
      up: matrix(w, name('up'), F, D),
      down: matrix(w, name('down'), D, F),
    })
    return await writeStore(options.out, { overwrite: options.overwrite }, async (w) => {
      const layers: LayerRef[] = []
      for (const l of cfg.moeLayers) {
        const gate = tensor(names.gate(l), [cfg.experts, D])
        const routing: LayerRef['routing'] = { kind: 'gate', topK: cfg.topK, normalize: cfg.normalize, weight: w.addBlob(gate) }
        const experts: ExpertRef[] = []
        for (let e = 0; e < cfg.experts; e++) {
          experts.push(expert(w, (m) => names.expert(l, e, m), cfg.inner))
          if (e % 8 === 7) await new Promise((r) => setImmediate(r))
        }
        const sharedExperts = names.shared ? [expert(w, (m) => names.shared!(l, m), cfg.sharedInner)] : []
        const layer: LayerRef = { index: l, experts, sharedExperts, routing }
        if (names.sharedGate) layer.sharedExpertGate = w.addBlob(tensor(names.sharedGate(l), [1, D]))
        layers.push(layer)
      }
      return {
        name: `${cfg.modelType}${format === 'dense' ? '' : `-${format}`}-${dtype}`,
        origin: cfg.arch,
        hiddenSize: D,
        ffnSize: cfg.inner,
        ffn: 'swiglu',
        dtype,
        vocabSize: cfg.vocabSize,
        layers,
        provenance: {
          tool: `hetmoe import ${version}`,
          source: ck.dir,
          modelType: cfg.modelType,
          format,
          matricesPruned: pruned,
          matricesAlreadyInPattern: lossless,
          created: new Date().toISOString(),
        },
      }
    })
  } finally {
    ck.close()
  }
}

/** Expert tensors the config does not account for mean the config and checkpoint disagree. */
function checkNoStrayExperts(ck: Checkpoint, cfg: MoeConfig, names: Names): void {
  const moe = new Set(cfg.moeLayers)
  for (const name of ck.names()) {
    const m = names.expertPattern.exec(name)
    if (!m) continue
    const l = Number(m[1])
    const e = Number(m[2])
    if (!moe.has(l)) throw new HetmoeError('BAD_MODEL', `${ck.tensor(name)!.file}: tensor "${name}": config.json says layer ${l} has no MoE block`)
    if (e >= cfg.experts) throw new HetmoeError('BAD_MODEL', `${ck.tensor(name)!.file}: tensor "${name}": config.json says ${cfg.experts} experts per layer`)
  }
}

/** Index of the first NaN or ±Inf (bf16 bit patterns or fp32 values), or -1. */
function firstNonFinite(values: Uint16Array | Float32Array): number {
  if (values instanceof Float32Array) {
    for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i])) return i
  } else {
    for (let i = 0; i < values.length; i++) if ((values[i] & 0x7f80) === 0x7f80) return i
  }
  return -1
}
