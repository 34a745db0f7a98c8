// The CPU worker pool: piscina owns the threads and their lifecycle; every worker loads the addon
// once and gets the arena once. Fine-grained splitting of a layer is native code claiming blocks
// from an atomic counter in the arena, not one message per block (a message costs tens of µs).
import { Piscina } from 'piscina'
import { fileURLToPath } from 'node:url'
import { HetmoeError, badOption } from './errors.js'
import type { Arena } from './arena.js'
import type { WorkerTask, WorkerResult } from './worker-protocol.js'

export interface CpuPoolOptions {
  arena: Arena
  /** Worker threads. Defaults to the number of logical cores (HETMOE_CPU_THREADS). */
  threads: number
  /** Worker module; tests substitute their own. Defaults to runtime/worker.js. */
  filename?: string
}

const defaultWorker = fileURLToPath(new URL('./worker.js', import.meta.url))

export class CpuPool {
  readonly threads: number
  #pool: Piscina
  #closed = false

  constructor(options: CpuPoolOptions) {
    if (!Number.isInteger(options.threads) || options.threads <= 0)
      throw badOption('cpuThreads', 'a positive integer', options.threads)
    this.threads = options.threads
    this.#pool = new Piscina({
      filename: options.filename ?? defaultWorker,
      minThreads: options.threads,
      maxThreads: options.threads,
      idleTimeout: Infinity,
      // One task per worker at a time: a layer job occupies its worker until the layer is done.
      concurrentTasksPerWorker: 1,
      workerData: { arena: options.arena.buffer },
    })
    // A worker that dies while idle is replaced by piscina; nothing was lost, so it is not an error.
    this.#pool.on('error', () => {})
  }

  /** Runs one task on some worker. A worker that dies mid-task is replaced and the task rejects. */
  async run<R extends WorkerResult = WorkerResult>(
    task: WorkerTask,
    options: { signal?: AbortSignal; filename?: string } = {},
  ): Promise<R> {
    if (this.#closed) throw new HetmoeError('POOL_CLOSED', 'the CPU worker pool was closed; create a new runtime')
    try {
      return (await this.#pool.run(task, { signal: options.signal, filename: options.filename })) as R
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err)
      if (/worker exited with code/.test(message)) {
        throw new HetmoeError(
          'WORKER_DIED',
          `a CPU worker died while running a "${task.op}" task (${message}); the pool started a replacement. ` +
            'The task did not complete: run it again, and if workers keep dying, check memory limits and the addon build.',
          { cause: err },
        )
      }
      throw err
    }
  }

  /** Worker threads currently alive. */
  get liveThreads(): number {
    return this.#pool.threads.length
  }

  /** Lets running tasks finish, then stops the workers. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.#pool.close()
  }

  /** Stops the workers now; running tasks reject. */
  async destroy(): Promise<void> {
    this.#closed = true
    await this.#pool.destroy()
  }
}
