// A made-up but plausible calibration for planner tests (the real one comes from probes).
import type { Calibration } from '../../scheduler/cost-model.js'

export function testCalibration(overrides: Partial<Calibration> = {}): Calibration {
  return {
    format: 'hetmoe-calibration',
    version: 1,
    machine: { cpu: 'test cpu', gpu: 'test gpu' },
    source: 'test',
    measuredAt: '2026-01-01T00:00:00.000Z',
    cpu: {
      readBytesPerS: { 'dense/bf16': 100e9, '2:4/bf16': 90e9 },
      flopsPerS: { 'dense/bf16': 4e12, '2:4/bf16': 6e12 },
      expertOverheadS: 3e-6,
      layerOverheadS: 10e-6,
    },
    gpu: {
      readBytesPerS: { 'dense/bf16': 1.8e12 },
      flopsPerS: { 'dense/bf16': 600e12, '2:4/bf16': 900e12, '75%/bf16': 1200e12 },
      expertOverheadS: 2e-6,
      layerOverheadS: 8e-6,
    },
    pcie: { bytesPerS: 25e9, latencyS: 10e-6 },
    ...overrides,
  }
}
