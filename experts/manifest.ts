// The model store's manifest: `<model-dir>/manifest.msgpack` (msgpackr) beside `<model-dir>/weights.bin`.
// Every byte range below points into weights.bin and starts on a 4096-byte boundary, so the file can
// be memory-mapped once and read in place by every thread (native/addon/weights_map.h). The weight
// layouts themselves are defined in native/formats/layout.h.

export const MANIFEST_FILE = 'manifest.msgpack'
export const WEIGHTS_FILE = 'weights.bin'
export const MANIFEST_VERSION = 1
export const BLOB_ALIGN = 4096

export type WeightFormat = 'dense' | '2:4' | '75%'
export type WeightDtype = 'bf16' | 'fp32'
/** SwiGLU: out = down(silu(gate x) * up x). GeLU (PanGu-Σ): out = down(gelu(up x)), tanh approximation. */
export type FfnKind = 'swiglu' | 'gelu'

export interface BlobRef {
  /** Byte offset in weights.bin, a multiple of BLOB_ALIGN. */
  offset: number
  bytes: number
}

export interface MatrixRef {
  /** Outputs. */
  rows: number
  /** Inputs. */
  cols: number
  format: WeightFormat
  dtype: WeightDtype
  values: BlobRef
  /** 2:4 and 75%: uint32 metadata. */
  meta?: BlobRef
  /** 75%: uint8 row selection per (row pair, 128-column chunk). */
  select?: BlobRef
  /** ‖W − pruned W‖ / ‖W‖ when the matrix was pruned on import (0 when it was already in the pattern). */
  pruneError?: number
}

/** gate/up: [F × D]; down: [D × F]. GeLU experts have no gate. */
export interface ExpertRef {
  gate?: MatrixRef
  up: MatrixRef
  down: MatrixRef
}

export interface DomainGroup {
  name: string
  firstExpert: number
  numExperts: number
}

/** Random Routed Experts (PanGu-Σ): expert = domains[d].firstExpert + table[d][tokenId]. Top-1, weight 1. */
export interface RreRouting {
  kind: 'rre'
  seed: number
  domains: DomainGroup[]
  /** int32 [numDomains × vocabSize], values in [0, domains[d].numExperts). */
  table: BlobRef
}

/** Learned gate: softmax over (gate · x), top-k; `normalize` renormalises the k weights to sum 1. */
export interface GateRouting {
  kind: 'gate'
  topK: number
  normalize: boolean
  /** fp32 [numExperts × D]. */
  weight: BlobRef
}

export interface LayerRef {
  index: number
  experts: ExpertRef[]
  /** Always-on dense experts (Qwen2-MoE / DeepSeek-MoE shared experts); weight 1, or sigmoid(sharedExpertGate · x) where that is present. */
  sharedExperts: ExpertRef[]
  routing: RreRouting | GateRouting
  /**
   * Qwen2-MoE only: fp32 [D]; the shared experts' sum is scaled by sigmoid(sharedExpertGate · x) per
   * token (input-dependent, so it cannot be folded into the weights). Absent: weight 1.
   */
  sharedExpertGate?: BlobRef
}

export interface ModelManifest {
  format: 'hetmoe-model'
  version: typeof MANIFEST_VERSION
  name: string
  /** The synth preset or the imported architecture (mixtral, qwen2_moe, olmoe, deepseek). */
  origin: string
  hiddenSize: number
  ffnSize: number
  ffn: FfnKind
  dtype: WeightDtype
  vocabSize: number
  layers: LayerRef[]
  /** Bytes of weights.bin. */
  weightsBytes: number
  /** Free-form provenance: seed, source checkpoint, tool version. */
  provenance: Record<string, string | number>
}
