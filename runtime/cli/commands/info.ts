import { formatMachineInfo, machineInfo } from '../../info.js'
import { version } from '../../version.js'
import { parseFlags } from '../args.js'
import { cachedCalibration } from '../../calibration.js'
import { describeCalibration } from '../../../scheduler/calibrate.js'
import type { Command } from '../command.js'

export const command: Command = {
  summary: 'what this machine offers: CPU ISA levels, cores, memory, CUDA devices',
  usage: `Usage: hetmoe info [--json]

Reports whether CUDA is compiled in, whether a driver and GPU are present (name, compute
capability, memory, sparse tensor cores), the CPU's ISA levels (AVX2, FMA, F16C, AVX-512F,
AVX512_BF16, AMX-BF16 and whether the OS grants AMX tile state), cores and memory.

  --json   print the report as JSON`,
  async run(argv) {
    const { values } = parseFlags(argv, { json: { type: 'boolean' } })
    const info = await machineInfo(version)
    const calibration = info.hetmoe.addonBuilt ? cachedCalibration() : undefined
    if (values.json) console.log(JSON.stringify({ ...info, calibration: calibration ?? null }, null, 2))
    else console.log(`${formatMachineInfo(info)}\n${calibration ? describeCalibration(calibration) : 'calibration: none cached for this machine (run `hetmoe calibrate`)'}`)
    return 0
  },
}
