// Per-batch decision: which cold (CPU-resident) experts are worth copying to the GPU for this batch
// only. Worth it when the layer — max(CPU part, GPU part), computed concurrently — finishes sooner
// with the expert's tCpu(n) moved to the GPU side as tPcie(bytes) + tGpu(n). The copy is charged
// to the GPU side in full (conservative: copies may overlap earlier kernels, but the expert cannot
// start before its weights arrive). While experts stay on the CPU the copies run beside its layer
// job: at the rate measured that way, and the job takes longer for them (CostModel.cpuBesideUploadS).
// Typical outcome: nothing at decode, the busiest cold experts at prefill where copies are fast.
import type { CostModel, ExpertShape } from './cost-model.js'

export interface StreamPlan {
  /** Cold experts to copy to the GPU for this batch, in the order chosen (most useful first). */
  stream: number[]
  /** Predicted layer seconds with them streamed. */
  layerS: number
  /** Predicted layer seconds without streaming. */
  withoutS: number
}

/**
 * @param counts tokens routed to each expert of the layer in this batch
 * @param resident whether each expert is GPU-resident
 * @param streamBytes GPU scratch bytes available for streamed weights this batch
 * @param batchTokens tokens in the batch (default: the routed rows, exact for top-1): the GPU copies
 *   all their hidden rows in once it has any work
 */
export function planStreaming(
  experts: readonly ExpertShape[],
  counts: ArrayLike<number>,
  resident: (e: number) => boolean,
  cost: CostModel,
  streamBytes: number,
  batchTokens?: number,
): StreamPlan {
  let cpu = 0
  let gpu = 0
  let cpuBusy = false
  let gpuBusy = false
  const cold: number[] = []
  // The GPU's kernel follows the call's busiest expert (taken over the whole layer: streamed ones join it).
  let maxCount = 0
  for (let e = 0; e < experts.length; e++) maxCount = Math.max(maxCount, counts[e])
  const largeBatch = cost.gpuLargeBatch(maxCount)
  for (let e = 0; e < experts.length; e++) {
    const n = counts[e]
    if (n <= 0) continue
    if (resident(e)) {
      gpu += cost.tGpu(experts[e], n, largeBatch)
      gpuBusy = true
    } else {
      cpu += cost.tCpu(experts[e], n)
      cpuBusy = true
      cold.push(e)
    }
  }
  const side = (sum: number, busy: boolean, overhead: number) => (busy ? sum + overhead : 0)
  let coldRows = 0
  for (const e of cold) coldRows += counts[e]
  const cpuOv = cost.cpuLayerS(experts, cold.length > 0 ? coldRows / cold.length : 0)
  let rows = 0
  for (let e = 0; e < experts.length; e++) rows += Math.max(0, counts[e])
  const gpuOv = cost.hasGpu ? cost.gpuLayerS(batchTokens ?? rows, experts[0]?.hiddenSize) : 0
  const besideGpu = cost.hasGpu ? cost.cpuBesideGpuS(batchTokens ?? rows) : 0
  // The streamed experts' copies, timed beside the CPU's job (upBeside) and with it idle (upIdle). Plain
  // numbers, no objects: the greedy below asks this for every cold expert at every step of every batch.
  const layer = (c: number, cb: boolean, g: number, gb: boolean, upIdle = 0, upBeside = 0) => {
    const cpuS = side(c, cb, cpuOv + (gb ? besideGpu : 0))
    const copyS = cb ? upBeside : upIdle
    return Math.max(cpuS + (cb ? cost.cpuBesideUploadS(cpuS, copyS) : 0), side(g + copyS, gb, gpuOv))
  }
  const withoutS = layer(cpu, cpuBusy, gpu, gpuBusy)
  const stream: number[] = []
  if (!cost.hasGpu) return { stream, layerS: withoutS, withoutS }

  const onCpu = cold.map((e) => cost.tCpu(experts[e], counts[e]))
  const onGpu = cold.map((e) => cost.tGpu(experts[e], counts[e], largeBatch))
  const copyIdle = cold.map((e) => cost.tPcie(experts[e].bytes))
  const copyBeside = cold.map((e) => cost.tPcie(experts[e].bytes, true))
  const taken = new Uint8Array(cold.length)
  let left = cold.length
  let now = withoutS
  let room = streamBytes
  let upIdle = 0
  let upBeside = 0
  // Greedy: move the expert that shortens the layer most; stop when none does.
  for (;;) {
    let best = -1
    let bestS = now
    for (let i = 0; i < cold.length; i++) {
      if (taken[i] || experts[cold[i]].bytes > room) continue
      const t = layer(cpu - onCpu[i], left > 1, gpu + onGpu[i], true, upIdle + copyIdle[i], upBeside + copyBeside[i])
      if (t < bestS) {
        best = i
        bestS = t
      }
    }
    if (best < 0) break
    taken[best] = 1
    left--
    cpu -= onCpu[best]
    gpu += onGpu[best]
    upIdle += copyIdle[best]
    upBeside += copyBeside[best]
    room -= experts[cold[best]].bytes
    now = bestS
    stream.push(cold[best])
  }
  return { stream, layerS: now, withoutS }
}
