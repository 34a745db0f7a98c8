import { HetmoeError, type HetmoeErrorCode } from '../../runtime/errors.js'

interface Asserts {
  ok(v: unknown, msg: string): unknown
  fail(msg: string): unknown
}

/** Asserts that `f` throws a HetmoeError with `code` whose message matches `re`. */
export function throwsHetmoe(t: Asserts, f: () => unknown, code: HetmoeErrorCode, re: RegExp, what: string): void {
  try {
    f()
  } catch (e) {
    t.ok(e instanceof HetmoeError && e.code === code && re.test(e.message), `${what}: ${e instanceof Error ? e.message : String(e)}`)
    return
  }
  t.fail(`${what}: did not throw`)
}
