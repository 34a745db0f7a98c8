#!/usr/bin/env bash
# Call 7 (about 5-6 minutes on a fresh machine), packed into $OUT/all.tgz:
#   T. GPU tests: streaming and lookahead prefetch on the real device (new), async uploads
#   B. issue #6: calibration (now with DeviceRates.freshRows, never measured before), then place vs run on
#      sigma-lite: 256 and 4096 with 25% (all GPU: the fresh-row charge), 4096 with 10% (hybrid, streaming,
#      lookahead prefetch); then the 10% plan again with HETMOE_PREFETCH=0 and again with it on; S: the 25% plan
#      with the GPU wait sleeping and the main thread not joining the CPU job beside the GPU
#   C. issue #7: the overhead headline on the tiny models (gaps 0 and 300 µs); W: route and combine at real widths,
#      then bench/width-probe.ts splits them (copy in, gate on this thread or the crew, combine)
# From the repo root: source .gpu/enter.sh && HETMOE_COMMIT=<c> bash bench/results/h100-xeon16-2026-12-06/device-7.sh
set -u
O=/tmp/o7; mkdir -p $O/T $O/B $O/C $O/W
pack() { tar czf $OUT/all.tgz -C $O . 2>/dev/null; }
H="node dist/runtime/cli/main.js"
export HETMOE_CACHE_DIR=/tmp/hetmoe-cache CI=true
echo "commit ${HETMOE_COMMIT:-?}; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader); $(grep -m1 'model name' /proc/cpuinfo)"
if ! node -e "require.resolve('tap')" 2>/dev/null; then
  mkdir -p node_modules/tap && cp test/gpu-tap-shim.cjs node_modules/tap/index.cjs
  echo '{"name":"tap","version":"0.0.0-shim","main":"index.cjs"}' > node_modules/tap/package.json
fi
for f in ${T_FILES:-gpu-runtime-stream gpu-upload-async}; do
  timeout -k 5 60 node dist/test/$f.test.js > $O/T/$f.log 2>&1
  echo "T $f rc $?: $(grep -cE '^\s*ok' $O/T/$f.log) ok, $(grep -cE '^\s*not ok' $O/T/$f.log) not ok"; grep -E "not ok|# " $O/T/$f.log | head -6
done
pack
timeout -k 5 150 $H calibrate > $O/B/calibrate.txt 2>&1
echo "calibrate rc $?"; tail -14 $O/B/calibrate.txt; touch $HETMOE_CACHE_DIR/calibration-done; cp $HETMOE_CACHE_DIR/calibration-*.json $O/B/ 2>/dev/null
pack
OUT=$O/B SKIP_HYBRID=1 PLACE_CASES="${PLACE_CASES:-256:0.25 4096:0.25 4096:0.1}" timeout -k 5 260 bash bench/gpu-machine.sh 2 > $O/B/stdout.txt 2>&1
echo "B rc $?"; grep -E "ratio|wall|layer [0-9]" $O/B/stdout.txt
pack
# The 10% plan with and without lookahead prefetch (same plan and tokens), alternating.
if [ -f $O/B/plan-b4096-0.1.json ]; then
  for v in 0 1 0 1; do
    f=$O/B/run-prefetch$v-$SECONDS.json  # (call 7 read it back under a later second's name: its P lines failed; the files are fine)
    HETMOE_PREFETCH=$v timeout -k 5 60 $H run --model /tmp/sl --plan $O/B/plan-b4096-0.1.json --tokens /tmp/zipf.txt --domain 0 --json > $f 2>/dev/null
    node -e "const r=require('$f').report; console.log('P prefetch=$v tokens/s', r.tokensPerS.toFixed(0), 'gpu share', r.gpuTokenShare.toFixed(3), 'layer ms', r.perLayer.map(l=>l.msPerBatch.toFixed(1)).join(' '))" 2>&1 | tail -1
  done
fi
# The 25% plan's small CPU side beside the GPU call (1.5-1.9x its calibrated time in calls 5-6): the GPU
# wait spinning or sleeping, the main thread joining the CPU job or not.
if [ -f $O/B/plan-b4096-0.25.json ]; then
  for v in "" "HETMOE_GPU_SLEEP_BESIDE_CPU=1" "HETMOE_CPU_JOIN_BESIDE_GPU=0" "HETMOE_GPU_SLEEP_BESIDE_CPU=1 HETMOE_CPU_JOIN_BESIDE_GPU=0" ""; do
    f=$O/B/run-b4096-0.25-${v// /+}-$SECONDS.json
    env $v timeout -k 5 60 $H run --model /tmp/sl --plan $O/B/plan-b4096-0.25.json --tokens /tmp/zipf.txt --domain 0 --json > "$f" 2>/dev/null
    node -e "const r=require('$f').report; console.log('S ${v:-default} tokens/s', r.tokensPerS.toFixed(0), 'cpu ms', r.perLayer.map(l=>(l.cpuMs??0).toFixed(2)).join(' '), 'gpu ms', r.perLayer.map(l=>(l.gpuMs??0).toFixed(2)).join(' '))" 2>&1 | tail -1
  done
fi
pack
timeout -k 5 80 $H bench overhead --models tiny-rre,tiny-gate --gap-us 0,300 --iters 2000 --json $O/C/overhead.json > $O/C/stdout.txt 2>/dev/null
echo "C (µs, route+dispatch+combine): $(grep -E '^dispatch' $O/C/stdout.txt | awk '{printf "%s/T%s/g%s %.1f  ", $2, $6, $5, $9+$10+$11}')"
pack
timeout -k 5 60 $H bench overhead --models mixtral-width,fine-width --gap-us 0 --iters 1500 --json $O/W/width.json > $O/W/stdout.txt 2>/dev/null
echo "W: $(grep -E '^width' $O/W/stdout.txt | awk '{printf "%s/T%s route %s combine %s; ", $2, $6, $9, $11}')"
for v in ${W_BLOCKS:-4}; do
  HETMOE_GATE_BLOCK_TOKENS=$v timeout -k 5 60 node dist/bench/width-probe.js 1,4,16 1000 --json $O/W/probe-b$v.json > $O/W/probe-b$v.txt 2>&1; echo "W probe, gate blocks of $v tokens:"; cat $O/W/probe-b$v.txt
done
pack
echo "done at $SECONDS s"
