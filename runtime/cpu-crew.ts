// The CPU crew: the pool's workers stay inside native code (crewServe) between layer jobs and pick
// each job up from a board in the arena, so a job costs a store and at most a futex wake instead of
// a message to every worker and one back (100-300 µs a layer at decode sizes). The main thread joins
// small jobs itself — by the time it has posted one, it is the readiest thread there is — and
// waits for large ones on a libuv thread, so the event loop goes on (and learns of dying workers).
// Protocol and board layout: native/cpu/crew.h. Jobs run one at a time, in call order.
import { CpuPool } from './pool.js'
import { HetmoeError } from './errors.js'
import { native } from './native.js'
import type { Arena, Lease } from './arena.js'
import type { WorkerResult } from './worker-protocol.js'

/** Jobs whose weights are at most this many bytes are joined by the main thread: ≈ 1 ms of reading on
 *  the 16-core Xeon, ≈ 5 ms on a 2-core VM. Waiting for a job instead costs a libuv thread's wake-up and
 *  the main thread's share of the work: on the 2-core VM, small's batch-1 decode (17 MB a layer) ran
 *  at 227 tokens/s waiting and 363 joining. */
export const JOIN_MAX_WEIGHT_BYTES = 64 << 20
/** After its own blocks, the main thread spins this long for the workers' last ones before it sleeps. */
const JOIN_SPIN_MICROS = 1000
/** A worker that gets no job for this long goes back to its event loop: an idle worker there does not
 *  keep the process alive (one inside crewServe would, in a program that never closes its runtime). */
const SERVE_IDLE_MS = 1000
// Header words of a layer-job descriptor (native/cpu/layer_job.h).
const JOB_HEADER_WORDS = 32
const JOB_ABORT = 1
// Board words (native/cpu/crew.h).
const SLOT_WORD = 16
const SLOT_STRIDE = 16
const MAX_SLOTS = 64

export interface CrewJob {
  descOffset: number
  /** Bytes of weights the job reads (decides whether the main thread joins). */
  weightBytes: number
}

export interface CrewRunOptions {
  signal?: AbortSignal
  /** Run blocks on the calling thread too. Defaults to weightBytes ≤ JOIN_MAX_WEIGHT_BYTES. */
  join?: boolean
}

export interface CrewRunResult {
  /** The main thread ran blocks of the job. */
  joined: boolean
  /** The job was run again after a worker died. */
  retried: boolean
}

export class CpuCrew {
  readonly threads: number
  readonly #pool: CpuPool
  readonly #arena: Arena
  readonly #u8: Uint8Array
  readonly #board: Lease
  readonly #boardWords: Int32Array
  /** Per slot: its serve task while the worker is in (or on its way into) crewServe. */
  readonly #serving: (Promise<unknown> | undefined)[] = []
  #tail: Promise<void> = Promise.resolve()
  #current: Int32Array | undefined
  #deaths = 0
  #closing = false

  constructor(options: { arena: Arena; threads: number; filename?: string }) {
    if (!Number.isInteger(options.threads) || options.threads <= 0 || options.threads > MAX_SLOTS)
      throw new HetmoeError('BAD_OPTION', `options.cpuThreads must be an integer in [1, ${MAX_SLOTS}] (got ${String(options.threads)})`)
    this.threads = options.threads
    this.#arena = options.arena
    this.#u8 = new Uint8Array(options.arena.buffer)
    this.#pool = new CpuPool({ arena: options.arena, threads: options.threads, filename: options.filename })
    this.#board = options.arena.lease((SLOT_WORD + MAX_SLOTS * SLOT_STRIDE) * 4, 64)
    this.#boardWords = this.#board.i32((SLOT_WORD + MAX_SLOTS * SLOT_STRIDE))
    native().crewInit(this.#u8, this.#board.offset, this.threads)
    this.#serveAll()
  }

  /** Runs the layer job at `job.descOffset` to completion (see runCpuLayer for the descriptor). */
  async run(job: CrewJob, options: CrewRunOptions = {}): Promise<CrewRunResult> {
    if (this.#closing) throw new HetmoeError('POOL_CLOSED', 'the CPU worker pool was closed; create a new runtime')
    const turn = this.#tail
    let next!: () => void
    this.#tail = new Promise<void>((r) => (next = r))
    await turn
    try {
      return await this.#runNow(job, options)
    } finally {
      next()
    }
  }

  async #runNow(job: CrewJob, options: CrewRunOptions): Promise<CrewRunResult> {
    const { signal } = options
    const aborted = () => new HetmoeError('ABORTED', 'the CPU layer job was aborted', { cause: signal?.reason })
    if (signal?.aborted) throw aborted()
    const join = options.join ?? job.weightBytes <= JOIN_MAX_WEIGHT_BYTES
    const a = native()
    const header = new Int32Array(this.#arena.buffer, job.descOffset, JOB_HEADER_WORDS)
    const stop = () => Atomics.store(header, JOB_ABORT, 1)
    signal?.addEventListener('abort', stop)
    this.#current = header
    try {
      for (let attempt = 0; ; attempt++) {
        const deaths = this.#deaths
        this.#serveAll()
        a.crewPost(this.#u8, this.#board.offset, job.descOffset)
        let state: 'done' | 'aborted' | 'pending' = 'pending'
        try {
          if (join) {
            const mine = a.cpuLayerRun(this.#u8, job.descOffset, false)
            state = mine.status === 'done' ? a.cpuLayerWaitSpin(this.#u8, job.descOffset, JOIN_SPIN_MICROS) : 'aborted'
          }
          if (state === 'pending') state = await a.cpuLayerWait(this.#u8, job.descOffset)
        } finally {
          if (state !== 'done') stop()
          await this.#retire()
        }
        if (signal?.aborted) throw aborted()
        if (state === 'done') return { joined: join, retried: attempt > 0 }
        if (this.#deaths === deaths)
          throw new HetmoeError('CPU_JOB_FAILED', 'a CPU worker could not run the layer job (its descriptor was rejected); the weights may have been closed while it ran')
        if (attempt > 0)
          throw new HetmoeError(
            'WORKER_DIED',
            'a CPU worker died again while re-running the layer job; giving up. ' +
              'Check memory limits and the addon build (HETMOE_ISA=avx2 or scalar rules out a kernel level).',
          )
        // No thread is inside the job now: blocks claimed but not done were the dead worker's.
        a.cpuLayerReset(this.#u8, job.descOffset, false)
      }
    } finally {
      this.#current = undefined
      signal?.removeEventListener('abort', stop)
    }
  }

  /** Closes the posted job once no worker is inside it (a dead one is cleared by #serve's handler). */
  async #retire(): Promise<void> {
    while (!native().crewRetire(this.#u8, this.#board.offset, 200)) await new Promise((r) => setTimeout(r, 1))
  }

  /** Sends every worker that is not serving (idle, or replaced after a death) into crewServe. */
  #serveAll(): void {
    if (this.#closing) return
    for (let s = 0; s < this.threads; s++) if (!this.#serving[s]) this.#serve(s)
  }

  #serve(slot: number): void {
    const task = this.#pool.run<WorkerResult>({ op: 'serve', board: this.#board.offset, slot, idleMs: SERVE_IDLE_MS }).then(
      () => {
        // Idle (or quit): a job posted while it was leaving is still open, so a job in flight gets it back.
        this.#serving[slot] = undefined
        if (this.#current) this.#serveAll()
      },
      (err: unknown) => {
        this.#serving[slot] = undefined
        if ((err as { code?: string })?.code !== 'WORKER_DIED' || this.#closing) return
        // The worker is gone, so its slot mark can be cleared before its replacement takes the slot;
        // the job it was in cannot finish its blocks: abort it (the runner re-runs it once).
        this.#deaths++
        Atomics.store(this.#boardWords, SLOT_WORD + slot * SLOT_STRIDE, 0)
        if (this.#current) Atomics.store(this.#current, JOB_ABORT, 1)
        this.#serveAll()
      },
    )
    this.#serving[slot] = task
  }

  /** Lets queued jobs finish, then sends the workers out of their serve loops and stops them. */
  async close(): Promise<void> {
    if (this.#closing) return
    this.#closing = true
    await this.#tail
    // No job is left, so nothing is lost by stopping the threads rather than waiting for serve tasks
    // to end: a worker still booting (small jobs never needed it) would take its whole start-up to
    // receive its task and see the quit. A serving one leaves crewServe at once and is stopped in JS.
    native().crewQuit(this.#u8, this.#board.offset)
    await this.#pool.destroy()
    this.#board.release()
  }

  /** Stops now: running jobs are aborted. */
  async destroy(): Promise<void> {
    this.#closing = true
    if (this.#current) Atomics.store(this.#current, JOB_ABORT, 1)
    native().crewQuit(this.#u8, this.#board.offset)
    await this.#pool.destroy()
  }
}
