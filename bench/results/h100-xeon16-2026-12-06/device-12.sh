#!/usr/bin/env bash
# Calls 11-13 (about 3-4 minutes on a fresh machine), packed into $OUT/all.tgz:
#   T. with T_FILES set (call 13: "gpu-runtime-replace gpu-runtime-stream"), those GPU tests first
#   C. calibration with layer calls measured whole (runtime/calibration.ts layerCallProbe: forward() on a
#      one-layer dense model, all experts on the GPU, at 64-4096 rows, and one expert on the CPU beside it)
#   B. place vs run on sigma-lite: 4096 tokens with 25% and 10% of its bytes, 256 with 25%, 16 with 25%
#      (PLACE_CASES; call 13 adds 1:0.25)
#   R. the 4096/25% plan run again three times (the spread of one run); R_CASES="4096:0.1 1:0.25 ...":
#      each of those cases' plans instead (call 22)
#   P. the 4096/10% plan (streaming) alternating HETMOE_PREFETCH=0 and the default: what the lookahead's
#      copies, overlapping the run's residual adds between layers, take off the forward time; or (call 20,
#      P_ROUNDS="def t15 def t15") with a crew of 15 workers (HETMOE_CPU_THREADS=15, the calibration being
#      the 16-worker one), which leaves a core to the copies' staging thread
# Shorter: R_RUNS="" (no R), P_ROUNDS="pf0 def", CALIBRATION=<an earlier call's calibration-*.json> (no C).
# Call 10 ran this script's first version, without P (`git show 6177b77:bench/results/h100-xeon16-2026-12-06/device-11.sh`).
# From the repo root: source .gpu/enter.sh && HETMOE_COMMIT=<c> bash bench/results/h100-xeon16-2026-12-06/device-12.sh
O=/tmp/o12; source "$(dirname "$0")/device-common.sh"; mkdir -p $O/B $O/R
[ -n "${T_FILES:-}" ] && { gpu_tests $T_FILES; pack; }
if [ -n "${CALIBRATION:-}" ]; then
  # A calibration measured by an earlier call on this kind of machine, instead of measuring (85 s).
  mkdir -p $HETMOE_CACHE_DIR && cp "$CALIBRATION" $HETMOE_CACHE_DIR/ && $H info > $O/B/calibrate.txt 2>&1; echo "C calibration from $CALIBRATION"
else
  timeout -k 5 240 $H calibrate > $O/B/calibrate.txt 2>&1; echo "C calibrate rc $? at $SECONDS s"; grep -vE "^\s*$" $O/B/calibrate.txt | tail -14
fi
touch $HETMOE_CACHE_DIR/calibration-done; cp $HETMOE_CACHE_DIR/calibration-*.json $O/B/ 2>/dev/null
pack
OUT=$O/B SKIP_HYBRID=1 PLACE_CASES="${PLACE_CASES:-4096:0.25 256:0.25 4096:0.1 16:0.25}" timeout -k 5 240 bash bench/gpu-machine.sh 2 > $O/B/stdout.txt 2>&1
echo "B rc $? at $SECONDS s"; grep -E "ratio|layer 0|place wall" $O/B/stdout.txt
pack
# R: each of R_CASES' plans (default the 4096/25% one) run again R_RUNS times, on the token file B used.
for c in ${R_CASES:-4096:0.25}; do
  b=${c%%:*}; tag=b$b-${c##*:}; tok=/tmp/zipf.txt; [ $((8 * b)) -gt 4096 ] && tok=/tmp/zipf-$((8 * b)).txt
  [ -f $O/B/plan-$tag.json ] || { echo "R: no $tag plan"; continue; }
  pred=$(node -e "console.log(require('$O/B/place-$tag.json').predicted.decodeTokensPerS)")
  for i in ${R_RUNS-1 2 3}; do
    f=$O/R/run-$tag-$i.json
    timeout -k 5 60 $H run --model /tmp/sl --plan $O/B/plan-$tag.json --tokens $tok --domain 0 --json > $f 2>/dev/null
    node -e "const r=require('$f').report; const L=r.perLayer; const sum=L.reduce((s,l)=>s+l.msPerBatch,0); console.log('R $tag tokens/s', r.tokensPerS.toFixed(0), 'ratio', (r.tokensPerS/$pred).toFixed(3), '| forward ms a batch', (1e3*r.seconds/r.batches).toFixed(2), 'layers', sum.toFixed(2), '| gpu', L.map(l=>(l.gpuMs??0).toFixed(2)).join(' '), '| cpu', L.map(l=>(l.cpuMs??0).toFixed(2)).join(' '))" 2>&1 | tail -1
    pack
  done
done
[ -f $O/B/place-b4096-0.1.json ] || { echo "no 4096/10% plan; done at $SECONDS s"; exit 0; }
pred=$(node -e "console.log(require('$O/B/place-b4096-0.1.json').predicted.decodeTokensPerS)")
mkdir -p $O/P
for v in ${P_ROUNDS-pf0 def pf0 def}; do
  f=$O/P/run-$v-$SECONDS.json
  e=""; [ $v = pf0 ] && e="HETMOE_PREFETCH=0"; [ $v = t15 ] && e="HETMOE_CPU_THREADS=15"
  env $e timeout -k 5 60 $H run --model /tmp/sl --plan $O/B/plan-b4096-0.1.json --tokens /tmp/zipf-32768.txt --domain 0 --json > $f 2>/dev/null
  node -e "const r=require('$f').report; const L=r.perLayer; console.log('P $v tokens/s', r.tokensPerS.toFixed(0), 'ratio', (r.tokensPerS/$pred).toFixed(3), '| layer ms', L.map(l=>l.msPerBatch.toFixed(2)).join(' '), '| gpu', L.map(l=>(l.gpuMs??0).toFixed(2)).join(' '), '| cpu', L.map(l=>(l.cpuMs??0).toFixed(2)).join(' '), '| share', L.map(l=>l.gpuShare.toFixed(3)).join(' '))" 2>&1 | tail -1
  pack
done
echo "done at $SECONDS s"
