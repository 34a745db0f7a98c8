import { createHash } from 'node:crypto'

/** sha256 hex of a typed array's bytes. */
export function hashView(v: ArrayBufferView): string {
  return createHash('sha256').update(new Uint8Array(v.buffer, v.byteOffset, v.byteLength)).digest('hex')
}
