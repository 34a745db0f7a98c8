// The scheduler's API for the runtime: routing into selections, the cost model and its calibration,
// placement, per-batch streaming, lookahead, load profiles and re-placement.
export { allocSelection, selectionBytes, selectionViews, type Selection } from './selection.js'
export { RreRouter } from './route-rre.js'
export { GateRouter, type GateRouterOptions } from './route-gate.js'
export {
  CostModel, expectedRooflineTime, expertShape, matrixBytes,
  type Calibration, type DeviceRates, type ExpertShape, type FormatKey, type Roofline,
} from './cost-model.js'
export {
  calibrate, calibrationCachePath, defaultProbes, describeCalibration, loadCalibration, readCalibration, referenceH100, writeCalibration,
  type CalibrationProbes, type DeviceProbes, type Probe, type ProbeRequest,
} from './calibrate.js'
export { planPlacement, predictBatchTime, type LayerPlacement, type Placement, type PlacementProblem, type PlannerOptions } from './planner.js'
export { planStreaming, type StreamPlan } from './streaming.js'
export { lookahead, type LayerLookahead, type LookaheadContext } from './lookahead.js'
export { LoadTracker, profileFromTokens, profileShares, readProfile, rreRouters, type LoadProfile } from './profile.js'
export { Replacer, type LayerMoves, type Proposal, type ReplacerOptions } from './replacer.js'
export { makePlan, withRouting, modelShapes, type PlanDocument, type PlanOptions } from './plan-report.js'
export { readModelFile, type ModelFile } from './model-file.js'
export { readTokenFile, checkTokenIds } from './token-file.js'
export { readDocument, writeDocument } from './document.js'
