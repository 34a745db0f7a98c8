#!/usr/bin/env bash
# One device call: machine facts, correctness (test under the tap shim), compute-sanitizer memcheck on
# a small case, then the benches. Run from the package root prepared by bench/gpu/prepare-device.sh
# (which copies dist/, build/Release, the node bundle into /work/main/.hgpu). Writes under $OUT.
set -uo pipefail
source .gpu/enter.sh
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export HETMOE_COMMIT=$(cat COMMIT 2>/dev/null || echo unknown)
STEPS=${STEPS:-info,test,testwg,sanitize,sanitizewg,mixtral,fine}
has() { [[ ",$STEPS," == *",$1,"* ]]; }
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$OUT/nvidia-smi.txt"
if has info; then
  node dist/runtime/cli/main.js info --json > "$OUT/info-h100.json"; echo "info rc=$?"
  node -e "new (require('worker_threads').Worker)('const a=require(process.env.A); const i=a.info(); console.log(\"worker sees\", i.gpu.devices.map(d=>d.name).join(\",\"), \"compiled\", i.gpu.compiled)', {eval:true, env:{A: require('path').resolve('build/Release/hetmoe.node')}}).on('exit', c=>console.log('worker exit', c))" 2>&1 | tee "$OUT/worker-load.txt"
fi
if has test; then
  timeout 240 node dist/test/gpu-layer.test.js 2>&1 | tee "$OUT/test.log" | grep -E "not ok|# |ok [0-9]+ - round 0" | head -80
  if grep -q "not ok" "$OUT/test.log"; then
    echo "=== retry with HETMOE_SPMETA=1 ==="
    HETMOE_SPMETA=1 timeout 240 node dist/test/gpu-layer.test.js 2>&1 | tee "$OUT/test-meta1.log" | grep -E "not ok|# " | head -40
  fi
fi
if has testwg; then
  # The large-batch (wgmma) kernel on every group, also the small counts of the first rounds.
  HETMOE_WGMMA_MIN=1 timeout 240 node dist/test/gpu-layer.test.js > "$OUT/test-wg.log" 2>&1
  grep -E "not ok|# (pass|fail)" "$OUT/test-wg.log" | head -40
fi
if has sanitize; then
  timeout 300 compute-sanitizer --tool memcheck --leak-check no node dist/test/gpu-layer.test.js > "$OUT/sanitizer-test.log" 2>&1; echo "sanitizer(test) rc=$?"
  grep -E "ERROR SUMMARY|not ok|assertions" "$OUT/sanitizer-test.log" | tail -5
  timeout 200 compute-sanitizer --tool memcheck --leak-check no node dist/runtime/cli/main.js bench gpu --preset tiny --tokens 3,40 > "$OUT/sanitizer-bench.log" 2>&1; echo "sanitizer(bench tiny) rc=$?"
  grep -E "ERROR SUMMARY|note" "$OUT/sanitizer-bench.log" | tail -5
fi
if has sanitizewg; then
  HETMOE_WGMMA_MIN=1 timeout 90 compute-sanitizer --tool memcheck --leak-check no node dist/runtime/cli/main.js bench gpu --preset tiny --tokens 3,40,300 --formats dense,2:4,75% --no-baselines > "$OUT/sanitizer-wg.log" 2>&1; echo "sanitizer(wgmma, bench tiny) rc=$?"
  grep -E "ERROR SUMMARY|note|hetmoe" "$OUT/sanitizer-wg.log" | tail -12
fi
if has mixtral; then
  timeout 400 node dist/runtime/cli/main.js bench gpu --preset mixtral --json "$OUT/gpu-mixtral.json" 2>&1 | tee "$OUT/bench-mixtral.txt"
fi
if has mixtralrep; then
  # The same bench again: the spread between two runs is the noise floor of the comparisons.
  timeout 400 node dist/runtime/cli/main.js bench gpu --preset mixtral --json "$OUT/gpu-mixtral-rep.json" > "$OUT/bench-mixtral-rep.txt" 2>&1
  grep -E "^\| (hetmoe|cublas|cusparselt)" "$OUT/bench-mixtral-rep.txt" | grep -E "\| (256|1024|4096) "
fi
if has wgsmall; then
  # The wgmma kernel below its switch-over (where the mma kernel runs by default).
  HETMOE_WGMMA_MIN=1 timeout 200 node dist/runtime/cli/main.js bench gpu --preset mixtral --tokens 16,32,48 --formats 2:4,75% --no-baselines --json "$OUT/gpu-mixtral-wgsmall.json" 2>&1 | grep -E "^\| hetmoe"
fi
if has mixtralmma; then
  # The small-batch mma.sp kernel at the sizes where the switch-over is chosen (same run, same machine).
  HETMOE_WGMMA=0 timeout 200 node dist/runtime/cli/main.js bench gpu --preset mixtral --tokens 32,64,128,256 --formats 2:4,75% --no-baselines --json "$OUT/gpu-mixtral-mma.json" 2>&1 | tee "$OUT/bench-mixtral-mma.txt" | grep -E "^\| hetmoe"
fi
if has fine; then
  timeout 300 node dist/runtime/cli/main.js bench gpu --preset fine --json "$OUT/gpu-fine.json" 2>&1 | tee "$OUT/bench-fine.txt"
fi
if has ncu; then
  # Where the time goes at a large batch: the 2:4 kernels at 4096 tokens/expert (mixtral).
  timeout 300 ncu --kernel-name regex:moeWgmma --launch-skip 2 --launch-count 2 --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section ComputeWorkloadAnalysis node dist/runtime/cli/main.js bench gpu --preset mixtral --tokens 4096 --formats 2:4 --no-baselines > "$OUT/ncu-24-4096.txt" 2>&1; echo "ncu rc=$?"
  grep -E "moeWgmma|Duration|Throughput|Memory Throughput|L1/TEX Hit|L2 Hit|Stall|Warp Cycles|Achieved Occupancy|Registers|Issue Slots|Executed Ipc|Theoretical Occ|Pipe" "$OUT/ncu-24-4096.txt" | head -80
  timeout 200 ncu --kernel-name regex:moeWgmma --launch-skip 2 --launch-count 2 --section SpeedOfLight --section WarpStateStats --section ComputeWorkloadAnalysis node dist/runtime/cli/main.js bench gpu --preset mixtral --tokens 4096 --formats 75% --no-baselines > "$OUT/ncu-75-4096.txt" 2>&1; echo "ncu(75%) rc=$?"
  grep -E "moeWgmma|Duration|Compute \(SM\) Throughput|Issue Slots|Pipe|cycles being stalled" "$OUT/ncu-75-4096.txt" | head -30
fi
