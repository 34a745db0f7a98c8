// Every error hetmoe throws on purpose is a HetmoeError: a stable `code` for programs, and a message
// that says what was wrong and what to do about it.

export type HetmoeErrorCode =
  | 'ADDON_MISSING'
  | 'ARENA_EXHAUSTED'
  | 'ARENA_RELEASED'
  | 'BAD_OPTION'
  | 'BAD_INPUT'
  | 'BAD_MODEL'
  | 'WORKER_DIED'
  | 'CPU_JOB_FAILED'
  | 'POOL_CLOSED'
  | 'GPU_ERROR'
  | 'GPU_OOM'
  | 'ABORTED'
  | 'UNSUPPORTED'

export class HetmoeError extends Error {
  readonly code: HetmoeErrorCode
  constructor(code: HetmoeErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'HetmoeError'
    this.code = code
  }
}

/** A TypeError/RangeError for a bad option, naming it, as Node's own APIs do. */
export function badOption(name: string, expected: string, got: unknown): HetmoeError {
  const shown = typeof got === 'string' ? JSON.stringify(got) : String(got)
  return new HetmoeError('BAD_OPTION', `options.${name} must be ${expected} (got ${shown})`)
}
