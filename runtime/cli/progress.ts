// Progress on stderr: a redrawn bar on a terminal, a plain line every few percent in CI and pipes.
import { plainOutput } from '../config.js'

export class Progress {
  readonly #label: string
  readonly #total: number
  readonly #plain: boolean
  readonly #stream: NodeJS.WriteStream
  #done = 0
  #lastShown = -1
  #start = performance.now()
  #quiet: boolean

  constructor(label: string, total: number, options: { quiet?: boolean; stream?: NodeJS.WriteStream } = {}) {
    this.#label = label
    this.#total = Math.max(total, 1)
    this.#stream = options.stream ?? process.stderr
    this.#plain = plainOutput(this.#stream)
    this.#quiet = options.quiet ?? false
  }

  tick(n = 1, detail = ''): void {
    this.#done = Math.min(this.#done + n, this.#total)
    this.#show(detail)
  }

  #show(detail: string): void {
    if (this.#quiet) return
    const pct = Math.floor((100 * this.#done) / this.#total)
    if (this.#plain) {
      const step = Math.floor(pct / 10)
      if (step === this.#lastShown && this.#done < this.#total) return
      this.#lastShown = step
      this.#stream.write(`${this.#label}: ${pct}% (${this.#done}/${this.#total})${detail ? ` ${detail}` : ''}\n`)
      return
    }
    const width = 28
    const filled = Math.round((width * this.#done) / this.#total)
    const secs = ((performance.now() - this.#start) / 1000).toFixed(1)
    this.#stream.write(`\r${this.#label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${pct}% ${secs}s ${detail}\x1b[K`)
  }

  done(message = ''): void {
    if (this.#quiet) return
    if (!this.#plain) this.#stream.write('\r\x1b[K')
    const secs = ((performance.now() - this.#start) / 1000).toFixed(1)
    this.#stream.write(`${this.#label}: done in ${secs}s${message ? ` — ${message}` : ''}\n`)
  }
}
