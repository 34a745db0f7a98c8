#!/usr/bin/env bash
# Call 8 (it ran as the eighth call; about 6-7 minutes on a fresh machine in full), packed into $OUT/all.tgz:
#   T. the real-GPU test of inline prefill calls (new)
#   B. calibration, then place vs run on sigma-lite (4096 with 25% and 10%, 256 with 25%), defaults
#   I. HETMOE_GPU_INLINE_PREFILL=1 (7513895): place's prediction with it, and runs alternating with the default
#      and with the old beside-GPU behaviour (HETMOE_CPU_JOIN_BESIDE_GPU=1 HETMOE_GPU_SLEEP_BESIDE_CPU=0)
#   E. bench/cpu-expert-probe.ts: one sigma-lite expert's CPU job at 25-400 tokens against its predicted time
#   K. issue #7: tiny-gate's overhead with posted jobs admitting at most work / HETMOE_CREW_SHARE_WORK workers,
#      and with the kernels one level down (HETMOE_ISA=avx512bf16) against the default
#   W. bench/width-probe.ts (the gate's vector-lane exps, 3c73db1, not measured yet)
# Shorter (low device time): PLACE_CASES=4096:0.25 I_ROUNDS="def inl def inl" K_VARIANTS="..." SKIP_W=1.
# From the repo root: source .gpu/enter.sh && HETMOE_COMMIT=<c> bash bench/results/h100-xeon16-2026-12-06/device-9.sh
O=/tmp/o9; source "$(dirname "$0")/device-common.sh"; mkdir -p $O/T $O/B $O/K $O/W
gpu_tests ${T_FILES:-gpu-runtime-inline}
pack
# K: each variant an env setting (the crew's share-work cap, the kernel level), the default first and last.
K_VARIANTS=${K_VARIANTS:-"HETMOE_CREW_SHARE_WORK=0 HETMOE_CREW_SHARE_WORK=131072 HETMOE_CREW_SHARE_WORK=262144 HETMOE_CREW_SHARE_WORK=524288 HETMOE_ISA=avx512bf16 HETMOE_CREW_SHARE_WORK=0"}
for v in $K_VARIANTS; do
  f=$O/K/stdout-$v-$SECONDS.txt
  env $v timeout -k 5 60 $H bench overhead --models ${K_MODELS:-tiny-gate,tiny-rre} --gap-us 0,300 --iters ${K_ITERS:-1200} --json $O/K/overhead-$v-$SECONDS.json > $f 2>/dev/null
  echo "K $v (µs, route+dispatch+combine): $(grep -hE '^dispatch' $f | awk '{printf "%s/T%s/g%s %.1f  ", $2, $6, $5, $9+$10+$11}')"
done
pack
timeout -k 5 150 $H calibrate > $O/B/calibrate.txt 2>&1; echo "calibrate rc $?"; grep -E "^(CPU|GPU)" $O/B/calibrate.txt
touch $HETMOE_CACHE_DIR/calibration-done; cp $HETMOE_CACHE_DIR/calibration-*.json $O/B/ 2>/dev/null
OUT=$O/B SKIP_HYBRID=1 PLACE_CASES="${PLACE_CASES:-4096:0.25 4096:0.1 256:0.25}" timeout -k 5 200 bash bench/gpu-machine.sh 2 > $O/B/stdout.txt 2>&1
echo "B rc $?"; grep -E "ratio|wall" $O/B/stdout.txt
pack
# I: the same budgets planned with inline prefill calls, then run alternating with the default (and the old sides).
old="HETMOE_CPU_JOIN_BESIDE_GPU=1 HETMOE_GPU_SLEEP_BESIDE_CPU=0"
for plan in b4096-0.25 b4096-0.1; do
  [ -f $O/B/plan-$plan.json ] || continue
  budget=$(node -e "console.log(require('$O/B/plan-$plan.json').budgetBytes)")
  HETMOE_GPU_INLINE_PREFILL=1 timeout -k 5 60 $H place --model /tmp/sl --tokens /tmp/zipf.txt --domain 0 --gpu-mem $budget --batch 4096 --out $O/B/plan-$plan-inl.json --json > $O/B/place-$plan-inl.json
  pred=$(node -e "console.log(require('$O/B/place-$plan-inl.json').predicted.decodeTokensPerS.toFixed(0))")
  pred0=$(node -e "console.log(require('$O/B/place-$plan.json').predicted.decodeTokensPerS.toFixed(0))")
  echo "I $plan predicted tokens/s: default $pred0, inline prefill $pred"
  rounds=${I_ROUNDS:-"def inl def inl old inl"}; [ $plan = b4096-0.1 ] && rounds="def inl"
  for v in $rounds; do
    f=$O/B/run-$plan-$v-$SECONDS.json
    case $v in
      def) timeout -k 5 60 $H run --model /tmp/sl --plan $O/B/plan-$plan.json --tokens /tmp/zipf.txt --domain 0 --json > $f 2>/dev/null; p=$pred0 ;;
      inl) HETMOE_GPU_INLINE_PREFILL=1 timeout -k 5 60 $H run --model /tmp/sl --plan $O/B/plan-$plan-inl.json --tokens /tmp/zipf.txt --domain 0 --json > $f 2>/dev/null; p=$pred ;;
      old) env $old timeout -k 5 60 $H run --model /tmp/sl --plan $O/B/plan-$plan.json --tokens /tmp/zipf.txt --domain 0 --json > $f 2>/dev/null; p=$pred0 ;;
    esac
    node -e "const r=require('$f').report; const L=r.perLayer; console.log('I $plan $v tokens/s', r.tokensPerS.toFixed(0), 'ratio', (r.tokensPerS/$p).toFixed(3), '| layer ms', L.map(l=>l.msPerBatch.toFixed(2)).join(' '), '| route', L.map(l=>l.routeMs.toFixed(2)).join(' '), '| cpu', L.map(l=>(l.cpuMs??0).toFixed(2)).join(' '), '| gpu', L.map(l=>(l.gpuMs??0).toFixed(2)).join(' '), '| gpu less native', L.map(l=>((l.gpuMs??0)-(l.gpuHostMs??0)).toFixed(2)).join(' '))" 2>&1 | tail -1
  done
  pack
done
# E: one sigma-lite expert's CPU job alone at prefill-size token counts, against the cost model's charge.
[ -d /tmp/sl ] && timeout -k 5 60 node dist/bench/cpu-expert-probe.js /tmp/sl 25,50,100,200,400 15 --json $O/B/cpu-expert.json > $O/B/cpu-expert.txt 2>&1; echo "E:"; cat $O/B/cpu-expert.txt
pack
[ -n "${SKIP_W:-}" ] && { echo "done at $SECONDS s (W skipped)"; exit 0; }
timeout -k 5 60 node dist/bench/width-probe.js 1,4,16 1000 --json $O/W/probe.json > $O/W/probe.txt 2>&1; echo "W probe:"; cat $O/W/probe.txt
pack
echo "done at $SECONDS s"
