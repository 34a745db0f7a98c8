// One contract between the runtime and its two expert backends (CPU pool, GPU): the work of one
// layer, described by byte offsets into the shared arena. Both backends compute, for each expert e
// and each of its selected rows i:
//     out[outRows[i]] = scales[i] · FFN_e(hidden[tokens[i]])        (overwrite, fp32)
// so the runtime can hand any subset of a layer's experts to either backend, and rerun a failed
// backend's share on the other with the same result.

export interface ExpertWork {
  /** Index into the layer's experts, or into its shared experts when `shared` is set. */
  expert: number
  shared?: boolean
  /** Selected rows. */
  count: number
  /** Byte offset of int32[count]: rows of `hidden`. */
  tokens: number
  /** Byte offset of int32[count]: rows of `out`. */
  outRows: number
  /** Byte offset of f32[count] routing weights; absent means 1. */
  scales?: number
}

export interface LayerWork {
  layer: number
  /** fp32 [rows × D] at a byte offset in the arena. */
  hidden: { offset: number; rows: number }
  /** fp32 [rows × D] at a byte offset in the arena. */
  out: { offset: number; rows: number }
  experts: ExpertWork[]
}

export interface ExpertBackend {
  readonly kind: 'cpu' | 'gpu'
  /** Resolves when `out` holds the results (with what the backend measured, if anything). */
  run(work: LayerWork, signal?: AbortSignal): Promise<unknown>
}
