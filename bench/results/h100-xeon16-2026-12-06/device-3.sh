#!/usr/bin/env bash
# A short device call (about 4-5 minutes) for what came after call 2, most needed first, each part packed
# into $OUT/all.tgz as it ends:
#   A. test/gpu-layer.test.ts (default switch-over)
#   C. issue #7: `hetmoe bench overhead` on the tiny models, gaps 0 and 300 µs (the headline of
#      bench/overhead-xeon.sh, without its variants): the crew fix 6b9fb87
#   B. issue #6: calibration, then place vs run at batch 1, 16, 256 and 4096 (25% budget)
#   G. one sigma-lite expert on the CPU alone at 64/148/256 tokens (device-all.sh's G)
#   S. the 4096-token plan run again with HETMOE_GPU_SLEEP_BESIDE_CPU=0/1, HETMOE_CPU_JOIN_BESIDE_GPU=1/0
#      and 16 or 15 CPU threads, alternating: does oversubscription slow the CPU expert beside the GPU?
#   V. overhead variants: tiny-gate CPU block sizes and whole-expert blocks; real-width gates shared with the crew from 256K products
# From the repo root: source .gpu/enter.sh && HETMOE_COMMIT=<c> bash bench/results/h100-xeon16-2026-12-06/device-3.sh
set -u
O=/tmp/o3; mkdir -p $O
pack() { tar czf $OUT/all.tgz -C $O . 2>/dev/null; }
H="node dist/runtime/cli/main.js"
export HETMOE_CACHE_DIR=/tmp/hetmoe-cache CI=true
echo "commit ${HETMOE_COMMIT:-?}; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)"
if ! node -e "require.resolve('tap')" 2>/dev/null; then
  mkdir -p node_modules/tap && cp test/gpu-tap-shim.cjs node_modules/tap/index.cjs
  echo '{"name":"tap","version":"0.0.0-shim","main":"index.cjs"}' > node_modules/tap/package.json
fi
mkdir -p $O/A $O/C $O/B $O/G
timeout -k 5 60 node dist/test/gpu-layer.test.js > $O/A/gpu-layer.log 2>&1
echo "A rc $?: $(grep -E '^# [0-9]+ assertions' $O/A/gpu-layer.log | tail -1)"; grep -E "not ok" $O/A/gpu-layer.log | head -3
pack
timeout -k 5 90 $H bench overhead --models tiny-rre,tiny-gate --gap-us 0,300 --iters 2000 --json $O/C/overhead.json > $O/C/stdout.txt 2>/dev/null
echo "C rc $?"; sed -n 3,16p $O/C/stdout.txt
pack
OUT=$O/B SKIP_HYBRID=1 PLACE_CASES="1:0.25 16:0.25 256:0.25 4096:0.25" timeout -k 5 240 bash bench/gpu-machine.sh 2 > $O/B/stdout.txt 2>&1
echo "B rc $?"; grep -E "ratio|wall|layer 0" $O/B/stdout.txt
$H info | grep -A8 "^calibration" | head -10; cp $HETMOE_CACHE_DIR/calibration-*.json $O/B/ 2>/dev/null
pack
timeout -k 5 60 $H bench cpu --preset sigma-lite --isa amx --formats dense --tokens 64,148,256 --weights-mib 64 --no-onednn --no-verify --min-time 0.3 --json $O/G/cpu.json > $O/G/stdout.txt 2>&1
echo "G rc $?"; tail -6 $O/G/stdout.txt
pack
if [ -f $O/B/plan-b4096-0.25.json ]; then
  mkdir -p $O/S
  # variants: GPU thread spins or sleeps (SLEEP), main thread joins the CPU job or waits (JOIN),
  # 16 or 15 workers (THREADS); alternating, twice each
  for round in 1 2; do
    for v in "0 1 16" "1 1 16" "1 0 16" "0 0 16" "1 1 15" "1 0 15"; do
      set -- $v; tag="sleep$1-join$2-t$3-r$round"
      HETMOE_GPU_SLEEP_BESIDE_CPU=$1 HETMOE_CPU_JOIN_BESIDE_GPU=$2 HETMOE_CPU_THREADS=$3 timeout -k 5 30 $H run --model /tmp/sl --plan $O/B/plan-b4096-0.25.json --tokens /tmp/zipf-32768.txt --domain 0 --json > $O/S/run-$tag.json 2>/dev/null
      node -e "const r=require('$O/S/run-$tag.json').report; console.log('$tag', r.tokensPerS.toFixed(0), 'tok/s; cpu', r.perLayer.map(l=>(l.cpuMs??0).toFixed(2)).join(' '), '; gpu', r.perLayer.map(l=>(l.gpuMs??0).toFixed(2)).join(' '), '; route', r.perLayer.map(l=>(l.routeMs??0).toFixed(2)).join(' '))" 2>&1 | tail -1
    done
  done
  pack
fi
# V. overhead variants: tiny-gate with fewer, larger CPU blocks (48 blocks at T=16 by default), and the
#    real-width gates with the gate GEMM shared with the crew from 256K products (default 1M: mixtral's
#    16-token gate, 0.5M, runs on the calling thread)
mkdir -p $O/V
for v in "default" "rows64 HETMOE_CPU_BLOCK_ROWS=64" "rows128 HETMOE_CPU_BLOCK_ROWS=128" "whole1m HETMOE_CPU_WHOLE_EXPERT_WORK=1048576" "default2" "whole1m2 HETMOE_CPU_WHOLE_EXPERT_WORK=1048576"; do
  set -- $v; name=$1; shift
  [ $SECONDS -gt 500 ] && { echo "V: out of time at $SECONDS s"; break; }
  env "$@" timeout -k 5 40 $H bench overhead --models tiny-gate --gap-us 0,300 --iters 1500 --json $O/V/gate-$name.json > $O/V/gate-$name.txt 2>/dev/null
  echo "V tiny-gate $name: $(grep -E '^dispatch +tiny-gate' $O/V/gate-$name.txt | awk '{printf "%s@%s=%s+%s+%s ", $6, $5, $9, $10, $11}')"
done
for v in "default" "gate256k HETMOE_GATE_PARALLEL_MIN=262144" "default2" "gate256k2 HETMOE_GATE_PARALLEL_MIN=262144"; do
  set -- $v; name=$1; shift
  [ $SECONDS -gt 530 ] && { echo "V: out of time at $SECONDS s"; break; }
  env "$@" timeout -k 5 40 $H bench overhead --models mixtral-width,fine-width --gap-us 0 --iters 1500 --json $O/V/width-$name.json > $O/V/width-$name.txt 2>/dev/null
  echo "V width $name: $(grep -E '^width' $O/V/width-$name.txt | awk '{printf "%s/T%s route %s combine %s; ", $2, $6, $9, $11}')"
done
pack
echo "done at $SECONDS s"
