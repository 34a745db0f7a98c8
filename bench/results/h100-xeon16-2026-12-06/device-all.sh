#!/usr/bin/env bash
# One device call for all of 2026-12-06's measurements, most needed first, each part under a timeout,
# everything packed into $OUT/all.tgz after every part (the tool returns at most 8 files):
#   A. test/gpu-layer.test.ts on the default kernels (the per-expert token tiles are in the default path)
#   B. issue #6: calibration, place vs run (device-2.sh)
#   C. issue #7: per-layer overhead on the Xeon (bench/overhead-xeon.sh)
#   D. issue #5: the large-batch kernel's variants (bench/gpu/variants.sh; removed in 0333275)
#   E. issue #6: where prefill routing and the inline GPU call spend their time (after B: its model and
#      plans): bench/route-probe.ts, then `hetmoe run` at 256 tokens under V8's profiler and with the
#      finiteness scan on the calling thread alone (HETMOE_SCAN_PARALLEL_MIN=0)
#   G. issue #6: one sigma-lite expert on the CPU alone (bench cpu, AMX, 64/148/256 tokens): the 4096-token
#      plan's CPU expert (148 tokens) took 2.8-3.6 ms in the runtime beside the GPU call, 2.06 predicted
#   F. issue #6: batch-1 decode with the K split (kSplitFor) against one warp per tile (HETMOE_MMA_KSPLIT=1)
# PARTS picks parts (default ABCD); A_MODES the GPU test's modes (default "default min1"). From the repo root:
#   source .gpu/enter.sh && HETMOE_COMMIT=<c> bash bench/results/h100-xeon16-2026-12-06/device-all.sh
set -u
HERE=bench/results/h100-xeon16-2026-12-06
O=/tmp/o; mkdir -p $O
T0=$SECONDS
left() { echo $((${LIMIT:-570} - (SECONDS - T0))); }
pack() { tar czf $OUT/all.tgz -C $O . 2>/dev/null; }
has() { [[ "${PARTS:-ABCD}" == *$1* ]]; }
echo "commit ${HETMOE_COMMIT:-?}; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
if ! node -e "require.resolve('tap')" 2>/dev/null; then
  mkdir -p node_modules/tap && cp test/gpu-tap-shim.cjs node_modules/tap/index.cjs
  echo '{"name":"tap","version":"0.0.0-shim","main":"index.cjs"}' > node_modules/tap/package.json
fi
if has A; then
  mkdir -p $O/A
  for mode in ${A_MODES:-default min1}; do
    t=$SECONDS
    if [ $mode = min1 ]; then export HETMOE_WGMMA_MIN=1; fi
    timeout -k 5 120 node dist/test/gpu-layer.test.js > $O/A/gpu-layer-$mode.log 2>&1; rc=$?
    unset HETMOE_WGMMA_MIN
    echo "A gpu-layer $mode: rc $rc, $((SECONDS - t)) s: $(grep -E '^# [0-9]+ assertions' $O/A/gpu-layer-$mode.log | tail -1)"
    grep -E "^not ok|not ok" $O/A/gpu-layer-$mode.log | head -5
  done
  pack
fi
if has B && [ "$(left)" -gt 200 ]; then
  mkdir -p $O/B
  OUT=$O/B timeout -k 5 $(( $(left) > 330 ? 330 : $(left) - 10 )) bash $HERE/device-2.sh > $O/B/stdout.txt 2>&1
  echo "B rc $? ($((SECONDS - T0)) s)"; grep -E "ratio|wall|again|TILES|calibration:" $O/B/stdout.txt | tail -24
  rm -f $O/B/place.tgz; cp -a /tmp/r/. $O/B/ 2>/dev/null; pack
fi
if has E && [ -f /tmp/r/plan-b256-0.25.json ] && [ "$(left)" -gt 180 ]; then
  mkdir -p $O/E; t=$SECONDS
  export HETMOE_CACHE_DIR=/tmp/hetmoe-cache CI=true
  node dist/bench/route-probe.js /tmp/sl > $O/E/route-probe.txt 2>&1
  HETMOE_SCAN_PARALLEL_MIN=0 node dist/bench/route-probe.js /tmp/sl >> $O/E/route-probe.txt 2>&1
  cat $O/E/route-probe.txt
  node --input-type=module -e "import { zipfTokens } from './dist/runtime/token-stream.js'; import { writeFileSync } from 'node:fs'
writeFileSync('/tmp/zipf-16384.txt', Array.from(zipfTokens(16384, 32000, 1.1, 7)).join(' '))"
  H="node dist/runtime/cli/main.js"
  node --cpu-prof --cpu-prof-interval 50 --cpu-prof-dir $O/E dist/runtime/cli/main.js run --model /tmp/sl --plan /tmp/r/plan-b256-0.25.json --tokens /tmp/zipf-16384.txt --domain 0 --json > $O/E/run-b256-prof.json 2>/dev/null
  HETMOE_SCAN_PARALLEL_MIN=0 $H run --model /tmp/sl --plan /tmp/r/plan-b256-0.25.json --tokens /tmp/zipf-16384.txt --domain 0 --json > $O/E/run-b256-serial.json 2>/dev/null
  $H run --model /tmp/sl --plan /tmp/r/plan-b256-0.25.json --tokens /tmp/zipf-16384.txt --domain 0 --json > $O/E/run-b256.json 2>/dev/null
  for f in run-b256 run-b256-serial run-b256-prof; do node -e "const r=require('$O/E/$f.json').report; console.log('$f', r.tokensPerS.toFixed(0), 'tokens/s; route', r.perLayer.map(l=>l.routeMs.toFixed(3)).join(' '), '; gpu', r.perLayer.map(l=>(l.gpuMs??0).toFixed(3)).join(' '), '; host', r.perLayer.map(l=>(l.gpuHostMs??0).toFixed(3)).join(' '))"; done
  TIMEFORMAT="place wall %R s (profiled: $O/E/place.cpuprofile)"
  time node --cpu-prof --cpu-prof-interval 200 --cpu-prof-dir $O/E/place dist/runtime/cli/main.js place --model /tmp/sl --tokens /tmp/zipf.txt --domain 0 --gpu-mem 4GiB --batch 256 > /dev/null
  mv $O/E/place/*.cpuprofile $O/E/place.cpuprofile; rmdir $O/E/place
  TIMEFORMAT="addon info() %R s"; time node -e "require('./build/Release/hetmoe.node').info()"
  echo "E ($((SECONDS - t)) s)"
  pack
fi
if has F && [ -f /tmp/r/plan-b1-0.25.json ] && [ "$(left)" -gt 60 ]; then
  mkdir -p $O/F; t=$SECONDS
  for ks in 1 8 1 8; do
    HETMOE_MMA_KSPLIT=$ks node dist/runtime/cli/main.js run --model /tmp/sl --plan /tmp/r/plan-b1-0.25.json --tokens /tmp/zipf.txt --domain 0 --json > $O/F/run-b1-ks$ks.json 2>/dev/null
    node -e "const r=require('$O/F/run-b1-ks$ks.json').report; console.log('b1 HETMOE_MMA_KSPLIT=$ks', r.tokensPerS.toFixed(0), 'tokens/s; kernel ms', r.perLayer.map(l=>(l.gpuKernelMs??0).toFixed(4)).join(' '), '; stream', r.perLayer.map(l=>(l.gpuStreamMs??0).toFixed(4)).join(' '))"
  done
  echo "F ($((SECONDS - t)) s)"
  pack
fi
if has G && [ "$(left)" -gt 90 ]; then
  mkdir -p $O/G; t=$SECONDS
  node dist/runtime/cli/main.js bench cpu --preset sigma-lite --isa amx --formats dense --tokens 64,148,256 --weights-mib 64 --no-onednn --no-verify --min-time 0.3 --json $O/G/cpu.json > $O/G/stdout.txt 2>&1
  tail -8 $O/G/stdout.txt
  echo "G ($((SECONDS - t)) s)"
  pack
fi
if has C && [ "$(left)" -gt 120 ]; then
  mkdir -p $O/C
  OUT=$O/C BUDGET=$(( $(left) > 200 ? 150 : $(left) - 60 )) timeout -k 5 $(( $(left) - 5 )) bash bench/overhead-xeon.sh > $O/C/stdout.txt 2>&1
  echo "C rc $? ($((SECONDS - T0)) s)"; tail -40 $O/C/stdout.txt
  pack
fi
if has D && [ "$(left)" -gt 240 ]; then
  mkdir -p $O/D
  OUT=$O/D DEADLINE=$(( $(left) - 150 )) timeout -k 5 $(( $(left) - 5 )) bash bench/gpu/variants.sh > $O/D/stdout.txt 2>&1
  echo "D rc $? ($((SECONDS - T0)) s)"; tail -30 $O/D/stdout.txt
  pack
fi
echo "done ($((SECONDS - T0)) s)"
