#!/usr/bin/env bash
# Device call 2026-12-06 (issue #6): calibration, then place vs run on sigma-lite (five cases), the
# prefill cases once more and with HETMOE_WG_TILES=0 (one tile width per launch, the plan before 0ebf2d5).
# From the repo root: source .gpu/enter.sh && HETMOE_COMMIT=<c> bash bench/results/h100-xeon16-2026-12-06/device-2.sh
# Files land in /tmp/r and are packed into $OUT/place.tgz after every step (the tool returns at most 8 files).
set -u
R=/tmp/r; mkdir -p $R
H="node dist/runtime/cli/main.js"
export HETMOE_CACHE_DIR=/tmp/hetmoe-cache CI=true
stamp() { echo "=== $* ($(date +%T))"; tar czf $OUT/place.tgz -C $R . 2>/dev/null; }
stamp start
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee $R/nvidia-smi.txt
lscpu | grep -E "Model name|^CPU\(s\)|L3" | tee $R/lscpu.txt
stamp calibrate
$H calibrate --json > $R/calibration.json 2> $R/calibrate.err; $H info | tail -14; touch $HETMOE_CACHE_DIR/calibration-done
stamp place vs run
OUT=$R SKIP_HYBRID=1 PLACE_CASES="${PLACE_CASES:-16:0.25 1:0.25 16:0.1 256:0.25 4096:0.25}" bash bench/gpu-machine.sh 2 2>&1 | grep -E "===|ratio|wall|layer 0" | tee $R/place-log.txt
stamp repeats, and one tile width per launch
for TAG in ${AGAIN:-b16-0.1 b256-0.25 b4096-0.25}; do
  B=${TAG%%-*}; B=${B#b}; TOK=/tmp/zipf.txt; [ $((8 * B)) -gt 4096 ] && TOK=/tmp/zipf-$((8 * B)).txt
  $H run --model /tmp/sl --plan $R/plan-$TAG.json --tokens $TOK --domain 0 --json > $R/run-$TAG-2.json 2>/dev/null
  node -e "const r=require('$R/run-$TAG-2.json'); console.log('$TAG again', r.report.tokensPerS.toFixed(0), 'ratio', r.plan?.ratio?.toFixed(3), 'kernel ms', r.report.perLayer.map(l=>(l.gpuKernelMs??0).toFixed(3)).join(' '), 'route ms', r.report.perLayer.map(l=>l.routeMs.toFixed(3)).join(' '))"
done
for TAG in ${TILES0:-b256-0.25 b4096-0.25}; do
  B=${TAG%%-*}; B=${B#b}; TOK=/tmp/zipf.txt; [ $((8 * B)) -gt 4096 ] && TOK=/tmp/zipf-$((8 * B)).txt
  HETMOE_WG_TILES=0 $H run --model /tmp/sl --plan $R/plan-$TAG.json --tokens $TOK --domain 0 --json > $R/run-$TAG-tiles0.json 2>/dev/null
  node -e "const r=require('$R/run-$TAG-tiles0.json'); console.log('$TAG HETMOE_WG_TILES=0', r.report.tokensPerS.toFixed(0), 'kernel ms', r.report.perLayer.map(l=>(l.gpuKernelMs??0).toFixed(3)).join(' '))"
done
stamp done
