// The shape of one CLI command: one file per command under runtime/cli/commands/.
export interface Command {
  /** One line for `hetmoe --help`. */
  summary: string
  /** The full usage text for `hetmoe <command> --help`. */
  usage: string
  /** Returns the process exit code. */
  run(argv: string[]): Promise<number>
}

/** Thrown for bad command-line use: main prints the message and the command's usage, exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'UsageError'
  }
}
