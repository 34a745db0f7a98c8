// Test helper: writes a model store from given fp32 dense weights (exact values, for hand-made cases).
import { compress } from '../../experts/formats.js'
import type { DomainGroup, ExpertRef, FfnKind, LayerRef, WeightDtype, WeightFormat } from '../../experts/manifest.js'
import { writeStore } from '../../experts/store-writer.js'

export interface DenseExpertSpec {
  gate?: Float32Array
  up: Float32Array
  down: Float32Array
  /** Defaults to the model's inner size. */
  inner?: number
}

export interface DenseLayerSpec {
  experts: DenseExpertSpec[]
  shared?: DenseExpertSpec[]
  sharedGate?: Float32Array
  routing: { kind: 'gate'; weight: Float32Array; topK: number; normalize: boolean } | { kind: 'rre'; domains: DomainGroup[]; table: Int32Array }
}

export async function writeDenseModel(
  out: string,
  spec: { hidden: number; inner: number; ffn: FfnKind; vocabSize?: number; layers: DenseLayerSpec[]; format?: WeightFormat; dtype?: WeightDtype },
): Promise<void> {
  const D = spec.hidden
  const format = spec.format ?? 'dense'
  const dtype = spec.dtype ?? 'fp32'
  await writeStore(out, {}, (w) => {
    const expert = (e: DenseExpertSpec): ExpertRef => {
      const F = e.inner ?? spec.inner
      return {
        ...(e.gate ? { gate: w.addMatrix(compress(e.gate, F, D, format, dtype)) } : {}),
        up: w.addMatrix(compress(e.up, F, D, format, dtype)),
        down: w.addMatrix(compress(e.down, D, F, format, dtype)),
      }
    }
    const layers: LayerRef[] = spec.layers.map((l, i) => {
      const routing: LayerRef['routing'] =
        l.routing.kind === 'gate'
          ? { kind: 'gate', topK: l.routing.topK, normalize: l.routing.normalize, weight: w.addBlob(l.routing.weight) }
          : { kind: 'rre', seed: 0, domains: l.routing.domains, table: w.addBlob(l.routing.table) }
      const layer: LayerRef = { index: i, experts: l.experts.map(expert), sharedExperts: (l.shared ?? []).map(expert), routing }
      if (l.sharedGate) layer.sharedExpertGate = w.addBlob(l.sharedGate)
      return layer
    })
    return { name: 'hand-made', origin: 'test', hiddenSize: D, ffnSize: spec.inner, ffn: spec.ffn, dtype, vocabSize: spec.vocabSize ?? 0, layers, provenance: {} }
  })
}
