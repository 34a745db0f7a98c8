// The public API of experts/ (the model store, synth, import, extract, the float64 reference), for
// runtime/index.ts to re-export.
export { loadModel, attachModel, Model, type LoadModelOptions, type ModelHandle, type MatrixName } from './model.js'
export { readManifest, validateManifest } from './store-reader.js'
export { StoreWriter, writeStore, type ManifestDraft, type StoreWriterOptions } from './store-writer.js'
export { synthModel, synthMatrix, PRESETS, type PresetName, type SynthPreset, type SynthOptions } from './synth.js'
export { makeRreTable } from './rre-table.js'
export { importCheckpoint, readMoeConfig, type ImportOptions, type MoeConfig } from './import.js'
export { extractDomain, type ExtractOptions } from './extract.js'
export {
  expertForwardRef,
  denseExpertForwardRef,
  denseExpert,
  layerForwardRef,
  gateRoutes,
  rreRoutes,
  silu,
  gelu,
  type DenseExpert,
  type ExpertSelector,
  type LayerInput,
  type Routes,
} from './reference.js'
export * from './manifest.js'
