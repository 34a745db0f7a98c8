// Defaults and environment variables, read in one place.
import { availableParallelism } from 'node:os'

export interface EnvConfig {
  /** HETMOE_CPU_THREADS: CPU worker threads. Defaults to the number of logical cores. */
  cpuThreads: number
  /** HETMOE_ARENA_MB: size of the shared-memory arena in MiB. Defaults to 256. */
  arenaMiB: number
  /** HETMOE_ISA: force a CPU kernel level (scalar, avx2, avx512, avx512bf16, amx). Defaults to the best detected. */
  isa: string | undefined
  /** HETMOE_CACHE_DIR: where synthesised models and calibrations are cached. Defaults to ~/.cache/hetmoe. */
  cacheDir: string | undefined
  /** HETMOE_GPU_INLINE_ROWS: GPU layer calls with at most this many rows and no CPU work beside them
   *  run on the calling thread (0: never; for comparisons). Defaults to 256. */
  gpuInlineRows: number
  /** HETMOE_GPU_INLINE_PREFILL (0 or 1): whether GPU layer calls of more rows (prefill) run on the
   *  calling thread too, where it would otherwise only wait: with no CPU work beside them, or beside
   *  a CPU job it does not join (runtime.ts: sidesBeside). Defaults to 0. */
  gpuInlinePrefill: boolean
}

function positiveInt(name: string, raw: string | undefined, fallback: number, min = 1): number {
  if (raw === undefined || raw === '') return fallback
  const n = Number(raw)
  if (!Number.isInteger(n) || n < min) throw new RangeError(`${name} must be ${min === 0 ? 'a non-negative' : 'a positive'} integer (got "${raw}")`)
  return n
}

function flag(name: string, raw: string | undefined, fallback: boolean): boolean {
  if (raw === undefined || raw === '') return fallback
  if (raw !== '0' && raw !== '1') throw new RangeError(`${name} must be 0 or 1 (got "${raw}")`)
  return raw === '1'
}

export function envConfig(env: NodeJS.ProcessEnv = process.env): EnvConfig {
  return {
    cpuThreads: positiveInt('HETMOE_CPU_THREADS', env.HETMOE_CPU_THREADS, availableParallelism()),
    arenaMiB: positiveInt('HETMOE_ARENA_MB', env.HETMOE_ARENA_MB, 256),
    isa: env.HETMOE_ISA || undefined,
    cacheDir: env.HETMOE_CACHE_DIR || undefined,
    gpuInlineRows: positiveInt('HETMOE_GPU_INLINE_ROWS', env.HETMOE_GPU_INLINE_ROWS, 256, 0),
    gpuInlinePrefill: flag('HETMOE_GPU_INLINE_PREFILL', env.HETMOE_GPU_INLINE_PREFILL, false),
  }
}

/** True when progress should be plain lines rather than a redrawn bar (CI logs, pipes). */
export function plainOutput(stream: NodeJS.WriteStream = process.stderr): boolean {
  return process.env.CI === 'true' || process.env.CI === '1' || !stream.isTTY
}
