// What this machine offers hetmoe: CPU ISA levels, cores, memory, and CUDA devices.
import { freemem, totalmem, availableParallelism, platform, arch, release } from 'node:os'
import { native, type NativeInfo } from './native.js'

export interface MachineInfo {
  hetmoe: { version: string; addonBuilt: boolean; addonError?: string }
  os: { platform: string; arch: string; release: string; node: string }
  memory: { totalBytes: number; freeBytes: number }
  cpu: NativeInfo['cpu'] & { availableParallelism: number; bestIsa: CpuIsaLevel }
  gpu: NativeInfo['gpu']
}

export type CpuIsaLevel = 'scalar' | 'avx2' | 'avx512' | 'avx512bf16' | 'amx'

/** The best CPU kernel level the hardware and OS allow (AMX also needs the OS grant). */
export function bestIsa(isa: NativeInfo['cpu']['isa']): CpuIsaLevel {
  if (isa.amxTile && isa.amxBf16 && isa.amxGranted && isa.avx512bf16) return 'amx'
  if (isa.avx512f && isa.avx512bw && isa.avx512bf16) return 'avx512bf16'
  if (isa.avx512f && isa.avx512bw) return 'avx512'
  if (isa.avx2 && isa.fma && isa.f16c) return 'avx2'
  return 'scalar'
}

export async function machineInfo(version: string): Promise<MachineInfo> {
  let n: NativeInfo | undefined
  let addonError: string | undefined
  try {
    n = native().info()
  } catch (err) {
    addonError = err instanceof Error ? err.message : String(err)
  }
  const cpu = n?.cpu ?? {
    vendor: 'unknown',
    model: 'unknown (addon not built)',
    logicalCores: availableParallelism(),
    isa: {
      avx2: false, fma: false, f16c: false, avx512f: false, avx512bw: false, avx512vl: false,
      avx512dq: false, avx512bf16: false, amxTile: false, amxBf16: false, amxGranted: false,
    },
  }
  return {
    hetmoe: { version, addonBuilt: n !== undefined, ...(addonError ? { addonError } : {}) },
    os: { platform: platform(), arch: arch(), release: release(), node: process.version },
    memory: { totalBytes: totalmem(), freeBytes: freemem() },
    cpu: { ...cpu, availableParallelism: availableParallelism(), bestIsa: bestIsa(cpu.isa) },
    gpu: n?.gpu ?? { compiled: false, runtimeVersion: 0, driverVersion: 0, error: addonError, devices: [] },
  }
}

const gib = (b: number): string => `${(b / 2 ** 30).toFixed(1)} GiB`
const cudaVersion = (v: number): string => (v ? `${Math.floor(v / 1000)}.${(v % 1000) / 10}` : 'none')

/** The report a person reads. */
export function formatMachineInfo(info: MachineInfo): string {
  const isa = info.cpu.isa
  const flags = (Object.keys(isa) as (keyof typeof isa)[]).filter((k) => k !== 'amxGranted' && isa[k])
  const lines = [
    `hetmoe ${info.hetmoe.version} on ${info.os.platform}/${info.os.arch}, Node ${info.os.node}`,
    info.hetmoe.addonBuilt ? '' : `addon: NOT BUILT — ${info.hetmoe.addonError}`,
    `CPU      ${info.cpu.model} (${info.cpu.vendor}), ${info.cpu.logicalCores} logical cores`,
    `  ISA    ${flags.join(' ') || 'none of the SIMD levels hetmoe uses'}`,
    `  AMX    ${
      isa.amxTile ? (isa.amxGranted ? 'usable (tile state granted by the OS)' : `present but unusable: ${info.cpu.amxNote}`) : 'not present'
    }`,
    `  kernels ${info.cpu.bestIsa} (override with HETMOE_ISA)`,
    `memory   ${gib(info.memory.totalBytes)} total, ${gib(info.memory.freeBytes)} free`,
    `CUDA     ${info.gpu.compiled ? `compiled in (runtime ${cudaVersion(info.gpu.runtimeVersion)})` : 'not compiled in'}; driver ${cudaVersion(info.gpu.driverVersion)}`,
  ]
  if (info.gpu.devices.length === 0) {
    lines.push(`GPU      none usable: ${info.gpu.error ?? 'no device'}`)
    if (!info.gpu.compiled) lines.push('         rebuild with nvcc on PATH (npm run build:native, HETMOE_CUDA=on) for the GPU backend')
  }
  for (const d of info.gpu.devices) {
    lines.push(
      `GPU ${d.index}    ${d.name}, sm_${d.computeCapability.replace('.', '')}, ${gib(d.totalBytes)} (${gib(d.freeBytes)} free), ` +
        `${d.multiprocessors} SMs; sparse tensor cores: ${d.sparseTensorCores ? (d.wgmmaSparse ? 'mma.sp + wgmma.sp' : 'mma.sp') : 'no'}`,
    )
  }
  return lines.filter(Boolean).join('\n')
}
