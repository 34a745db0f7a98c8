// Bench weights: random experts written straight into a weights file in the store layouts
// (native/formats/layout.h: values, valid 2:4 metadata, 75% row selections), 4096-byte aligned blobs
// as experts/manifest.ts requires, then memory-mapped like a real model.
import { closeSync, existsSync, mkdtempSync, openSync, rmSync, statfsSync, writeSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { ExpertRef, FfnKind, MatrixRef, WeightDtype, WeightFormat } from '../../experts/manifest.js'
import { BLOB_ALIGN } from '../../experts/manifest.js'
import { packedBytes } from '../../experts/formats.js'
import { native } from '../../runtime/native.js'

export interface BenchWeights {
  weightsId: number
  experts: ExpertRef[]
  /** Bytes one expert's matrices take (values + meta + select). */
  expertBytes: number
  close(): void
}

/** A RAM-backed directory when one has room (so writing the file costs no disk), else the temp dir. */
function scratchDir(bytes: number): string {
  const shm = '/dev/shm'
  try {
    if (existsSync(shm)) {
      const s = statfsSync(shm)
      if (s.bavail * s.bsize > 2 * bytes) return mkdtempSync(join(shm, 'hetmoe-bench-'))
    }
  } catch {
    // fall through to the temp dir
  }
  return mkdtempSync(join(tmpdir(), 'hetmoe-bench-'))
}

export function writeBenchWeights(spec: {
  D: number
  F: number
  ffn: FfnKind
  format: WeightFormat
  dtype: WeightDtype
  experts: number
  seed: number
}): BenchWeights {
  const { D, F } = spec
  const mats = (spec.ffn === 'swiglu' ? [[F, D], [F, D], [D, F]] : [[F, D], [D, F]]) as Array<[number, number]>
  const align = (n: number) => Math.ceil(n / BLOB_ALIGN) * BLOB_ALIGN
  let expertBytes = 0
  let fileBytes = 0
  for (const [r, c] of mats) {
    const b = packedBytes(r, c, spec.format, spec.dtype)
    expertBytes += b.total
    fileBytes += align(b.values) + align(b.meta) + align(b.select)
  }
  fileBytes *= spec.experts
  const dir = scratchDir(fileBytes)
  const path = join(dir, 'weights.bin')
  const fd = openSync(path, 'w')
  let at = 0
  let seed = spec.seed
  const blob = (bytes: number, kind: 'bf16' | 'fp32' | 'meta' | 'select') => {
    const buf = Buffer.allocUnsafe(bytes)
    native().cpuFillRandom(new Uint8Array(buf.buffer, buf.byteOffset, bytes), kind, seed++)
    writeSync(fd, buf, 0, bytes, at)
    const ref = { offset: at, bytes }
    at += align(bytes)
    return ref
  }
  const experts: ExpertRef[] = []
  try {
    for (let e = 0; e < spec.experts; e++) {
      const refs: MatrixRef[] = mats.map(([rows, cols]) => {
        const b = packedBytes(rows, cols, spec.format, spec.dtype)
        const m: MatrixRef = { rows, cols, format: spec.format, dtype: spec.dtype, values: blob(b.values, spec.dtype) }
        if (b.meta) m.meta = blob(b.meta, 'meta')
        if (b.select) m.select = blob(b.select, 'select')
        return m
      })
      experts.push(spec.ffn === 'swiglu' ? { gate: refs[0], up: refs[1], down: refs[2] } : { up: refs[0], down: refs[1] })
    }
    if (at > 0) writeSync(fd, Buffer.alloc(1), 0, 1, at - 1) // the file covers its last aligned blob
  } finally {
    closeSync(fd)
  }
  const { id } = native().mapWeights(path, true)
  // The mapping keeps the pages; the name can go now.
  rmSync(dir, { recursive: true, force: true })
  return { weightsId: id, experts, expertBytes, close: () => native().unmapWeights(id) }
}
