#!/usr/bin/env bash
# Call 5 (about 4 minutes): where issue #6's large-batch misprediction comes from, packed into $OUT/all.tgz:
#   L. bench/layer-probe.ts: a sigma-lite-sized layer, all experts on the GPU, at 1/16/256/4096 tokens, with
#      the hidden rows untouched, rewritten by a residual add, or copied fresh before each forward; the GPU
#      call split into copies in, kernels and copies out (copyInMs, new)
#   T. the GPU tests of async uploads and re-placement
#   B. calibration, then place vs run on sigma-lite: batch 1 (25% budget), 4096 (10%: streaming beside the CPU), 4096 and 256 (25%)
# From the repo root: source .gpu/enter.sh && HETMOE_COMMIT=<c> bash bench/results/h100-xeon16-2026-12-06/device-5.sh
set -u
O=/tmp/o5; mkdir -p $O/L $O/B
pack() { tar czf $OUT/all.tgz -C $O . 2>/dev/null; }
export HETMOE_CACHE_DIR=/tmp/hetmoe-cache CI=true
echo "commit ${HETMOE_COMMIT:-?}; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader); $(grep -m1 'model name' /proc/cpuinfo)"
# T. the GPU tests of async uploads and re-placement (streaming copies now take the async path)
if ! node -e "require.resolve('tap')" 2>/dev/null; then
  mkdir -p node_modules/tap && cp test/gpu-tap-shim.cjs node_modules/tap/index.cjs
  echo '{"name":"tap","version":"0.0.0-shim","main":"index.cjs"}' > node_modules/tap/package.json
fi
mkdir -p $O/T
for f in gpu-upload-async gpu-runtime-replace; do
  timeout -k 5 60 node dist/test/$f.test.js > $O/T/$f.log 2>&1
  echo "T $f rc $?: $(grep -cE '^\s*ok' $O/T/$f.log) ok, $(grep -cE '^\s*not ok' $O/T/$f.log) not ok"; grep -E "not ok" $O/T/$f.log | head -3
done
timeout -k 5 120 node dist/bench/layer-probe.js ${L_TOKENS:-1,16,256,4096} ${L_FORWARDS:-20} --json $O/L/layer-probe.json > $O/L/stdout.txt 2>&1
echo "L rc $?"; cat $O/L/stdout.txt
pack
OUT=$O/B SKIP_HYBRID=1 PLACE_CASES="${PLACE_CASES:-1:0.25 4096:0.1 4096:0.25 256:0.25}" timeout -k 5 240 bash bench/gpu-machine.sh 2 > $O/B/stdout.txt 2>&1
echo "B rc $?"; grep -E "ratio|wall|layer [0-9]" $O/B/stdout.txt
node dist/runtime/cli/main.js info | grep -A8 "^calibration" | head -10; cp $HETMOE_CACHE_DIR/calibration-*.json $O/B/ 2>/dev/null
pack
echo "done at $SECONDS s"
