// Test helper: writes safetensors files and small Hugging Face–style MoE checkpoints (config.json +
// one file or index-listed shards), independently of experts/safetensors.ts (which they test).
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

export type StDtype = 'F32' | 'F16' | 'BF16'

export interface StTensor {
  dtype: StDtype
  shape: number[]
  data: Float32Array
}

/** Deterministic uniform/normal numbers for test data (mulberry32 + Box–Muller). */
export function testRng(seed: number) {
  let s = seed >>> 0
  const u = () => {
    s = (s + 0x6d2b79f5) >>> 0
    let z = s
    z = Math.imul(z ^ (z >>> 15), z | 1)
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61)
    return ((z ^ (z >>> 14)) >>> 0) / 4294967296
  }
  const normal = () => Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u())
  return { u, normal }
}

/** f32 → f16 bits, round to nearest even (normal and subnormal range; test values stay in range). */
function toF16(x: number): number {
  const f = new Float32Array([x])
  const b = new Uint32Array(f.buffer)[0]
  const sign = (b >>> 16) & 0x8000
  const exp = ((b >>> 23) & 0xff) - 127 + 15
  let mant = b & 0x7fffff
  if (exp >= 31) return sign | 0x7c00
  if (exp <= 0) {
    if (exp < -10) return sign
    mant |= 0x800000
    const shift = 14 - exp
    const half = 1 << (shift - 1)
    let m = mant >>> shift
    const rest = mant & ((1 << shift) - 1)
    if (rest > half || (rest === half && m & 1)) m++
    return sign | m
  }
  let m = mant >>> 13
  const rest = mant & 0x1fff
  let e = exp
  if (rest > 0x1000 || (rest === 0x1000 && m & 1)) {
    m++
    if (m === 0x400) {
      m = 0
      e++
    }
  }
  return e >= 31 ? sign | 0x7c00 : sign | (e << 10) | m
}

function fromF16(h: number): number {
  const s = h & 0x8000 ? -1 : 1
  const e = (h >> 10) & 0x1f
  const m = h & 0x3ff
  if (e === 0) return s * m * Math.pow(2, -24)
  return s * (1 + m / 1024) * Math.pow(2, e - 15)
}

function toBf16Bits(x: number): number {
  const f = new Float32Array([x])
  const u = new Uint32Array(f.buffer)[0]
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff
}

/** What a tensor holds once stored in `dtype`, as fp32 (so tests compare with what the file has). */
export function storedValues(t: StTensor): Float32Array {
  if (t.dtype === 'F32') return Float32Array.from(t.data)
  if (t.dtype === 'BF16') return Float32Array.from(t.data, (x) => new Float32Array(new Uint32Array([toBf16Bits(x) << 16]).buffer)[0])
  return Float32Array.from(t.data, (x) => fromF16(toF16(x)))
}

function encode(t: StTensor): Uint8Array {
  if (t.dtype === 'F32') return new Uint8Array(Float32Array.from(t.data).buffer)
  const out = new Uint16Array(t.data.length)
  for (let i = 0; i < out.length; i++) out[i] = t.dtype === 'BF16' ? toBf16Bits(t.data[i]) : toF16(t.data[i])
  return new Uint8Array(out.buffer)
}

/** Serialises tensors to safetensors bytes (header padded with spaces to 8 bytes, as the reference writer does). */
export function safetensorsBytes(tensors: Record<string, StTensor>, metadata?: Record<string, string>): Uint8Array {
  const header: Record<string, unknown> = {}
  if (metadata) header.__metadata__ = metadata
  const parts: Uint8Array[] = []
  let off = 0
  for (const [name, t] of Object.entries(tensors)) {
    const bytes = encode(t)
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + bytes.length] }
    parts.push(bytes)
    off += bytes.length
  }
  let json = JSON.stringify(header)
  while ((8 + Buffer.byteLength(json)) % 8) json += ' '
  const hb = Buffer.from(json)
  const out = new Uint8Array(8 + hb.length + off)
  new DataView(out.buffer).setBigUint64(0, BigInt(hb.length), true)
  out.set(hb, 8)
  let p = 8 + hb.length
  for (const part of parts) {
    out.set(part, p)
    p += part.length
  }
  return out
}

export function writeSafetensors(path: string, tensors: Record<string, StTensor>, metadata?: Record<string, string>): void {
  writeFileSync(path, safetensorsBytes(tensors, metadata))
}

export type Arch = 'mixtral' | 'qwen2_moe' | 'olmoe' | 'deepseek'

export interface CheckpointSpec {
  arch: Arch
  hidden: number
  inner: number
  experts: number
  topK: number
  layers: number
  dtype?: StDtype
  /** Shards (with an index) when > 1. Defaults to 1. */
  shards?: number
  seed?: number
  normTopkProb?: boolean
  /** qwen2_moe: shared_expert_intermediate_size; deepseek: n_shared_experts (× inner). */
  shared?: number
  /** deepseek: first_k_dense_replace. */
  firstDense?: number
  /** Write expert weights already pruned to this pattern (2:4 or 75%) by zeroing. */
  prePrune?: (w: Float32Array, rows: number, cols: number) => Float32Array
}

/** The weights a checkpoint holds (fp32 after the file's dtype rounding), keyed by tensor name. */
export type CheckpointWeights = Map<string, { rows: number; cols: number; data: Float32Array }>

/** Writes a small MoE checkpoint; returns what each MoE tensor holds and the config. */
export function writeCheckpoint(dir: string, spec: CheckpointSpec): { weights: CheckpointWeights; config: Record<string, unknown>; names: ReturnType<typeof tensorNames> } {
  mkdirSync(dir, { recursive: true })
  const r = testRng(spec.seed ?? 1)
  const dtype = spec.dtype ?? 'F32'
  const D = spec.hidden
  const F = spec.inner
  const tensors: Record<string, StTensor> = {}
  const weights: CheckpointWeights = new Map()
  const add = (name: string, rows: number, cols: number, scale: number, moe = true, dt: StDtype = dtype) => {
    let data: Float32Array = Float32Array.from({ length: rows * cols }, () => scale * r.normal())
    if (moe && spec.prePrune && !name.includes('gate.weight') && !name.includes('shared_expert_gate')) data = spec.prePrune(data, rows, cols)
    const t = { dtype: dt, shape: [rows, cols], data }
    tensors[name] = t
    if (moe) weights.set(name, { rows, cols, data: storedValues(t) })
  }
  const names = tensorNames(spec.arch)
  add('model.embed_tokens.weight', 100, D, 1, false)
  const firstDense = spec.firstDense ?? 0
  for (let l = 0; l < spec.layers; l++) {
    add(`model.layers.${l}.self_attn.q_proj.weight`, D, D, 0.1, false)
    add(`model.layers.${l}.input_layernorm.weight`, 1, D, 1, false)
    if (l < firstDense) {
      add(`model.layers.${l}.mlp.gate_proj.weight`, F, D, 0.1, false)
      continue
    }
    add(names.gate(l), spec.experts, D, 1 / Math.sqrt(D))
    for (let e = 0; e < spec.experts; e++) {
      add(names.expert(l, e, 'gate'), F, D, 1 / Math.sqrt(D))
      add(names.expert(l, e, 'up'), F, D, 1 / Math.sqrt(D))
      add(names.expert(l, e, 'down'), D, F, 1 / Math.sqrt(F))
    }
    if (spec.shared && names.shared) {
      const SF = spec.arch === 'deepseek' ? spec.shared * F : spec.shared
      add(names.shared(l, 'gate'), SF, D, 1 / Math.sqrt(D))
      add(names.shared(l, 'up'), SF, D, 1 / Math.sqrt(D))
      add(names.shared(l, 'down'), D, SF, 1 / Math.sqrt(SF))
      if (spec.arch === 'qwen2_moe') add(names.sharedGate(l), 1, D, 1 / Math.sqrt(D))
    }
  }
  add('lm_head.weight', 100, D, 0.1, false)
  const config: Record<string, unknown> = {
    model_type: spec.arch,
    hidden_size: D,
    num_hidden_layers: spec.layers,
    vocab_size: 100,
    num_experts_per_tok: spec.topK,
    hidden_act: 'silu',
    torch_dtype: 'float32',
  }
  if (spec.arch === 'mixtral') Object.assign(config, { num_local_experts: spec.experts, intermediate_size: F })
  if (spec.arch === 'olmoe') Object.assign(config, { num_experts: spec.experts, intermediate_size: F })
  if (spec.arch === 'qwen2_moe') Object.assign(config, { num_experts: spec.experts, moe_intermediate_size: F, intermediate_size: 4 * F, shared_expert_intermediate_size: spec.shared ?? 0, decoder_sparse_step: 1, mlp_only_layers: [] })
  if (spec.arch === 'deepseek') Object.assign(config, { n_routed_experts: spec.experts, moe_intermediate_size: F, intermediate_size: 4 * F, n_shared_experts: spec.shared ?? 0, first_k_dense_replace: firstDense, moe_layer_freq: 1 })
  if (spec.normTopkProb !== undefined) config.norm_topk_prob = spec.normTopkProb
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2))
  const shards = spec.shards ?? 1
  const entries = Object.entries(tensors)
  if (shards === 1) {
    writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' })
  } else {
    const weightMap: Record<string, string> = {}
    const per = Math.ceil(entries.length / shards)
    for (let s = 0; s < shards; s++) {
      const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`
      const part = Object.fromEntries(entries.slice(s * per, (s + 1) * per))
      for (const k of Object.keys(part)) weightMap[k] = file
      writeSafetensors(join(dir, file), part, { format: 'pt' })
    }
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 0 }, weight_map: weightMap }, null, 2))
  }
  return { weights, config, names }
}

export function tensorNames(arch: Arch) {
  if (arch === 'mixtral') {
    const w = { gate: 'w1', up: 'w3', down: 'w2' } as const
    return {
      gate: (l: number) => `model.layers.${l}.block_sparse_moe.gate.weight`,
      expert: (l: number, e: number, m: 'gate' | 'up' | 'down') => `model.layers.${l}.block_sparse_moe.experts.${e}.${w[m]}.weight`,
      shared: undefined as undefined | ((l: number, m: string) => string),
      sharedGate: (l: number) => `none.${l}`,
    }
  }
  const stem = arch === 'qwen2_moe' ? 'shared_expert' : 'shared_experts'
  return {
    gate: (l: number) => `model.layers.${l}.mlp.gate.weight`,
    expert: (l: number, e: number, m: 'gate' | 'up' | 'down') => `model.layers.${l}.mlp.experts.${e}.${m}_proj.weight`,
    shared: arch === 'olmoe' ? undefined : (l: number, m: string) => `model.layers.${l}.mlp.${stem}.${m}_proj.weight`,
    sharedGate: (l: number) => `model.layers.${l}.mlp.shared_expert_gate.weight`,
  }
}
