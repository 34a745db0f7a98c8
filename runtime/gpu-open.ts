// Choosing and opening the GPU backend: an ordered fallback (the requested device → CPU only), one
// warning line for each step down, and the initial upload of the plan's hot experts.
import type { Arena } from './arena.js'
import type { ExpertBackend } from './layer-work.js'
import type { PlacementPlan } from './runtime.js'
import type { Model } from '../experts/model.js'

/** What the runtime needs of a GPU: run LayerWork for resident experts, and report residency. */
export interface GpuExpertBackend extends ExpertBackend {
  readonly kind: 'gpu'
  readonly deviceName: string
  /** Resident experts per layer. */
  resident(): Map<number, number[]>
  residentBytes(): number
  close(): Promise<void>
}

export interface OpenGpuOptions {
  setting: 'auto' | 'off' | number
  gpuMemory: number | string | undefined
  arena: Arena
  model: Model
  plan: PlacementPlan | undefined
  warn: (message: string) => void
}
