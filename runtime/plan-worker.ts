// The planner thread's task (runtime/plan-thread.ts): one placement problem, solved. Its cost model
// travels as the calibration it was made from (a CostModel's methods do not cross threads).
import { CostModel, type Calibration, type ExpertShape } from '../scheduler/cost-model.js'
import { planPlacement, type Placement } from '../scheduler/planner.js'

export interface PlanTask {
  experts: ExpertShape[][]
  share: Float64Array[]
  batchTokens: number
  budgetBytes: number
  calibration: Calibration
}

export default function plan(task: PlanTask): Placement {
  const { calibration, ...problem } = task
  return planPlacement({ ...problem, cost: new CostModel(calibration) })
}
