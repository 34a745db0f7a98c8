#!/usr/bin/env bash
# Call 20 (about 4 minutes): device-12.sh (calibration, now with copies timed beside CPU layer jobs,
# then place vs run on sigma-lite), then
#   H. the 4096-token hybrid plan (10% of sigma-lite's bytes) run again: twice as calibrated, and twice
#      with a crew of 15 workers (HETMOE_CPU_THREADS=15; the calibration is the 16-worker one), which
#      leaves a core to the copies' staging thread: is that a better fix than charging for the contention?
# From the repo root: source .gpu/enter.sh && HETMOE_COMMIT=<c> R_RUNS="" P_ROUNDS="" PLACE_CASES="..." bash bench/results/h100-xeon16-2026-12-06/device-20.sh
HERE="$(dirname "$0")"
bash "$HERE/device-12.sh"
O=/tmp/o12; source "$HERE/device-common.sh"; mkdir -p $O/H
[ -f $O/B/place-b4096-0.1.json ] || { echo "no 4096/10% plan; done at $SECONDS s"; exit 0; }
pred=$(node -e "console.log(require('$O/B/place-b4096-0.1.json').predicted.decodeTokensPerS)")
for v in def t15 def t15; do
  f=$O/H/run-$v-$SECONDS.json
  e=""; [ $v = t15 ] && e="HETMOE_CPU_THREADS=15"
  env $e timeout -k 5 60 $H run --model /tmp/sl --plan $O/B/plan-b4096-0.1.json --tokens /tmp/zipf-32768.txt --domain 0 --json > $f 2>/dev/null
  node -e "const r=require('$f').report; const L=r.perLayer; console.log('H $v tokens/s', r.tokensPerS.toFixed(0), 'ratio', (r.tokensPerS/$pred).toFixed(3), '| layer ms', L.map(l=>l.msPerBatch.toFixed(2)).join(' '), '| gpu', L.map(l=>(l.gpuMs??0).toFixed(2)).join(' '), '| cpu', L.map(l=>(l.cpuMs??0).toFixed(2)).join(' '), '| share', L.map(l=>l.gpuShare.toFixed(3)).join(' '))" 2>&1 | tail -1
  pack
done
echo "done at $SECONDS s"
