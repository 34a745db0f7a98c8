// Tiny model directories for scheduler tests: a manifest plus a weights.bin holding only routing
// blobs (RRE tables or gate weights). Expert matrices get correctly sized BlobRefs that point past
// the end of weights.bin — the scheduler reads their sizes, never their bytes.
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { pack } from 'msgpackr'
import {
  BLOB_ALIGN, MANIFEST_FILE, WEIGHTS_FILE,
  type BlobRef, type ExpertRef, type FfnKind, type LayerRef, type MatrixRef, type ModelManifest, type WeightDtype, type WeightFormat,
} from '../../experts/manifest.js'
import { matrixBytes } from '../../scheduler/cost-model.js'
import { makeRreTable } from '../../experts/rre-table.js'

export interface TestModelSpec {
  name?: string
  layers: number
  hiddenSize: number
  ffnSize: number
  ffn?: FfnKind
  vocabSize: number
  format?: WeightFormat
  dtype?: WeightDtype
  /** RRE: domains × experts per domain. */
  domains?: number
  expertsPerDomain?: number
  /** Gate: experts and top-k (weights drawn from `seed`). */
  experts?: number
  topK?: number
  seed?: number
}

export function tempDir(prefix = 'hetmoe-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix))
}

/** Writes the model into `dir` (created) and returns its manifest. */
export function writeTestModel(dir: string, spec: TestModelSpec): ModelManifest {
  mkdirSync(dir, { recursive: true })
  const format = spec.format ?? 'dense'
  const dtype = spec.dtype ?? 'bf16'
  const ffn = spec.ffn ?? 'swiglu'
  const blobs: Uint8Array[] = []
  let end = 0
  const addBlob = (bytes: Uint8Array): BlobRef => {
    const offset = end
    blobs.push(bytes)
    end = Math.ceil((offset + bytes.length) / BLOB_ALIGN) * BLOB_ALIGN
    return { offset, bytes: bytes.length }
  }
  const gated = spec.experts !== undefined
  const tables: { seed: number; table: Int32Array }[] = []
  const layers: Omit<LayerRef, 'experts'>[] = []
  for (let l = 0; l < spec.layers; l++) {
    const seed = (spec.seed ?? 1234) + l
    if (gated) {
      const E = spec.experts!
      const w = new Float32Array(E * spec.hiddenSize)
      let x = seed
      for (let i = 0; i < w.length; i++) {
        x = (Math.imul(x, 1664525) + 1013904223) >>> 0
        w[i] = (x / 2 ** 32 - 0.5) * 0.2
      }
      layers.push({ index: l, sharedExperts: [], routing: { kind: 'gate', topK: spec.topK ?? 2, normalize: true, weight: addBlob(new Uint8Array(w.buffer)) } })
    } else {
      const domains = Array.from({ length: spec.domains ?? 2 }, (_, d) => ({ name: `d${d}`, firstExpert: d * (spec.expertsPerDomain ?? 4), numExperts: spec.expertsPerDomain ?? 4 }))
      const table = makeRreTable(seed, domains.map((d) => d.numExperts), spec.vocabSize)
      tables.push({ seed, table })
      layers.push({ index: l, sharedExperts: [], routing: { kind: 'rre', seed, domains, table: addBlob(new Uint8Array(table.buffer)) } })
    }
  }
  const weightsBytes = end
  // Expert matrices: sized as stored, placed (virtually) after the routing blobs.
  let virtualEnd = end
  const matrix = (rows: number, cols: number): MatrixRef => {
    const bytes = matrixBytes(rows, cols, format, dtype)
    const ref: MatrixRef = { rows, cols, format, dtype, values: { offset: virtualEnd, bytes } }
    virtualEnd += Math.ceil(bytes / BLOB_ALIGN) * BLOB_ALIGN
    return ref
  }
  const numExperts = gated ? spec.experts! : (spec.domains ?? 2) * (spec.expertsPerDomain ?? 4)
  const D = spec.hiddenSize
  const F = spec.ffnSize
  const expert = (): ExpertRef => (ffn === 'swiglu' ? { gate: matrix(F, D), up: matrix(F, D), down: matrix(D, F) } : { up: matrix(F, D), down: matrix(D, F) })
  const manifest: ModelManifest = {
    format: 'hetmoe-model', version: 1, name: spec.name ?? 'test-model', origin: 'test', hiddenSize: D, ffnSize: F, ffn, dtype,
    vocabSize: spec.vocabSize,
    layers: layers.map((l) => ({ ...l, experts: Array.from({ length: numExperts }, expert) })),
    weightsBytes, provenance: { tool: 'test/helpers/model-dir.ts' },
  }
  const weights = new Uint8Array(weightsBytes)
  let at = 0
  for (const b of blobs) {
    weights.set(b, at)
    at = Math.ceil((at + b.length) / BLOB_ALIGN) * BLOB_ALIGN
  }
  writeFileSync(join(dir, WEIGHTS_FILE), weights)
  writeFileSync(join(dir, MANIFEST_FILE), pack(manifest))
  return manifest
}

/** The sigma-lite benchmark shape (DESIGN.md): 4 layers × (4 domains × 16), D 2048, F 8192, GeLU, bf16, 32k vocab. */
export const SIGMA_LITE: TestModelSpec = {
  name: 'sigma-lite', layers: 4, domains: 4, expertsPerDomain: 16, hiddenSize: 2048, ffnSize: 8192, ffn: 'gelu', dtype: 'bf16', vocabSize: 32000,
}

/** `count` token ids drawn from Zipf(s) over [0, vocab), rank r ↦ id r (seeded, portable). */
export function zipfTokens(count: number, vocab: number, s = 1.1, seed = 7): Int32Array {
  const cdf = new Float64Array(vocab)
  let sum = 0
  for (let r = 0; r < vocab; r++) cdf[r] = sum += 1 / Math.pow(r + 1, s)
  const out = new Int32Array(count)
  let x = seed >>> 0
  for (let i = 0; i < count; i++) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0
    const u = ((x + 0.5) / 2 ** 32) * sum
    let lo = 0
    let hi = vocab - 1
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (cdf[mid] < u) lo = mid + 1
      else hi = mid
    }
    out[i] = lo
  }
  return out
}
