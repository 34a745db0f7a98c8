// Token files for profiles and placement: whitespace-separated decimal ids (text), or raw
// little-endian int32 when the name ends in `.i32`.
import { readFileSync } from 'node:fs'
import { HetmoeError } from '../runtime/errors.js'

export function readTokenFile(path: string): Int32Array {
  let buf: Buffer
  try {
    buf = readFileSync(path)
  } catch (err) {
    throw new HetmoeError('BAD_INPUT', `cannot read token file ${path}: ${(err as Error).message}`, { cause: err })
  }
  return path.endsWith('.i32') ? parseI32(buf, path) : parseText(buf, path)
}

function parseI32(buf: Buffer, path: string): Int32Array {
  if (buf.length % 4 !== 0)
    throw new HetmoeError('BAD_INPUT', `${path} is ${buf.length} bytes, not a whole number of int32 token ids (.i32 files are raw little-endian int32)`)
  // A copy into fresh memory (aligned for Int32Array); hetmoe runs on little-endian hosts only.
  return new Int32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length))
}

/** A byte scanner: one pass, no intermediate strings, so a few million ids parse in milliseconds. */
export function parseText(buf: Uint8Array, path = 'token text'): Int32Array {
  let out = new Int32Array(Math.max(16, buf.length >> 2))
  let n = 0
  let line = 1
  let lineStart = 0
  let i = 0
  const len = buf.length
  while (i < len) {
    const c = buf[i]
    if (c === 10) {
      line++
      lineStart = ++i
      continue
    }
    if (c === 32 || c === 9 || c === 13) {
      i++
      continue
    }
    const start = i
    let neg = false
    if (c === 45) {
      neg = true
      i++
    }
    let v = 0
    let digits = 0
    while (i < len && buf[i] >= 48 && buf[i] <= 57) {
      v = v * 10 + (buf[i++] - 48)
      digits++
    }
    const end = i < len && !(buf[i] === 32 || buf[i] === 9 || buf[i] === 10 || buf[i] === 13)
    if (digits === 0 || end || v > 2147483647) {
      while (i < len && !(buf[i] === 32 || buf[i] === 9 || buf[i] === 10 || buf[i] === 13)) i++
      const word = Buffer.from(buf.subarray(start, Math.min(i, start + 40))).toString('utf8')
      const why = digits > 0 && !end ? 'is too large for a token id' : 'is not an integer token id'
      throw new HetmoeError('BAD_INPUT', `${path}, line ${line}, column ${start - lineStart + 1}: "${word}" ${why} (token files hold whitespace-separated integers, or raw int32 in a .i32 file)`)
    }
    if (n === out.length) {
      const grown = new Int32Array(out.length * 2)
      grown.set(out)
      out = grown
    }
    out[n++] = neg ? -v : v
  }
  if (n === 0) throw new HetmoeError('BAD_INPUT', `${path} holds no token ids`)
  return out.slice(0, n)
}

/** Throws BAD_INPUT naming the first id outside [0, vocabSize). */
export function checkTokenIds(tokens: Int32Array, vocabSize: number, path: string): void {
  for (let i = 0; i < tokens.length; i++)
    if (tokens[i] >>> 0 >= vocabSize)
      throw new HetmoeError('BAD_INPUT', `${path}: token ${i} (counting from 0) is ${tokens[i]}, outside the model's vocabulary [0, ${vocabSize})`)
}
