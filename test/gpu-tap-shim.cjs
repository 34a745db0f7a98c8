// A minimal stand-in for `tap`, for the GPU machine only: it has no package registry and the full
// test runner does not fit the 64 MiB that travels there. Implements the few calls the gpu-*.test
// files use and prints TAP; exits non-zero when any assertion fails. CI uses the real tap.
'use strict'
let failures = 0, count = 0
function mk(name, depth) {
  const pad = '    '.repeat(depth)
  const teardowns = []
  const t = {
    ok(v, msg) { count++; if (!v) failures++; console.log(`${pad}${v ? 'ok' : 'not ok'} ${count} - ${msg || ''}`); return !!v },
    notOk(v, msg) { return t.ok(!v, msg) },
    equal(a, b, msg) { const r = t.ok(a === b, msg || `${a} === ${b}`); if (!r) console.log(`${pad}  # got ${a}, wanted ${b}`); return r },
    type(v, ty, msg) { return t.ok(typeof v === ty, msg || `typeof ${ty}`) },
    pass(msg) { return t.ok(true, msg) },
    comment(msg) { console.log(`${pad}# ${msg}`) },
    teardown(fn) { teardowns.push(fn) },
    throws(fn, pred, msg) { try { fn() } catch (e) { return t.ok(typeof pred === 'function' ? pred(e) : true, msg || `throws: ${e && e.message}`) } return t.ok(false, msg || 'expected a throw') },
    async rejects(p, want, msg) {
      try { await p } catch (e) { const good = !want || !want.code || e.code === want.code; if (!good) console.log(`${pad}  # ${e.code} ${e.message}`); return t.ok(good, msg) }
      return t.ok(false, (msg || '') + ' (did not reject)')
    },
    async test(name, opts, fn) {
      if (typeof opts === 'function') { fn = opts; opts = {} }
      if (opts && opts.skip) { console.log(`${pad}ok - ${name} # SKIP ${opts.skip}`); return }
      console.log(`${pad}# Subtest: ${name}`)
      const sub = mk(name, depth + 1)
      try { await fn(sub) } catch (e) { failures++; console.log(`${pad}not ok - ${name} threw: ${e && e.stack}`) }
      for (const f of sub._teardowns.reverse()) { try { await f() } catch (e) { console.log(`${pad}# teardown: ${e.message}`) } }
    },
    _teardowns: teardowns,
  }
  return t
}
const root = mk('root', 0)
let chain = Promise.resolve()
const api = Object.assign({}, root, { test: (...a) => (chain = chain.then(() => root.test(...a))) })
process.on('beforeExit', () => { if (!api._done) { api._done = true; console.log(`# ${count} assertions, ${failures} failed`); process.exitCode = failures ? 1 : 0 } })
module.exports = api
module.exports.default = api
