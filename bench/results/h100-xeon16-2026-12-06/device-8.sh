#!/usr/bin/env bash
# Call 8 (about 4-5 minutes on a fresh machine), packed into $OUT/all.tgz:
#   S. the sides beside each other by batch size (runtime.ts: sidesBeside): sigma-lite at 4096 tokens with a
#      25% and a 10% budget, the new defaults (workers alone, GPU wait asleep) against the old behaviour
#      forced (HETMOE_CPU_JOIN_BESIDE_GPU=1 HETMOE_GPU_SLEEP_BESIDE_CPU=0), alternating
#   K. issue #7: tiny-gate's overhead with posted jobs admitting at most work / HETMOE_CREW_SHARE_WORK workers
# From the repo root: source .gpu/enter.sh && HETMOE_COMMIT=<c> bash bench/results/h100-xeon16-2026-12-06/device-8.sh
O=/tmp/o8; source "$(dirname "$0")/device-common.sh"; mkdir -p $O/B $O/K
# K first: it needs no calibration or synthesis.
for s in ${K_SHARES:-0 262144 524288}; do
  HETMOE_CREW_SHARE_WORK=$s timeout -k 5 60 $H bench overhead --models ${K_MODELS:-tiny-gate,tiny-rre} --gap-us 0,300 --iters ${K_ITERS:-1500} --json $O/K/overhead-$s-$SECONDS.json > $O/K/stdout-$s-$SECONDS.txt 2>/dev/null
  echo "K share $s (µs, route+dispatch+combine): $(grep -hE '^dispatch' $(ls -t $O/K/stdout-$s-*.txt | head -1) | awk '{printf "%s/T%s/g%s %.1f  ", $2, $6, $5, $9+$10+$11}')"
done
pack
timeout -k 5 150 $H calibrate > $O/B/calibrate.txt 2>&1; echo "calibrate rc $?"; grep -E "^(CPU|GPU)" $O/B/calibrate.txt
touch $HETMOE_CACHE_DIR/calibration-done
OUT=$O/B SKIP_HYBRID=1 PLACE_CASES="${PLACE_CASES:-4096:0.25 4096:0.1}" timeout -k 5 200 bash bench/gpu-machine.sh 2 > $O/B/stdout.txt 2>&1
echo "B rc $?"; grep -E "ratio|wall" $O/B/stdout.txt
pack
old="HETMOE_CPU_JOIN_BESIDE_GPU=1 HETMOE_GPU_SLEEP_BESIDE_CPU=0"
for plan in b4096-0.25 b4096-0.1; do
  [ -f $O/B/plan-$plan.json ] || continue
  rounds="old new old new"; [ $plan = b4096-0.1 ] && rounds="old new"
  for v in $rounds; do
    f=$O/B/run-$plan-$v-$SECONDS.json
    if [ $v = old ]; then env $old timeout -k 5 60 $H run --model /tmp/sl --plan $O/B/plan-$plan.json --tokens /tmp/zipf.txt --domain 0 --json > $f 2>/dev/null
    else timeout -k 5 60 $H run --model /tmp/sl --plan $O/B/plan-$plan.json --tokens /tmp/zipf.txt --domain 0 --json > $f 2>/dev/null; fi
    node -e "const r=require('$f').report; console.log('S $plan $v tokens/s', r.tokensPerS.toFixed(0), 'cpu ms', r.perLayer.map(l=>(l.cpuMs??0).toFixed(2)).join(' '), 'gpu ms', r.perLayer.map(l=>(l.gpuMs??0).toFixed(2)).join(' '))" 2>&1 | tail -1
  done
  pack
done
echo "done at $SECONDS s"
