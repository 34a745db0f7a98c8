import { formatMachineInfo, machineInfo } from '../../info.js'
import { version } from '../../version.js'
import { parseFlags } from '../args.js'
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
    console.log(values.json ? JSON.stringify(info, null, 2) : formatMachineInfo(info))
    return 0
  },
}
