import t from 'tap'
import { Arena, PAGE_BYTES } from '../runtime/arena.js'
import { HetmoeError } from '../runtime/errors.js'
import { native } from '../runtime/native.js'

t.test('size is rounded to whole pages and leases are aligned', async (t) => {
  const a = new Arena({ bytes: 10_000 })
  t.equal(a.byteLength, 3 * PAGE_BYTES)
  const x = a.lease(10)
  const y = a.lease(100, 64)
  const z = a.lease(1000, 4096)
  t.equal((x.offset - a.base) % 256, 0)
  t.equal((y.offset - a.base) % 64, 0)
  t.equal((z.offset - a.base) % 4096, 0)
  t.ok(y.offset >= x.offset + x.length, 'no overlap')
  t.equal(a.leasedBytes + a.freeBytes, a.byteLength)
})

t.test('the SharedArrayBuffer behind the arena is page-aligned in memory', async (t) => {
  const a = new Arena({ bytes: 1 << 20 })
  const l = a.lease(100, 4096)
  t.equal(native().addressMod(l.u8()), 0, 'a page-aligned lease is page-aligned in memory')
  t.equal(native().addressMod(a.lease(8).u8(), 256), 0, 'default leases are 256-byte aligned in memory')
})

t.test('views share memory and are bounded by their lease', async (t) => {
  const a = new Arena({ bytes: 1 << 16 })
  const l = a.lease(64)
  const f = l.f32()
  t.equal(f.length, 64 / 4)
  f[3] = 1.5
  t.equal(new Float32Array(a.buffer, l.offset, 16)[3], 1.5)
  t.throws(() => l.f32(17), RangeError)
  t.throws(() => l.i32(1, 64), RangeError)
})

t.test('exhaustion gives a clear error and loses nothing', async (t) => {
  const a = new Arena({ bytes: PAGE_BYTES * 4 })
  const big = a.lease(PAGE_BYTES * 3)
  const err = t.throws(() => a.lease(PAGE_BYTES * 2)) as HetmoeError
  t.equal(err.code, 'ARENA_EXHAUSTED')
  t.match(err.message, /no free region of 8192 bytes.*HETMOE_ARENA_MB/)
  big.release()
  t.doesNotThrow(() => a.lease(PAGE_BYTES * 4), 'the whole arena is free again after release')
})

t.test('released space coalesces: random lease/release never leaks', async (t) => {
  const a = new Arena({ bytes: 1 << 20 })
  let seed = 12345
  const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff)
  const live: ReturnType<Arena['lease']>[] = []
  for (let i = 0; i < 3000; i++) {
    if (live.length && rnd() < 0.5) live.splice(Math.floor(rnd() * live.length), 1)[0].release()
    else {
      try {
        live.push(a.lease(Math.floor(rnd() * 20000), 2 ** Math.floor(rnd() * 12)))
      } catch (e) {
        t.equal((e as HetmoeError).code, 'ARENA_EXHAUSTED')
      }
    }
    // No two live leases overlap.
    const sorted = [...live].sort((p, q) => p.offset - q.offset)
    for (let j = 1; j < sorted.length; j++)
      if (sorted[j - 1].offset + sorted[j - 1].length > sorted[j].offset) t.fail(`overlap at step ${i}`)
  }
  for (const l of live) l.release()
  t.equal(a.freeBytes, a.byteLength)
  t.doesNotThrow(() => a.lease(a.byteLength), 'one free region spans the arena')
})

t.test('double release and use after release are caught', async (t) => {
  const a = new Arena({ bytes: PAGE_BYTES })
  const l = a.lease(16)
  l.release()
  l.release() // idempotent
  t.throws(() => l.f32(), { code: 'ARENA_RELEASED' })
  t.throws(() => a._release(l.offset), { code: 'ARENA_RELEASED' })
})

t.test('bad options name the option', async (t) => {
  t.throws(() => new Arena({ bytes: -1 }), /options\.bytes must be a positive integer/)
  const a = new Arena({ bytes: PAGE_BYTES })
  t.throws(() => a.lease(8, 3), /options\.align must be a power of two/)
  a.close()
  t.throws(() => a.lease(8), { code: 'ARENA_RELEASED' })
})
