// The CPU crew: the pool's workers stay inside native code (crewServe) between layer jobs and pick
// each job up from a board in the arena, so a job costs a store and at most a futex wake instead of
// a message to every worker and one back (100-300 µs a layer at decode sizes). The main thread joins
// small jobs itself — by the time it has posted one, it is the readiest thread there is — and
// waits for large ones on a libuv thread, so the event loop goes on (and learns of dying workers).
// The tiniest jobs it runs alone, without posting them at all (SOLO_MAX_WORK).
// Protocol and board layout: native/cpu/crew.h. Jobs run one at a time, in call order.
import { availableParallelism } from 'node:os'
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
/** Jobs of at most this much work — weight bytes × the tokens they multiply, summed over the job's
 *  experts — run on the calling thread alone: nothing posted, nothing to parse twice or retire, and
 *  no worker arriving late to take one of its few blocks. On the 16-core Xeon (a VM, workers
 *  spinning) the tiny model's one-token jobs (48-96 KB·token) ran 3-7 µs faster alone, its 4-token
 *  ones (0.2-0.4 MB·token) within the noise either way, its 16-token ones (0.8-1.5 MB·token) 8-20 µs
 *  slower. HETMOE_CREW_SOLO_WORK overrides it (0: every job goes to the crew). */
export let SOLO_MAX_WORK = envCount('HETMOE_CREW_SOLO_WORK', 256 << 10)
/** @internal For tests and benches: sets the solo threshold (read per job). */
export function setSoloMaxWork(work: number): void {
  SOLO_MAX_WORK = work
}
function envCount(name: string, fallback: number): number {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return fallback
  const n = Number(raw)
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`${name} must be a non-negative integer (got "${raw}")`)
  return n
}
/** Idle workers' spin before they sleep: 'adaptive' (1.5 × the longest gap between jobs each worker saw
 *  lately, at least 100 µs and at most the bound) or a fixed number of µs (0: sleep at once). A decode
 *  step with a few hundred µs of other work (attention) between MoE layers outlasted the fixed 100 µs
 *  of before, so every layer found the workers asleep: on the 16-core Xeon (KVM) the main thread paid
 *  ~1.2 µs per worker it woke, and they took tens of µs to arrive. */
export type IdleSpin = 'adaptive' | number
export const DEFAULT_IDLE_SPIN_MAX_US = 2000
/** Bounds of the settings (a worker goes back to its event loop after SERVE_IDLE_MS anyway). */
const MAX_SPIN_US = 1_000_000
/** The crew's idle spin from the options and, overriding them (measurements), HETMOE_CREW_IDLE_SPIN_US
 *  ('adaptive' or µs) and HETMOE_CREW_IDLE_SPIN_MAX_US. Throws BAD_OPTION naming what is wrong. */
export function idleSpinSetting(options: { idleSpinUs?: IdleSpin; idleSpinMaxUs?: number } = {}, env: NodeJS.ProcessEnv = process.env): { spinUs: IdleSpin; maxUs: number } {
  const check = (v: unknown, what: string, allowAdaptive: boolean): IdleSpin => {
    if (allowAdaptive && v === 'adaptive') return v
    if (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= MAX_SPIN_US) return v
    throw new HetmoeError('BAD_OPTION', `${what} must be ${allowAdaptive ? "'adaptive' or " : ''}an integer number of µs in [0, ${MAX_SPIN_US}] (got ${typeof v === 'string' ? JSON.stringify(v) : String(v)})`)
  }
  const fromEnv = (name: string): unknown => {
    const raw = env[name]
    if (raw === undefined || raw === '') return undefined
    return raw === 'adaptive' ? raw : /^\d+$/.test(raw) ? Number(raw) : raw
  }
  const envSpin = fromEnv('HETMOE_CREW_IDLE_SPIN_US')
  const envMax = fromEnv('HETMOE_CREW_IDLE_SPIN_MAX_US')
  const spinUs = envSpin !== undefined ? check(envSpin, 'HETMOE_CREW_IDLE_SPIN_US', true) : check(options.idleSpinUs ?? 'adaptive', 'options.cpuIdleSpinUs', true)
  const maxUs = envMax !== undefined ? check(envMax, 'HETMOE_CREW_IDLE_SPIN_MAX_US', false) : check(options.idleSpinMaxUs ?? DEFAULT_IDLE_SPIN_MAX_US, 'options.cpuIdleSpinMaxUs', false)
  return { spinUs, maxUs: maxUs as number }
}
/** HETMOE_CREW_EARLY_WAKE=N (measurements; 0, the default: off): a forward wakes up to N sleeping
 *  workers before it routes (they wake two more each while any sleep) so that they spin by the time
 *  its job is posted. */
const EARLY_WAKE = envCount('HETMOE_CREW_EARLY_WAKE', 0)
/** How many workers spin when idle (the others sleep at once and are woken for jobs whose work pays
 *  for it): one fewer than the logical cores, so that the calling thread, which runs the forward's
 *  JavaScript and joins its jobs, keeps a core that no spinner shares (a spinner on its core yields,
 *  but still costs it switches). Not measured to matter yet: on the 2-core dev VM one or two spinners
 *  gave the same medians. HETMOE_CREW_SPIN_WORKERS overrides it (measurements). */
export function spinWorkers(threads: number, env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.HETMOE_CREW_SPIN_WORKERS
  if (raw !== undefined && raw !== '') {
    if (!/^\d+$/.test(raw)) throw new HetmoeError('BAD_OPTION', `HETMOE_CREW_SPIN_WORKERS must be a non-negative integer (got "${raw}")`)
    return Math.min(threads, Number(raw))
  }
  return Math.min(threads, Math.max(1, availableParallelism() - 1))
}

/** A joined job of at most this many weight bytes wakes sleeping workers only when the main thread,
 *  having timed its first blocks, finds more work left than a wake-up costs it (native/cpu/crew.cc);
 *  larger ones wake them at once (their first block alone can take 100 µs). */
const LAZY_WAKE_MAX_WEIGHT_BYTES = 1 << 20
/** After its own blocks, the main thread spins this long for the workers' last ones before it sleeps. */
const JOIN_SPIN_MICROS = 1000
/** The main thread spins this long for workers to leave a finished job before it yields to the event loop. */
const RETIRE_SPIN_MICROS = 200
/** A worker goes back to its event loop after this long without a forward (alert()): an idle worker
 *  there does not keep the process alive (one inside crewServe would, in a program that never closes
 *  its runtime). Without a forward, not without a post: back in its event loop it needs this thread's
 *  event loop to turn before it serves again (piscina hears of the serve task's end there), and a loop
 *  of synchronous forwards whose jobs ran alone for a second never turned it. */
const SERVE_IDLE_MS = 1000
// Header words of a layer-job descriptor (native/cpu/layer_job.h).
const JOB_HEADER_WORDS = 32
const JOB_ABORT = 1
// Board words (native/cpu/crew.h).
const SLOT_WORD = 16
const SLOT_STRIDE = 16
const MAX_SLOTS = 64
const BOARD_SLEEPERS = 6
/** Bumped by every forward (alert): workers leave crewServe only after SERVE_IDLE_MS without one. */
const BOARD_ACTIVITY = 12
// A slot's diagnostics (native/cpu/crew.h): posts its worker caught spinning, posts it slept through
// until woken, its current spin window (µs), the peak gap it remembers (µs).
const SLOT_TID = 1
const SLOT_CAUGHT = 2
const SLOT_WOKEN = 3
const SLOT_WINDOW = 4
const SLOT_PEAK = 5
const SLOT_PEEKED = 6

/** A size from which a side job (gate GEMM, combine) is shared with a crew of `workers`: `few` below 8
 *  workers, `many` from 8; the environment variable `env` overrides both, and so does `set` (tests;
 *  undefined: the default again). */
function crewThreshold(env: string, few: number, many: number): { of: (workers: number) => number; set: (value: number | undefined) => void } {
  let override = Number(process.env[env] ?? 0) || undefined
  return { of: (workers) => override ?? (workers >= 8 ? many : few), set: (value) => void (override = value) }
}
/** Combines and row copies (runtime/combine.ts) reading at least this many floats are shared with a
 *  crew of `workers`. On the 2-core dev VM, with 2 workers serving (bench/combine-probe.ts), the split
 *  lost 3-12% at 16-256 tokens (K=2, D=4096) and won 1.83× at 4096 and 1.69× for a 4096 × 2048 copy.
 *  With 8 or more workers it starts at 1M floats (a 4 MiB sum, ~0.1 ms on one of the Xeon's cores),
 *  well above the crew's few µs of coordination; not yet measured there. HETMOE_COMBINE_PARALLEL_MIN
 *  overrides it. */
const combineMin = crewThreshold('HETMOE_COMBINE_PARALLEL_MIN', 1 << 22, 1 << 20)
export const combineParallelMinFloats = combineMin.of
/** @internal For tests: sets the combine threshold for every crew size (undefined: the default again). */
export const setCombineParallelMinFloats = combineMin.set
/** The gate GEMM size (T·E·D products) from which routing shares it with a crew of `workers`
 *  (CpuCrew.gateLogits). On the 2-core dev VM the split lost at 0.5M products (mixtral's gate at 16
 *  tokens) and won from 2M (the 64-expert gate at 16 tokens: 52 → 33 µs). On the 16-vCPU Xeon
 *  (bench/results/h100-xeon16-2026-12-06, call 3) sharing from 256K products halved the 64-expert gate
 *  at 4 tokens (0.5M products: 63-71 → 33-37 µs a forward's routing) and left mixtral's 16-token gate
 *  (0.5M products in only 4 blocks) where it was. HETMOE_GATE_PARALLEL_MIN overrides it. */
const gateMin = crewThreshold('HETMOE_GATE_PARALLEL_MIN', 1 << 20, 1 << 18)
export const gateParallelMinProducts = gateMin.of
/** @internal For tests: sets the gate threshold for every crew size (undefined: the default again). */
export const setGateParallelMinProducts = gateMin.set
const GATE_MAGIC = 0x31474d48
const GATE_WORDS = 32
const GATE_WORKER_DIED = -2
const GATE_BLOCK_TOKENS = envCount('HETMOE_GATE_BLOCK_TOKENS', 4)
if (GATE_BLOCK_TOKENS < 1) throw new RangeError('HETMOE_GATE_BLOCK_TOKENS must be at least 1')

const crews = new WeakMap<Arena, CpuCrew>()
/** The crew serving `arena`'s runtime, if any (routing finds it through its leases). */
export function crewOf(arena: Arena): CpuCrew | undefined {
  return crews.get(arena)
}

export interface CrewJob {
  descOffset: number
  /** Bytes of weights the job reads (decides whether the main thread joins). */
  weightBytes: number
  /** Weight bytes × tokens, summed over the job's experts (decides whether the main thread runs it
   *  alone); absent: never alone unless asked. */
  work?: number
}

export interface CrewRunOptions {
  signal?: AbortSignal
  /** Run blocks on the calling thread too. Defaults to weightBytes ≤ JOIN_MAX_WEIGHT_BYTES. */
  join?: boolean
  /** Run the whole job on the calling thread, posting nothing. Defaults to work ≤ SOLO_MAX_WORK
   *  unless `join` is false. */
  solo?: boolean
}

/** What the crew's workers saw (diagnostics, benches). */
export interface CrewStats {
  /** Jobs posted to the workers (jobs run alone are not). */
  posts: number
  /** Arrivals at a posted job (or gate job) summed over workers: caught while spinning, woken from
   *  sleep, or found by a sleeping worker looking up by itself (it sleeps at most 4-128 ms at a time). */
  caughtSpinning: number
  wokenFromSleep: number
  foundOnPeek: number
  /** Workers asleep now (in futex wait on the board). */
  sleeping: number
  /** Workers that have entered their serve loop at least once (a worker boots on its first job). */
  started: number
  /** Per worker: its kernel thread id (0 before it first served), its current spin window and the gap peak it remembers, µs. */
  tids: number[]
  windowUs: number[]
  peakGapUs: number[]
  /** The idle spin in force, and how many workers spin. */
  idleSpin: { spinUs: IdleSpin; maxUs: number; workers: number }
  /** Workers woken early by forwards (HETMOE_CREW_EARLY_WAKE). */
  earlyWoken: number
}

export interface CrewRunResult {
  /** The main thread ran blocks of the job. */
  joined: boolean
  /** The main thread ran the whole job alone; no worker saw it. */
  solo: boolean
  /** The job was run again after a worker died. */
  retried: boolean
}

export class CpuCrew {
  readonly threads: number
  readonly #pool: CpuPool
  readonly #u8: Uint8Array
  readonly #board: Lease
  readonly #boardWords: Int32Array
  /** The whole arena as int32 words (a job's abort word is at descOffset / 4 + JOB_ABORT). */
  readonly #words: Int32Array
  /** Per slot: its serve task while the worker is in (or on its way into) crewServe. */
  readonly #serving: (Promise<unknown> | undefined)[] = []
  /** A job (or close) holds the turn; the ones that came later wait here, in call order. */
  #busy = false
  readonly #waiting: (() => void)[] = []
  /** The abort word (index into #words) of the job running now. */
  #current: number | undefined
  #deaths = 0
  #posts = 0
  readonly #gateDesc: Lease
  #closing = false
  readonly #idleSpin: { spinUs: IdleSpin; maxUs: number; workers: number }
  #earlyWoken = 0

  constructor(options: { arena: Arena; threads: number; filename?: string; idleSpinUs?: IdleSpin; idleSpinMaxUs?: number }) {
    if (!Number.isInteger(options.threads) || options.threads <= 0 || options.threads > MAX_SLOTS)
      throw new HetmoeError('BAD_OPTION', `options.cpuThreads must be an integer in [1, ${MAX_SLOTS}] (got ${String(options.threads)})`)
    this.#idleSpin = { ...idleSpinSetting(options), workers: spinWorkers(options.threads) }
    this.threads = options.threads
    this.#u8 = new Uint8Array(options.arena.buffer)
    this.#words = new Int32Array(options.arena.buffer)
    this.#pool = new CpuPool({ arena: options.arena, threads: options.threads, filename: options.filename })
    this.#board = options.arena.lease((SLOT_WORD + MAX_SLOTS * SLOT_STRIDE) * 4, 64)
    this.#boardWords = this.#board.i32((SLOT_WORD + MAX_SLOTS * SLOT_STRIDE))
    native().crewInit(this.#u8, this.#board.offset, this.threads)
    native().crewConfigure(this.#u8, this.#board.offset, this.#idleSpin.spinUs === 'adaptive' ? -1 : this.#idleSpin.spinUs, this.#idleSpin.maxUs, this.#idleSpin.workers)
    this.#gateDesc = options.arena.lease(GATE_WORDS * 4, 64)
    crews.set(options.arena, this)
    this.#serveAll()
  }

  /** Whether a job of this much work (weight bytes × tokens) runs on the calling thread alone by default. */
  runsAlone(work: number): boolean {
    return work <= SOLO_MAX_WORK
  }

  /** Jobs posted to the workers so far (diagnostics and tests; jobs run alone are not posted). */
  get posts(): number {
    return this.#posts
  }

  /** What the workers saw so far (native/cpu/crew.h, a slot's diagnostics). */
  stats(): CrewStats {
    const w = this.#boardWords
    const slot = (s: number, k: number) => Atomics.load(w, SLOT_WORD + s * SLOT_STRIDE + k)
    const st: CrewStats = { posts: this.#posts, caughtSpinning: 0, wokenFromSleep: 0, foundOnPeek: 0, sleeping: Atomics.load(w, BOARD_SLEEPERS), started: 0, tids: [], windowUs: [], peakGapUs: [], idleSpin: { ...this.#idleSpin }, earlyWoken: this.#earlyWoken }
    for (let s = 0; s < this.threads; s++) {
      if (slot(s, SLOT_TID) !== 0) st.started++
      st.tids.push(slot(s, SLOT_TID))
      st.caughtSpinning += slot(s, SLOT_CAUGHT)
      st.wokenFromSleep += slot(s, SLOT_WOKEN)
      st.foundOnPeek += slot(s, SLOT_PEEKED)
      st.windowUs.push(slot(s, SLOT_WINDOW))
      st.peakGapUs.push(slot(s, SLOT_PEAK))
    }
    return st
  }

  /**
   * A job is on its way (a forward about to route): counts the forward as activity, which keeps
   * serving workers in crewServe (SERVE_IDLE_MS); if workers sleep, wakes up to `count` of them
   * (default HETMOE_CREW_EARLY_WAKE, off) to spin for it; they pass the wake-up on. Returns how many it
   * woke. Costs an atomic add and a load when none sleeps.
   */
  alert(count = EARLY_WAKE): number {
    Atomics.add(this.#boardWords, BOARD_ACTIVITY, 1)
    if (count <= 0 || this.#closing || Atomics.load(this.#boardWords, BOARD_SLEEPERS) === 0) return 0
    const n = native().crewAlert(this.#u8, this.#board.offset, count)
    this.#earlyWoken += n
    return n
  }

  /** Runs the layer job at `job.descOffset` to completion (see runCpuLayer for the descriptor). */
  run(job: CrewJob, options: CrewRunOptions = {}): Promise<CrewRunResult> {
    // Synchronous up to the post: a job takes the turn (or queues for it) the moment it is called.
    try {
      const now = this.runNow(job, options)
      return now === undefined ? this.#run(job, options) : Promise.resolve(now)
    } catch (err) {
      return Promise.reject(err)
    }
  }

  /**
   * run() without a promise when it can finish on this thread now: while no other job holds the turn,
   * a job run alone, and a joined job that the one native call finishes (a decode layer's jobs), give
   * their result synchronously. A joined job the call did not finish (workers still on its last
   * blocks, a death) gives a promise of the rest; undefined: nothing done (not joined, or the turn is
   * taken: call run()). Throws what run() would reject with before anything is posted.
   */
  runNow(job: CrewJob, options: CrewRunOptions = {}): CrewRunResult | Promise<CrewRunResult> | undefined {
    if (this.#busy || this.#closing) return undefined
    const { join, solo } = this.#mode(job, options)
    if (!solo && !join) return undefined
    const { signal } = options
    if (signal?.aborted) throw new HetmoeError('ABORTED', 'the CPU layer job was aborted', { cause: signal.reason })
    this.#checkDesc(job)
    if (solo) return this.#runAlone(job, signal)
    const a = native()
    const deaths = this.#deaths
    this.#serveAll()
    const wake = job.weightBytes > LAZY_WAKE_MAX_WEIGHT_BYTES ? 'wake' : 'lazy'
    const state = a.crewJoin(this.#u8, this.#board.offset, job.descOffset, wake, JOIN_SPIN_MICROS, RETIRE_SPIN_MICROS)
    this.#posts++
    if (state === 'done') return { joined: true, solo: false, retried: false }
    // Posted and not finished: hold the turn until the rest is done.
    this.#busy = true
    return this.#runOnCrew(job, true, signal, { state, deaths }).finally(() => this.#pass())
  }

  /** Whether a job joins (the main thread runs blocks too) and whether it runs on this thread alone. */
  #mode(job: CrewJob, options: CrewRunOptions): { join: boolean; solo: boolean } {
    const join = options.join ?? job.weightBytes <= JOIN_MAX_WEIGHT_BYTES
    return { join, solo: options.solo ?? (join && job.work !== undefined && job.work <= SOLO_MAX_WORK) }
  }

  /** A job run on this thread alone, synchronously (no abort can arrive meanwhile, and nothing else
   *  takes the turn): no worker ever sees it. */
  #runAlone(job: CrewJob, signal: AbortSignal | undefined): CrewRunResult {
    if (native().crewJoin(this.#u8, this.#board.offset, job.descOffset, 'alone', 0, 0) !== 'done')
      throw new HetmoeError('ABORTED', 'the CPU layer job was aborted', { cause: signal?.reason })
    return { joined: true, solo: true, retried: false }
  }

  #checkDesc(job: CrewJob): void {
    if (job.descOffset % 4 !== 0 || job.descOffset < 0 || job.descOffset + JOB_HEADER_WORDS * 4 > this.#u8.length)
      throw new HetmoeError('BAD_INPUT', `cpu crew: no room for a job descriptor at offset ${job.descOffset}`)
  }

  async #run(job: CrewJob, options: CrewRunOptions): Promise<CrewRunResult> {
    if (this.#closing) throw new HetmoeError('POOL_CLOSED', 'the CPU worker pool was closed; create a new runtime')
    // With nothing running the turn is taken at once, without a trip through the microtask queue.
    if (this.#busy) await this.#turn()
    this.#busy = true
    try {
      const { signal } = options
      if (signal?.aborted) throw new HetmoeError('ABORTED', 'the CPU layer job was aborted', { cause: signal.reason })
      this.#checkDesc(job)
      const { join, solo } = this.#mode(job, options)
      if (solo) return this.#runAlone(job, signal)
      return await this.#runOnCrew(job, join, signal)
    } finally {
      this.#pass()
    }
  }

  /** Resolves when the turn is handed to this caller (#busy stays true across the hand-over). */
  #turn(): Promise<void> {
    return new Promise<void>((resolve) => this.#waiting.push(resolve))
  }

  #pass(): void {
    const next = this.#waiting.shift()
    if (next) next()
    else this.#busy = false
  }

  /** `first`: the first attempt was made already (runNow) and left the job in `state`. */
  async #runOnCrew(
    job: CrewJob,
    join: boolean,
    signal: AbortSignal | undefined,
    first?: { state: 'unretired' | 'pending' | 'aborted'; deaths: number },
  ): Promise<CrewRunResult> {
    const aborted = () => new HetmoeError('ABORTED', 'the CPU layer job was aborted', { cause: signal?.reason })
    const a = native()
    const board = this.#board.offset
    const wake = job.weightBytes > LAZY_WAKE_MAX_WEIGHT_BYTES ? 'wake' : 'lazy'
    const abortWord = job.descOffset / 4 + JOB_ABORT
    const words = this.#words
    const stop = () => void Atomics.store(words, abortWord, 1)
    signal?.addEventListener('abort', stop)
    this.#current = abortWord
    try {
      for (let attempt = 0; ; attempt++) {
        const deaths = attempt === 0 && first ? first.deaths : this.#deaths
        // Joined: post, run, wait and retire in one native call, which usually finishes the job.
        let state: 'done' | 'unretired' | 'pending' | 'aborted' = 'pending'
        if (attempt === 0 && first) state = first.state
        else {
          this.#serveAll()
          if (join) state = a.crewJoin(this.#u8, board, job.descOffset, wake, JOIN_SPIN_MICROS, RETIRE_SPIN_MICROS)
          else a.crewPost(this.#u8, board, job.descOffset)
          this.#posts++
        }
        if (state === 'done') return { joined: join, solo: false, retried: attempt > 0 }
        let done = state === 'unretired'
        try {
          if (state === 'pending') done = (await a.cpuLayerWait(this.#u8, job.descOffset)) === 'done'
        } finally {
          if (!done) stop()
          if (!a.crewRetire(this.#u8, board, RETIRE_SPIN_MICROS)) await this.#retire()
        }
        if (signal?.aborted) throw aborted()
        if (done) return { joined: join, solo: false, retried: attempt > 0 }
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

  /**
   * The gate's logits (float64 [T × E], the same bits as native().gateLogits) computed by this thread
   * and the crew's workers together, which are idle while the main thread routes. `hidden` and
   * `logits` must lie in the arena, the gate weight in the mapped weights file `weightsId`. Returns
   * undefined (compute on this thread) when the crew is busy with a layer job, closing, the GEMM is
   * below `minProducts` (gateParallelMinProducts: below it the post and the join cost more than the
   * split saves), or a worker died inside the job (`testDieCount`: that many workers die holding a block,
   * with HETMOE_TEST_HOOKS=1 only); else the index of the first non-finite hidden value, or -1.
   */
  gateLogits(
    hidden: Float32Array,
    gate: { weightsId: number; offset: number },
    T: number,
    D: number,
    E: number,
    logits: Float64Array,
    minProducts = gateParallelMinProducts(this.threads),
    testDieCount = 0,
  ): number | undefined {
    if (this.#closing || this.#busy || T * E * D < minProducts) return undefined
    if (hidden.buffer !== this.#u8.buffer || logits.buffer !== this.#u8.buffer || logits.byteOffset % 8 !== 0) return undefined
    // Blocks of 4 tokens (one register tile) × an expert range: about four blocks per thread.
    // HETMOE_GATE_BLOCK_TOKENS (measurements): fewer tokens a block, so that gates of few experts
    // (mixtral's 8 at 16 tokens: 4 blocks) spread over more workers.
    const threads = this.threads + 1
    const tpb = Math.min(T, GATE_BLOCK_TOKENS)
    const tBlocks = Math.ceil(T / tpb)
    const eSplit = Math.max(1, Math.min(Math.ceil(E / 8), Math.ceil((4 * threads) / tBlocks)))
    const epb = Math.ceil(E / eSplit)
    const w = this.#gateDesc.i32(GATE_WORDS)
    w.fill(0)
    w[0] = GATE_MAGIC
    w[4] = T
    w[5] = tBlocks * Math.ceil(E / epb)
    w[6] = E
    w[7] = gate.weightsId
    w[8] = D
    w[9] = tpb
    w[10] = epb
    w[11] = native().cpuResolveIsa().index
    w[12] = testDieCount
    const put64 = (i: number, v: number) => {
      w[i] = v % 2 ** 32 | 0
      w[i + 1] = Math.floor(v / 2 ** 32)
    }
    put64(16, hidden.byteOffset)
    put64(18, gate.offset)
    put64(20, logits.byteOffset)
    this.#serveAll()
    const r = native().gateJobRun(this.#u8, this.#board.offset, this.#gateDesc.offset)
    // A worker died inside the job (its replacement comes from #serve's handler): the caller computes.
    return r === GATE_WORKER_DIED ? undefined : r
  }

  /**
   * The top-k combine (runtime/combine.ts: out[t] = Σ_k rows[t·K + k] + g[t] · Σ_s shared[s·T + t]) by
   * this thread and the crew's workers, idle once the layer's experts are done: each output row is
   * summed by one thread in the fixed order, so the bits are the single thread's. The buffers may lie
   * anywhere: the native call hands the workers their addresses and holds them until every block is
   * done. Returns false (sum on this thread) when the crew is
   * busy or closing, the sums are below `minFloats` values read, or a worker died inside the job
   * (`testDieCount`: that many workers die holding a block, with HETMOE_TEST_HOOKS=1 only).
   */
  combine(
    rows: Float32Array,
    shared: Float32Array | undefined,
    S: number,
    out: Float32Array,
    T: number,
    K: number,
    D: number,
    scale: Float32Array | undefined,
    minFloats = combineParallelMinFloats(this.threads),
    testDieCount = 0,
  ): boolean {
    if (this.#closing || this.#busy || T * (K + S) * D < minFloats || T < 2) return false
    // About four blocks a thread, whole tokens each: a block streams its rows once.
    const tokensPerBlock = Math.max(1, Math.ceil(T / (4 * (this.threads + 1))))
    this.#serveAll()
    const r = native().combineJobRun(this.#u8, this.#board.offset, this.#gateDesc.offset, rows, shared ?? null, S, out, T, K, D, scale ?? null, tokensPerBlock, testDieCount)
    return r !== GATE_WORKER_DIED
  }

  /** Closes the posted job once no worker is inside it (a dead one is cleared by #serve's handler). */
  async #retire(): Promise<void> {
    while (!native().crewRetire(this.#u8, this.#board.offset, RETIRE_SPIN_MICROS)) await new Promise((r) => setTimeout(r, 1))
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
        if (this.#current !== undefined) this.#serveAll()
      },
      (err: unknown) => {
        this.#serving[slot] = undefined
        if ((err as { code?: string })?.code !== 'WORKER_DIED' || this.#closing) return
        // The worker is gone, so its slot mark can be cleared before its replacement takes the slot;
        // the job it was in cannot finish its blocks: abort it (the runner re-runs it once).
        this.#deaths++
        Atomics.store(this.#boardWords, SLOT_WORD + slot * SLOT_STRIDE, 0)
        if (this.#current !== undefined) Atomics.store(this.#words, this.#current, 1)
        this.#serveAll()
      },
    )
    this.#serving[slot] = task
  }

  /** Lets queued jobs finish, then sends the workers out of their serve loops and stops them. */
  async close(): Promise<void> {
    if (this.#closing) return
    this.#closing = true
    // Queued jobs go first; close then keeps the turn.
    if (this.#busy) await this.#turn()
    this.#busy = true
    // No job is left, so nothing is lost by stopping the threads rather than waiting for serve tasks
    // to end: a worker still booting (small jobs never needed it) would take its whole start-up to
    // receive its task and see the quit. A serving one leaves crewServe at once and is stopped in JS.
    native().crewQuit(this.#u8, this.#board.offset)
    await this.#pool.destroy()
    this.#gateDesc.release()
    this.#board.release()
  }

  /** Stops now: running jobs are aborted. */
  async destroy(): Promise<void> {
    this.#closing = true
    if (this.#current !== undefined) Atomics.store(this.#words, this.#current, 1)
    native().crewQuit(this.#u8, this.#board.offset)
    await this.#pool.destroy()
  }
}
