// The messages between the runtime and its CPU workers. Tasks carry offsets into the arena, never
// buffers (a structured clone of a tensor costs more than the kernel that reads it).

export type WorkerTask =
  | { op: 'ping' }
  | { op: 'fill'; offset: number; count: number; value: number }
  /** Serve the crew's board at `board` as worker `slot` until the crew quits or `idleMs` pass without a job (runtime/cpu-crew.ts). */
  | { op: 'serve'; board: number; slot: number; idleMs: number }

export type WorkerResult =
  | { op: 'ping'; threadId: number; arenaBytes: number; cpuModel: string }
  | { op: 'fill'; threadId: number }
  | { op: 'serve'; threadId: number; status: 'quit' | 'idle' }
