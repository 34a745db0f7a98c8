// hetmoe's public API.
export { Arena, Lease, PAGE_BYTES, DEFAULT_ALIGN } from './arena.js'
export { CpuPool, type CpuPoolOptions } from './pool.js'
export { HetmoeError, type HetmoeErrorCode } from './errors.js'
export { machineInfo, formatMachineInfo, bestIsa, type MachineInfo, type CpuIsaLevel } from './info.js'
export { envConfig, type EnvConfig } from './config.js'
export { version } from './version.js'
