// Placement planning off the JavaScript thread, for re-placement while serving. Solving sigma-lite's
// placement (4 layers × 64 experts) takes 23-41 ms on the dev VM; solved in a microtask between
// forwards, as it was, every re-plan (a domain shift, a drifting load) stalled the forwards for that
// long. One piscina thread, started with the runtime and kept: a drift is met within a forward or two,
// not after a thread's start (30 ms alone, 0.9 s under tap's loaders); idle, it costs no CPU time.
import { Piscina } from 'piscina'
import { fileURLToPath } from 'node:url'
import type { Placement, PlacementProblem } from '../scheduler/planner.js'
import type { PlanTask } from './plan-worker.js'

const worker = fileURLToPath(new URL('./plan-worker.js', import.meta.url))
export class PlanThread {
  // execArgv [] : none of the parent's loaders (under tap, its hooks made the thread's first plan take 5 s).
  #pool: Piscina | undefined = new Piscina({ filename: worker, minThreads: 1, maxThreads: 1, idleTimeout: Infinity, execArgv: [] })

  /** The problem's placement (planPlacement), computed on the planner thread. */
  async plan(problem: PlacementProblem): Promise<Placement> {
    if (!this.#pool) throw new Error('the planner thread was closed')
    const { cost, ...rest } = problem
    const task: PlanTask = { ...rest, calibration: cost.calibration }
    return (await this.#pool.run(task)) as Placement
  }

  async close(): Promise<void> {
    const pool = this.#pool
    this.#pool = undefined
    await pool?.destroy()
  }
}
