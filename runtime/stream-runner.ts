// Runs a token stream through every MoE layer of a model, batch by batch: what `hetmoe run` and the
// demo do. Between layers the MoE output is added back to the hidden state (the residual
// connection of a transformer block), so each layer sees realistic, changing inputs.
// Only the forward calls are timed: the stand-in inputs (random hidden states, 19 ms a batch of 256
// at D=2048) and the residual add are the host model's work, not the MoE layers'.
import type { Runtime } from './runtime.js'
import { randomHidden, residualAdd } from './token-stream.js'

export interface StreamReport {
  tokens: number
  batches: number
  batchSize: number
  /** Untimed batches run first (first-touch page faults, GPU and worker warm-up). */
  warmupBatches: number
  layers: number
  /** Seconds inside forward() calls (what tokensPerS divides by). */
  seconds: number
  /** Wall seconds of the timed batches, input generation and residual adds included. */
  wallSeconds: number
  /** Tokens through all MoE layers per second of forward() time. */
  tokensPerS: number
  /** Share of (token, expert) rows computed on the GPU. */
  gpuTokenShare: number
  /** Per layer, milliseconds per batch; cpuMs / gpuMs: each side from dispatch to completion, averaged
   *  over the batches where that side had work (absent when it never had); gpuStreamMs / gpuKernelMs /
   *  gpuCopyInMs: the device's own timing of those GPU calls (copies + kernels / the expert kernels
   *  alone / the copies in before them);
   *  gpuHostMs: their wall time on the native thread; gpuPlaceMs: choosing the GPU's experts.
   */
  perLayer: { layer: number; msPerBatch: number; routeMs: number; computeMs: number; combineMs: number; cpuMs?: number; gpuMs?: number; gpuStreamMs?: number; gpuKernelMs?: number; gpuCopyInMs?: number; gpuHostMs?: number; gpuPlaceMs?: number; gpuShare: number }[]
}

export interface StreamOptions {
  tokens: Int32Array
  batch: number
  domain?: string | number
  signal?: AbortSignal
  onBatch?: (done: number, total: number) => void
  /** Called with layer 0's input and output of the first batch (for spot checks). */
  onFirst?: (hidden: Float32Array, out: Float32Array, tokenIds: Int32Array) => void
  /** Run the first batch this many times, untimed, before timing the stream; 'auto': until the
   *  runtime is warm (WARMUP). Defaults to 0. */
  warmup?: number | 'auto'
}

/** 'auto' warm-up: the first batch again until its forwards have taken `seconds` (at least once, at
 *  most `maxBatches` times). A run of 16 batches of 256 after one warm-up batch went ~25% slower than
 *  one of 128 on the H100 machine (call 16: the JavaScript around the GPU calls and the routing come
 *  to their steady speed over the first forwards); a batch that takes longer than `seconds` is
 *  warm-up enough on its own (a CPU-only prefill batch of a large model takes seconds). forward()
 *  itself reaches its steady speed only after some 5000 calls (V8's tiers: one-row forwards of a tiny
 *  CPU model took 59 µs each over the first 1000 calls and 4.8 from the 6000th, on the dev VM), so
 *  the cap is far above what half a second of one-token batches makes: at 200, sigma-lite's batch-1
 *  runs warmed up for 800 forwards and timed the rest of the JIT's warm-up. */
export const WARMUP = { seconds: 0.5, maxBatches: 10_000 }

export async function runTokenStream(rt: Runtime, options: StreamOptions): Promise<StreamReport> {
  const m = rt.model.manifest
  const D = m.hiddenSize
  const { tokens, batch } = options
  const batches = Math.ceil(tokens.length / batch)
  // The first batch's inputs, generated once for the warm-up batches that repeat it.
  let warmInputs: Float32Array | undefined
  // Returns the milliseconds spent inside forward().
  const runBatch = async (b: number, first: boolean, warmup = false): Promise<number> => {
    const ids = tokens.subarray(b * batch, Math.min(tokens.length, (b + 1) * batch))
    const T = ids.length
    // Hidden states and outputs live in the runtime's arena, as an embedding app's should: forward()
    // then reads and writes them in place (no copy in, no copy out; at 4096 tokens × D=2048 each copy
    // is a 32 MiB pass over memory per layer).
    const hLease = rt.arena.lease(T * D * 4)
    const outLease = rt.arena.lease(T * D * 4)
    try {
      const h = hLease.f32(T * D)
      if (!warmup) randomHidden(T, D, 1000 + b, h) // in place: no 32 MiB array a batch for the collector to find inside a forward
      else if (warmInputs) h.set(warmInputs)
      else warmInputs = randomHidden(T, D, 1000 + b, h).slice()
      const out = outLease.f32(T * D)
      let ms = 0
      for (let l = 0; l < m.layers.length; l++) {
        const t0 = performance.now()
        await rt.forward(l, h, { tokenIds: ids, domain: options.domain, signal: options.signal, out })
        ms += performance.now() - t0
        if (first && l === 0) options.onFirst?.(h.slice(), out.slice(), ids.slice())
        residualAdd(h, out)
      }
      return ms
    } finally {
      hLease.release()
      outLease.release()
    }
  }
  let warmup = 0
  if (options.warmup === 'auto') {
    let ms = 0
    while (warmup < WARMUP.maxBatches && (warmup === 0 || ms < 1e3 * WARMUP.seconds)) (ms += await runBatch(0, false, true)), warmup++
  } else for (; warmup < (options.warmup ?? 0); warmup++) await runBatch(0, false, true)
  warmInputs = undefined
  const before = rt.stats()
  const t0 = performance.now()
  let forwardMs = 0
  for (let b = 0; b < batches; b++) {
    forwardMs += await runBatch(b, b === 0)
    options.onBatch?.(b + 1, batches)
  }
  const wallSeconds = (performance.now() - t0) / 1000
  const seconds = forwardMs / 1000
  const after = rt.stats()
  let gpu = 0
  let all = 0
  const perLayer = after.layers.map((s, layer) => {
    const p = before.layers[layer]
    const g = s.gpuRows - p.gpuRows
    const c = s.cpuRows - p.cpuRows
    gpu += g
    all += g + c
    const n = Math.max(1, s.forwards - p.forwards)
    return {
      layer,
      msPerBatch: (s.ms.total - p.ms.total) / n,
      routeMs: (s.ms.route - p.ms.route) / n,
      computeMs: (s.ms.compute - p.ms.compute) / n,
      combineMs: (s.ms.combine - p.ms.combine) / n,
      ...(s.cpuForwards > p.cpuForwards ? { cpuMs: (s.ms.cpu - p.ms.cpu) / (s.cpuForwards - p.cpuForwards) } : {}),
      ...(s.gpuForwards > p.gpuForwards
        ? {
            gpuMs: (s.ms.gpu - p.ms.gpu) / (s.gpuForwards - p.gpuForwards),
            gpuStreamMs: (s.ms.gpuStream - p.ms.gpuStream) / (s.gpuForwards - p.gpuForwards),
            gpuKernelMs: (s.ms.gpuKernel - p.ms.gpuKernel) / (s.gpuForwards - p.gpuForwards),
            gpuCopyInMs: (s.ms.gpuCopyIn - p.ms.gpuCopyIn) / (s.gpuForwards - p.gpuForwards),
            gpuHostMs: (s.ms.gpuHost - p.ms.gpuHost) / (s.gpuForwards - p.gpuForwards),
            gpuPlaceMs: (s.ms.gpuPlace - p.ms.gpuPlace) / (s.gpuForwards - p.gpuForwards),
          }
        : {}),
      gpuShare: g + c ? g / (g + c) : 0,
    }
  })
  return {
    tokens: tokens.length,
    batches,
    batchSize: batch,
    warmupBatches: warmup,
    layers: m.layers.length,
    seconds,
    wallSeconds,
    tokensPerS: tokens.length / seconds,
    gpuTokenShare: all ? gpu / all : 0,
    perLayer,
  }
}

export function formatStreamReport(r: StreamReport): string {
  const lines = [
    `${r.tokens} tokens in ${r.batches} batches of ${r.batchSize}, ${r.layers} MoE layers: ${r.seconds.toFixed(2)} s in forward() (${r.wallSeconds.toFixed(2)} s wall), ${r.tokensPerS.toFixed(1)} tokens/s${r.warmupBatches ? ` (after ${r.warmupBatches} untimed warm-up batch${r.warmupBatches > 1 ? 'es' : ''})` : ''}`,
    `GPU share of expert rows: ${(100 * r.gpuTokenShare).toFixed(1)}%`,
    'layer  ms/batch  route  compute  combine  (CPU side  GPU side: device, kernels)  GPU share',
    ...r.perLayer.map(
      (l) =>
        `${String(l.layer).padStart(5)}  ${l.msPerBatch.toFixed(3).padStart(8)}  ${l.routeMs.toFixed(3)}  ${l.computeMs.toFixed(3).padStart(7)}  ${l.combineMs.toFixed(3).padStart(7)}  ${(l.cpuMs === undefined ? '—' : l.cpuMs.toFixed(3)).padStart(9)}  ${(l.gpuMs === undefined ? '—' : `${l.gpuMs.toFixed(3)}: ${l.gpuStreamMs!.toFixed(3)}, ${l.gpuKernelMs!.toFixed(3)}`).padStart(23)}  ${(100 * l.gpuShare).toFixed(1).padStart(8)}%`,
    ),
  ]
  return lines.join('\n')
}
