// The planner thread's task (runtime/plan-thread.ts): one placement problem, solved. Its cost model
// travels as the calibration it was made from (a CostModel's methods do not cross threads).
import { setPriority } from 'node:os'
import { CostModel, type Calibration } from '../scheduler/cost-model.js'
import { planPlacement, type Placement, type PlacementProblem } from '../scheduler/planner.js'

// A low priority for this thread alone (Linux's nice is per thread): a plan runs while forwards do,
// beside the crew's workers and the GPU call's thread, and must not take their cores. Nice 10 weighs a
// tenth of a normal thread: a plan takes longer when every core is busy, a forward's threads wait
// little. (At 19 the tests' plans starved on two cores.)
try {
  setPriority(10)
} catch {
  // not permitted here: plans still run, at normal priority
}

/** A placement problem as it crosses to the thread: its cost model as the calibration. */
export type PlanTask = Omit<PlacementProblem, 'cost'> & { calibration: Calibration }

export default function plan(task: PlanTask): Placement {
  const { calibration, ...problem } = task
  return planPlacement({ ...problem, cost: new CostModel(calibration) })
}
