#!/usr/bin/env bash
# A short device call (about 4 minutes) after call 3, most needed first, each part packed into $OUT/all.tgz:
#   C. issue #7: the overhead headline on the tiny models (gaps 0 and 300 µs), twice
#   W. routing and combine at real widths (gate GEMMs shared from 256K products on 8+ workers, 585c73f),
#      and gate blocks of 1, 2 or 4 tokens (HETMOE_GATE_BLOCK_TOKENS)
#   P. the combine and row copies on the crew against the calling thread (bench/combine-probe.ts)
#   B. issue #6: calibration, then place vs run at batch 4096 with a 10% budget (a hybrid plan, CPU experts
#      beside the GPU), and at batch 256 and 4096 with 25%
#   S. the 10% plan at 4096 again: GPU wait spinning or sleeping, main thread joining the CPU job or not,
#      alternating (is the CPU side slowed by oversubscription?)
# From the repo root: source .gpu/enter.sh && HETMOE_COMMIT=<c> bash bench/results/h100-xeon16-2026-12-06/device-4.sh
# Shorter: C_RUNS=1 PLACE_CASES=4096:0.1 S_ROUNDS=1 S_UNTIL=<s> (the parts' sizes; defaults as above).
set -u
O=/tmp/o4; mkdir -p $O/C $O/W $O/B $O/S
pack() { tar czf $OUT/all.tgz -C $O . 2>/dev/null; }
H="node dist/runtime/cli/main.js"
export HETMOE_CACHE_DIR=/tmp/hetmoe-cache CI=true
echo "commit ${HETMOE_COMMIT:-?}; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader); $(grep -m1 'model name' /proc/cpuinfo)"
for r in ${C_RUNS:-1 2}; do
  timeout -k 5 80 $H bench overhead --models tiny-rre,tiny-gate --gap-us 0,300 --iters 2000 --json $O/C/overhead-r$r.json > $O/C/stdout-r$r.txt 2>/dev/null
  echo "C r$r (µs, route+dispatch+combine): $(grep -E '^dispatch' $O/C/stdout-r$r.txt | awk '{printf "%s/T%s/g%s %.1f  ", $2, $6, $5, $9+$10+$11}')"
  grep -E '^clock' $O/C/stdout-r$r.txt
done
pack
for v in "default" "tokens1 HETMOE_GATE_BLOCK_TOKENS=1" "tokens2 HETMOE_GATE_BLOCK_TOKENS=2" "default2" "tokens1b HETMOE_GATE_BLOCK_TOKENS=1"; do
  set -- $v; name=$1; shift
  env "$@" timeout -k 5 60 $H bench overhead --models mixtral-width,fine-width --gap-us 0 --iters 1500 --json $O/W/width-$name.json > $O/W/stdout-$name.txt 2>/dev/null
  echo "W $name: $(grep -E '^width' $O/W/stdout-$name.txt | awk '{printf "%s/T%s route %s combine %s; ", $2, $6, $9, $11}')"
done
pack
# P. the combine and row copies on the crew against the calling thread (508bba7), decode to prefill sizes
mkdir -p $O/P
timeout -k 5 60 node dist/bench/combine-probe.js 16x2x4096,64x2x4096,256x2x4096,4096x2x4096,4096x6x2048,4096x1x2048 30 > $O/P/stdout.txt 2>&1
echo "P rc $?"; cat $O/P/stdout.txt
pack
OUT=$O/B SKIP_HYBRID=1 PLACE_CASES="${PLACE_CASES:-4096:0.1 256:0.25 4096:0.25}" timeout -k 5 200 bash bench/gpu-machine.sh 2 > $O/B/stdout.txt 2>&1
echo "B rc $?"; grep -E "ratio|wall|layer 0" $O/B/stdout.txt
$H info | grep -A8 "^calibration" | head -10; cp $HETMOE_CACHE_DIR/calibration-*.json $O/B/ 2>/dev/null
pack
if [ -f $O/B/plan-b4096-0.1.json ]; then
  for round in ${S_ROUNDS:-1 2}; do
    for v in "0 1" "1 1" "1 0" "0 0"; do
      [ $SECONDS -gt ${S_UNTIL:-520} ] && break 2
      set -- $v; tag="sleep$1-join$2-r$round"
      HETMOE_GPU_SLEEP_BESIDE_CPU=$1 HETMOE_CPU_JOIN_BESIDE_GPU=$2 timeout -k 5 30 $H run --model /tmp/sl --plan $O/B/plan-b4096-0.1.json --tokens /tmp/zipf-32768.txt --domain 0 --json > $O/S/run-$tag.json 2>/dev/null
      node -e "const r=require('$O/S/run-$tag.json').report; console.log('$tag', r.tokensPerS.toFixed(0), 'tok/s; cpu', r.perLayer.map(l=>(l.cpuMs??0).toFixed(2)).join(' '), '; gpu', r.perLayer.map(l=>(l.gpuMs??0).toFixed(2)).join(' '), '; route', r.perLayer.map(l=>(l.routeMs??0).toFixed(2)).join(' '))" 2>&1 | tail -1
    done
  done
  pack
fi
echo "done at $SECONDS s"
