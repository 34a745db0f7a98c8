// The messages between the runtime and its CPU workers. Tasks carry offsets into the arena, never
// buffers (a structured clone of a tensor costs more than the kernel that reads it).

export type WorkerTask =
  | { op: 'ping' }
  | { op: 'fill'; offset: number; count: number; value: number }
  /** Join the CPU layer job whose descriptor is at `offset` in the arena (runtime/cpu-layer-job.ts). */
  | { op: 'cpu-layer'; offset: number }

export type WorkerResult =
  | { op: 'ping'; threadId: number; arenaBytes: number; cpuModel: string }
  | { op: 'fill'; threadId: number }
  | { op: 'cpu-layer'; threadId: number; status: 'done' | 'aborted'; blocks: number }
