// Placement for the runtime and its commands: which experts stay on the GPU, planned by the
// scheduler from a load profile, the GPU budget and this machine's calibration.
import { HetmoeError } from './errors.js'
import { native } from './native.js'
import { formatBytes } from './size.js'
import type { PlacementPlan } from './runtime.js'
import type { Model } from '../experts/model.js'
import { CostModel, type Calibration } from '../scheduler/cost-model.js'
import { defaultProbes, loadCalibration, referenceH100, thisMachine } from '../scheduler/calibrate.js'
import { makePlan, type PlanDocument } from '../scheduler/plan-report.js'
import { profileFromTokens, profileShares, type LoadProfile } from '../scheduler/profile.js'
import { readDocument } from '../scheduler/document.js'
import { cachedCalibration } from './calibration.js'

export interface PlanForModelOptions {
  /** The expected token stream (RRE models: the profile is exact from it). */
  tokens?: Int32Array
  gpu: 'auto' | 'off' | number
  /** Tokens per forward to optimise for. */
  batch: number
  /** GPU bytes for experts; default 80% of the device's free memory. */
  gpuMemory?: number
  domain?: string | number
}

export interface PlanForModel {
  /** Undefined when there is no GPU to place on. */
  plan: PlacementPlan | undefined
  document?: PlanDocument
  summary: string
}

/**
 * This machine's calibration: the runtime-probe one `hetmoe calibrate` measured (cached), else a
 * quick JavaScript estimate of the CPU; GPU and PCIe rates from the H100 reference where none was measured.
 */
export async function machineCalibration(): Promise<Calibration> {
  return withReferenceGpu(cachedCalibration() ?? (await loadCalibration(defaultProbes(thisMachine()))))
}

/** A calibration without a measured GPU gets the H100 reference rates for it, and says so in its source. */
export function withReferenceGpu(c: Calibration): Calibration {
  if (c.gpu) return c
  return { ...c, ...referenceH100(), source: `${c.source}; GPU and PCIe: H100 reference figures from DESIGN.md (no GPU measured)` }
}

/** An even load: every expert of a layer equally likely (gated models without a recorded profile). */
function uniformProfile(model: Model, tokens: number): LoadProfile {
  const m = model.manifest
  const topK = m.layers[0]?.routing.kind === 'gate' ? m.layers[0].routing.topK : 1
  return {
    format: 'hetmoe-profile',
    version: 1,
    model: m.name,
    tokens,
    topK,
    source: 'uniform (no profile given)',
    layers: m.layers.map((l, layer) => ({ layer, counts: l.experts.map(() => (tokens * topK) / l.experts.length) })),
  }
}

/** The load planForModel assumes without a token stream (and a plan without shares is taken to assume). */
export function uniformShares(model: Model): number[][] {
  return profileShares(uniformProfile(model, 1024)).map((s) => Array.from(s))
}

export async function planForModel(model: Model, o: PlanForModelOptions): Promise<PlanForModel> {
  if (o.gpu === 'off') return { plan: undefined, summary: 'CPU only (--gpu off)' }
  const info = native().info().gpu
  const device = info.devices[typeof o.gpu === 'number' ? o.gpu : 0]
  if (!device) return { plan: undefined, summary: `CPU only (no usable GPU: ${info.error ?? 'no device'})` }
  const budgetBytes = o.gpuMemory ?? Math.floor(0.8 * device.freeBytes)
  const rre = model.manifest.layers.every((l) => l.routing.kind === 'rre')
  const profile = rre && o.tokens ? profileFromTokens(model, o.tokens, o.domain) : uniformProfile(model, o.tokens?.length ?? 1024)
  const doc = makePlan(model.manifest, profile, new CostModel(await machineCalibration()), { budgetBytes, batchTokens: o.batch })
  const n = doc.layers.reduce((s, l) => s + l.gpuExperts.length, 0)
  const all = model.manifest.layers.reduce((s, l) => s + l.experts.length, 0)
  return {
    plan: {
      layers: doc.layers.map((l) => ({ layer: l.layer, gpuExperts: l.gpuExperts })),
      share: profileShares(profile).map((s) => Array.from(s)),
      batchTokens: o.batch,
      streamBytes: doc.streamBytes,
    },
    document: doc,
    summary: `${n}/${all} experts on the GPU (${formatBytes(doc.gpuBytes)} of ${formatBytes(budgetBytes)}), serving ${(100 * doc.gpuTokenShare).toFixed(1)}% of expert rows; predicted decode ${doc.predicted.decodeTokensPerS.toFixed(0)} tokens/s (CPU only ${doc.predicted.cpuOnlyDecodeTokensPerS.toFixed(0)})`,
  }
}

/** What a plan file says beyond the placement: the budget it was made for and its predictions. */
export interface PlanFileFacts {
  budgetBytes?: number
  batchTokens?: number
  predicted?: { decodeTokensPerS: number; prefillTokensPerS: number; prefillTokens: number }
}

/** A plan written by `hetmoe place --out`, checked against the model; `facts` receives its budget
 *  and predictions (what `hetmoe run --plan` defaults to and compares with). */
export function readPlanFile(path: string, model: Model, facts?: PlanFileFacts): PlacementPlan {
  const d = readDocument(path, 'plan') as Partial<PlanDocument>
  if (d?.format !== 'hetmoe-plan' || !Array.isArray(d.layers)) throw new HetmoeError('BAD_INPUT', `${path} is not a hetmoe plan (write one with \`hetmoe place --out\`)`)
  if (d.model !== model.manifest.name) throw new HetmoeError('BAD_INPUT', `${path} was planned for model "${d.model}", not "${model.manifest.name}"`)
  if (facts) {
    if (typeof d.budgetBytes === 'number') facts.budgetBytes = d.budgetBytes
    if (typeof d.batchTokens === 'number') facts.batchTokens = d.batchTokens
    const p = d.predicted
    if (p && typeof p.decodeTokensPerS === 'number' && typeof p.prefillTokensPerS === 'number' && typeof p.prefillTokens === 'number')
      facts.predicted = { decodeTokensPerS: p.decodeTokensPerS, prefillTokensPerS: p.prefillTokensPerS, prefillTokens: p.prefillTokens }
  }
  return {
    layers: d.layers.map((l) => ({ layer: l.layer, gpuExperts: l.gpuExperts })),
    // The load it was planned for: re-placement measures drift from it (a plan without it is taken
    // to assume an even load, and a skewed stream would then look like drift from the first batch).
    ...(Array.isArray(d.share) ? { share: d.share } : {}),
    ...(typeof d.batchTokens === 'number' ? { batchTokens: d.batchTokens } : {}),
    ...(typeof d.streamBytes === 'number' ? { streamBytes: d.streamBytes } : {}),
  }
}
