// Run as a child process by test/route-rre.test.ts: prints the hash of an RRE table drawn here, so the
// test can compare tables drawn in two processes.
import { makeRreTable } from '../../experts/rre-table.js'
import { hashView } from './hash.js'

const [seed, vocab, ...sizes] = process.argv.slice(2).map(Number)
console.log(hashView(makeRreTable(seed, sizes, vocab)))
