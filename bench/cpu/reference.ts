// Small expert weights written in the store layouts (through experts/formats.ts), their float64
// decode, a float64 reference FFN, and jobs whose every output row is checked against it. Used by
// the CPU tests and by `hetmoe bench cpu --verify` (a correctness pass before timing).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { ExpertRef, FfnKind, MatrixRef, WeightDtype, WeightFormat } from '../../experts/manifest.js'
import { BLOB_ALIGN } from '../../experts/manifest.js'
import { compress, decompress, prune } from '../../experts/formats.js'
import { native } from '../../runtime/native.js'

import { seededRandom as rng } from '../../runtime/token-stream.js'
export { rng }

export function gauss(r: () => number): number {
  return Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r())
}

export interface DecodedExpert {
  gate?: Float64Array
  up: Float64Array
  down: Float64Array
}

export interface TestModel {
  weightsId: number
  experts: ExpertRef[]
  decoded: DecodedExpert[]
  close(): void
}

/** Writes `count` experts (gate/up [F × D], down [D × F]) in one format and dtype, maps the file. */
export function buildModel(spec: { D: number; F: number; ffn: FfnKind; format: WeightFormat; dtype: WeightDtype; count: number; seed: number }): TestModel {
  const r = rng(spec.seed)
  const parts: Uint8Array[] = []
  let at = 0
  const place = (a: ArrayBufferView) => {
    const off = at
    const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength)
    parts.push(bytes)
    const pad = Math.ceil(bytes.length / BLOB_ALIGN) * BLOB_ALIGN - bytes.length
    if (pad) parts.push(new Uint8Array(pad))
    at += bytes.length + pad
    return { offset: off, bytes: bytes.length }
  }
  const matrix = (rows: number, cols: number): { ref: MatrixRef; dense: Float64Array } => {
    const w = new Float32Array(rows * cols)
    for (let i = 0; i < w.length; i++) w[i] = gauss(r) / Math.sqrt(cols)
    const { pruned } = prune(w, rows, cols, spec.format)
    const p = compress(pruned, rows, cols, spec.format, spec.dtype)
    const ref: MatrixRef = { rows, cols, format: spec.format, dtype: spec.dtype, values: place(p.values) }
    if (p.meta) ref.meta = place(p.meta)
    if (p.select) ref.select = place(p.select)
    return { ref, dense: Float64Array.from(decompress(p)) }
  }
  const experts: ExpertRef[] = []
  const decoded: DecodedExpert[] = []
  for (let e = 0; e < spec.count; e++) {
    const gate = spec.ffn === 'swiglu' ? matrix(spec.F, spec.D) : undefined
    const up = matrix(spec.F, spec.D)
    const down = matrix(spec.D, spec.F)
    experts.push({ ...(gate ? { gate: gate.ref } : {}), up: up.ref, down: down.ref })
    decoded.push({ ...(gate ? { gate: gate.dense } : {}), up: up.dense, down: down.dense })
  }
  const dir = mkdtempSync(join(tmpdir(), 'hetmoe-cpu-test-'))
  const path = join(dir, 'weights.bin')
  writeFileSync(path, Buffer.concat(parts.length ? parts : [new Uint8Array(BLOB_ALIGN)]))
  const { id } = native().mapWeights(path)
  return {
    weightsId: id,
    experts,
    decoded,
    close: () => {
      native().unmapWeights(id)
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

/** float64 FFN of one token: down(silu(gate x) * up x) or down(gelu_tanh(up x)). */
export function referenceFfn(e: DecodedExpert, x: Float64Array, D: number, F: number, ffn: FfnKind): Float64Array {
  const h = new Float64Array(F)
  for (let f = 0; f < F; f++) {
    let u = 0
    let g = 0
    for (let d = 0; d < D; d++) {
      u += e.up[f * D + d] * x[d]
      if (e.gate) g += e.gate[f * D + d] * x[d]
    }
    h[f] = ffn === 'swiglu' ? (g / (1 + Math.exp(-g))) * u : 0.5 * u * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (u + 0.044715 * u ** 3)))
  }
  const y = new Float64Array(D)
  for (let d = 0; d < D; d++) {
    let s = 0
    for (let f = 0; f < F; f++) s += e.down[d * F + f] * h[f]
    y[d] = s
  }
  return y
}

export interface PreparedJob {
  job: import('../../runtime/cpu-layer-job.js').CpuLayerJob
  out: Float32Array
  /** Checks every output row against the float64 reference; returns the failures (empty = pass). */
  verify(tol: number): { failures: string[]; worst: number; untouched: boolean }
}

/**
 * Hidden states, selection arrays and a NaN-poisoned output in `arena` for experts with `counts`
 * tokens each (distinct output rows, every other expert with routing scales).
 */
export function prepareJob(
  arena: import('../../runtime/arena.js').Arena,
  model: TestModel,
  spec: { D: number; F: number; ffn: FfnKind; counts: number[]; T: number; seed: number; isa?: import('../../runtime/native.js').CpuIsa },
): PreparedJob {
  const { D, F, ffn, counts, T } = spec
  const r = rng(spec.seed)
  const total = counts.reduce((a, b) => a + b, 0)
  const outRowsTotal = total + 7
  const hidden = arena.lease(T * D * 4).f32(T * D)
  for (let i = 0; i < hidden.length; i++) hidden[i] = gauss(r)
  const out = arena.lease(outRowsTotal * D * 4).f32(outRowsTotal * D)
  out.fill(NaN)
  const perm = Array.from({ length: outRowsTotal }, (_, i) => i).sort(() => r() - 0.5)
  let nextOut = 0
  const views = counts.map((count) => {
    const tok = arena.lease(Math.max(count, 1) * 4)
    const outs = arena.lease(Math.max(count, 1) * 4)
    const sc = arena.lease(Math.max(count, 1) * 4)
    const tv = tok.i32(count)
    const ov = outs.i32(count)
    const sv = sc.f32(count)
    for (let i = 0; i < count; i++) {
      tv[i] = Math.floor(r() * T)
      ov[i] = perm[nextOut++]
      sv[i] = 0.5 + r()
    }
    return { tok, outs, sc, tv, ov, sv }
  })
  const job = {
    weightsId: model.weightsId,
    ffn,
    hiddenSize: D,
    ffnSize: F,
    hidden: { offset: hidden.byteOffset, rows: T },
    out: { offset: out.byteOffset, rows: outRowsTotal },
    experts: views.map((v, e) => ({
      matrices: model.experts[e],
      tokens: { offset: v.tok.offset, count: counts[e] },
      outRows: { offset: v.outs.offset },
      ...(e % 2 === 1 ? { scales: { offset: v.sc.offset } } : {}),
    })),
    ...(spec.isa ? { isa: spec.isa } : {}),
  }
  const verify = (tol: number) => {
    const failures: string[] = []
    const written = new Set<number>()
    let worst = 0
    views.forEach((v, e) => {
      for (let i = 0; i < v.tv.length; i++) {
        const x = Float64Array.from(hidden.subarray(v.tv[i] * D, (v.tv[i] + 1) * D))
        const ref = referenceFfn(model.decoded[e], x, D, F, ffn)
        const s = e % 2 === 1 ? v.sv[i] : 1
        const row = v.ov[i]
        written.add(row)
        let num = 0
        let den = 0
        let finite = true
        for (let d = 0; d < D; d++) {
          const got = out[row * D + d]
          if (!Number.isFinite(got)) finite = false
          num += (got - s * ref[d]) ** 2
          den += (s * ref[d]) ** 2
        }
        const rel = finite ? Math.sqrt(num / den) : Infinity
        worst = Math.max(worst, rel)
        if (!(rel <= tol)) failures.push(`expert ${e} (n=${v.tv.length}) token ${i}: relative error ${rel} > ${tol}`)
      }
    })
    let untouched = true
    for (let row = 0; row < outRowsTotal; row++)
      if (!written.has(row)) for (let d = 0; d < D; d++) if (!Number.isNaN(out[row * D + d])) untouched = false
    return { failures, worst, untouched }
  }
  return { job, out, verify }
}
