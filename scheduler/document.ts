// Plans and profiles on disk: msgpack when the name ends in `.msgpack` (what the runtime loads fastest,
// as DESIGN.md asks of control data), JSON otherwise (what a person reads and diffs). Both hold the
// same object.
import { readFileSync, writeFileSync } from 'node:fs'
import { pack, unpack } from 'msgpackr'
import { HetmoeError } from '../runtime/errors.js'

export function writeDocument(path: string, doc: unknown): void {
  writeFileSync(path, path.endsWith('.msgpack') ? pack(doc) : JSON.stringify(doc, null, 2) + '\n')
}

export function readDocument(path: string, what: string): unknown {
  let buf: Buffer
  try {
    buf = readFileSync(path)
  } catch (err) {
    throw new HetmoeError('BAD_INPUT', `cannot read ${what} ${path}: ${(err as Error).message}`, { cause: err })
  }
  try {
    return path.endsWith('.msgpack') ? unpack(buf) : JSON.parse(buf.toString('utf8'))
  } catch (err) {
    throw new HetmoeError('BAD_INPUT', `${path} is not a valid ${what} (${path.endsWith('.msgpack') ? 'msgpack' : 'JSON'}): ${(err as Error).message}`, { cause: err })
  }
}
