import { describeCalibration } from '../../../scheduler/calibrate.js'
import { measureCalibration } from '../../calibration.js'
import { parseFlags, parseIntFlag } from '../args.js'
import type { Command } from '../command.js'

export const command: Command = {
  summary: "measure this machine's CPU, GPU and PCIe rates for the placement cost model (cached)",
  usage: `Usage: hetmoe calibrate [--gpu off] [--threads N] [--json]

Runs real expert work through the runtime's backends — the CPU worker pool's layer job and, where a
GPU is usable, its kernels and weight uploads — on small synthetic models in each weight format
(dense, 2:4, 75%; made once in the cache), fits the cost model's rates, and caches them for this
machine ($HETMOE_CACHE_DIR or ~/.cache/hetmoe). \`hetmoe place\`, \`run\` and the runtime use them;
\`hetmoe info\` shows them. Takes from a few seconds to a minute.

  --gpu off    calibrate the CPU only
  --threads N  CPU worker threads (default: all cores)
  --json       print the calibration as JSON`,
  async run(argv) {
    const { values } = parseFlags(argv, { gpu: { type: 'string' }, threads: { type: 'string' }, json: { type: 'boolean' } })
    const c = await measureCalibration({
      gpu: values.gpu !== 'off',
      ...(values.threads ? { threads: parseIntFlag(values.threads, '--threads', 1, 1) } : {}),
      log: (l) => process.stderr.write(l + '\n'),
    })
    console.log(values.json ? JSON.stringify(c, null, 2) : describeCalibration(c))
    return 0
  },
}
