// A CPU worker thread (run by piscina). It loads the addon once, receives the arena once (through
// workerData), and then runs tasks that carry only offsets into that arena.
import { threadId, workerData } from 'node:worker_threads'
import { native } from './native.js'
import type { WorkerTask, WorkerResult } from './worker-protocol.js'

const addon = native()
const arena = (workerData as { arena: SharedArrayBuffer }).arena
// One byte view over the whole arena: native code takes its pointer once per call.
const arenaU8 = new Uint8Array(arena)
// Test-only fault injection (a layer-job descriptor's dieCount) is honoured only with this set.
const testHooks = process.env.HETMOE_TEST_HOOKS === '1'

export default function run(task: WorkerTask): WorkerResult {
  switch (task.op) {
    case 'ping':
      return { op: 'ping', threadId, arenaBytes: arena.byteLength, cpuModel: addon.info().cpu.model }
    case 'fill': {
      // Writes a value into a region of the arena: lets tests check that workers see the same memory.
      new Float32Array(arena, task.offset, task.count).fill(task.value)
      return { op: 'fill', threadId }
    }
    case 'serve': {
      // Stays in native code, running posted layer jobs, until the crew quits or jobs stop coming.
      // Test hook: 'die' means die as a crashed thread would, holding a claimed block
      // (HETMOE_TEST_HOOKS=1 only).
      const status = addon.crewServe(arenaU8, task.board, task.slot, task.idleMs * 1000, testHooks)
      if (status === 'die') process.exit(70)
      return { op: 'serve', threadId, status }
    }
    default: {
      const op: never = task
      throw new Error(`unknown worker op ${JSON.stringify(op)}`)
    }
  }
}
