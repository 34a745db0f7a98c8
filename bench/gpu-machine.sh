#!/usr/bin/env bash
# The whole-system run on the GPU machine (H100 + 16-core Xeon), one call of the device tool:
#   source .gpu/enter.sh && bash bench/gpu-machine.sh 1        (part 1: info, overhead, calibration, demo)
#   source .gpu/enter.sh && bash bench/gpu-machine.sh 2        (part 2: sigma-lite place vs run, hybrid bench)
#   source .gpu/enter.sh && bash bench/gpu-machine.sh 3        (part 3: agreement of CPU, GPU and hybrid with float64)
#   PART 2 takes BUDGETS, BATCHES, STREAMS and STRATEGIES (defaults 0,0.1,0.25,0.5,1 / 1,16,256 / zipf / all), SKIP_PLACE=1,
#   PLACE_CASES (place vs run cases, batch:budget-fraction, default 16:0.25), SKIP_HYBRID=1
#   and HYBRID_NAME (the hybrid bench's output files, default hybrid).
# Each part fits one device call (10 minutes); everything is written under $OUT. Pass the commit you built
# (HETMOE_COMMIT=$(git rev-parse --short HEAD) here, written into the command): the device's .git is stale.
# It builds nothing (the addon and dist/ are carried from the development machine). Order: cheap and
# essential first, so a run cut short still returns the foundation and runtime evidence.
set -uo pipefail
OUT=${OUT:-/tmp/hetmoe-out}
mkdir -p "$OUT"
export HETMOE_CACHE_DIR=/tmp/hetmoe-cache HETMOE_COMMIT=${HETMOE_COMMIT:-unknown} CI=true
H="node dist/runtime/cli/main.js"
step() { echo; echo "=== $* ($(date +%T))"; }

PART=${1:-1}
if [ "$PART" = 1 ]; then
step info
$H info --json > "$OUT/info.json"; $H info
node -e "const {Worker}=require('worker_threads'); const w=new Worker('const a=require(process.env.A); require(\"worker_threads\").parentPort.postMessage(a.info().gpu.devices.map(d=>d.name))',{eval:true,env:{A:require('path').resolve('build/Release/hetmoe.node')}}); w.on('message',m=>console.log('addon loaded in a worker thread; it sees',JSON.stringify(m))); w.on('error',e=>{console.error(e);process.exit(1)})"

step overhead
$H bench overhead --iters 3000 --json "$OUT/overhead.json"

step calibrate
$H calibrate --json > "$OUT/calibration.json" && $H info | tail -12 && touch "$HETMOE_CACHE_DIR/calibration-done"

step demo
$H demo --json > "$OUT/demo.json"; tail -c 1500 "$OUT/demo.json"

fi

if [ "$PART" = 3 ]; then
step agreement
# Sparse synthesis prunes in JavaScript (~20 MB/s): every format on the small presets, dense on the big ones.
# 512 tokens through fine (top-6 of 64 experts: ~48 rows per expert) takes the GPU's wgmma path.
$H bench agreement --presets tiny,fine --tokens ${AGREEMENT_TOKENS:-1,8,512} --json "$OUT/agreement.json" | tail -3
$H bench agreement --presets small,mixtral --formats dense --tokens 1,8 --json "$OUT/agreement-big.json" | tail -3
fi

if [ "$PART" = 2 ]; then
[ -f "$HETMOE_CACHE_DIR/calibration-done" ] || $H calibrate > /dev/null
PRESET=${PRESET:-sigma-lite}
step $PRESET synth
$H synth --preset $PRESET --out /tmp/sl --force
# The model's bytes (16 GiB for sigma-lite) go to disk before anything is timed: call 20's first case ran
# while they were written back, at 30.1k tokens/s where the same plan 40 s later ran at 37.6-39.5k.
TIMEFORMAT="sync after synth %R s"; time sync
# Zipf(1.1) token files, seed 7: /tmp/zipf.txt has 4096 tokens, /tmp/zipf-N.txt N (the same first 4096).
zipf() { node --input-type=module -e "
import { zipfTokens } from './dist/runtime/token-stream.js'; import { writeFileSync } from 'node:fs'
writeFileSync('$2', Array.from(zipfTokens($1, 32000, 1.1, 7)).join(' '))"; }
zipf 4096 /tmp/zipf.txt

if [ -z "${SKIP_PLACE:-}" ]; then
TOTAL=$(node --input-type=module -e "
import {loadModel} from './dist/experts/model.js'; import {expertShape} from './dist/scheduler/cost-model.js';
const m=await loadModel('/tmp/sl'); let b=0; for (const l of m.manifest.layers) for (const e of l.experts) b+=expertShape(e).bytes; console.log(b)")
# PLACE_CASES: batch:budget-fraction pairs; each is planned by \`hetmoe place\`, then run by \`hetmoe run\` with that plan.
for CASE in ${PLACE_CASES:-16:0.25}; do
B=${CASE%%:*}; F=${CASE##*:}; TAG="b$B-$F"
# At least 4096 tokens and 8 batches a case (one batch of 4096 measured one sample a layer).
TOK=/tmp/zipf.txt; if [ $((8 * B)) -gt 4096 ]; then TOK=/tmp/zipf-$((8 * B)).txt; [ -f $TOK ] || zipf $((8 * B)) $TOK; fi
BUDGET=$(node -e "console.log(Math.floor($TOTAL*$F))")
step "place vs run, $PRESET, batch $B, $F of expert bytes ($BUDGET bytes)"
TIMEFORMAT="place wall %R s"; time $H place --model /tmp/sl --tokens $TOK --domain 0 --gpu-mem "$BUDGET" --batch $B --out "$OUT/plan-$TAG.json" --json > "$OUT/place-$TAG.json"
$H place --model /tmp/sl --tokens $TOK --domain 0 --gpu-mem "$BUDGET" --batch $B | tail -4
$H run --model /tmp/sl --plan "$OUT/plan-$TAG.json" --tokens $TOK --domain 0 --json > "$OUT/run-$TAG.json"
node -e "const p=require('$OUT/place-$TAG.json'), r=require('$OUT/run-$TAG.json'); console.log('$TAG predicted decode', p.predicted.decodeTokensPerS.toFixed(1), 'tokens/s; measured', r.report.tokensPerS.toFixed(1), 'tokens/s; ratio', (r.report.tokensPerS/p.predicted.decodeTokensPerS).toFixed(3), '; GPU share predicted', p.gpuTokenShare.toFixed(3), 'measured', r.report.gpuTokenShare.toFixed(3)); for (const [i,l] of r.report.perLayer.entries()) console.log('  layer', i, 'predicted', JSON.stringify(p.layers[i].predictedMs), 'measured ms', l.msPerBatch.toFixed(3), 'route', l.routeMs.toFixed(3), 'gpu', (l.gpuMs??0).toFixed(3), 'host', (l.gpuHostMs??0).toFixed(3), 'stream', (l.gpuStreamMs??0).toFixed(3), 'copy in', (l.gpuCopyInMs??0).toFixed(3), 'kernel', (l.gpuKernelMs??0).toFixed(3), 'cpu', (l.cpuMs??0).toFixed(3))"
done
fi

if [ -z "${SKIP_HYBRID:-}" ]; then
step hybrid bench, $PRESET
$H bench hybrid --model /tmp/sl --batches ${BATCHES:-1,16,256} --streams ${STREAMS:-zipf} --budgets ${BUDGETS:-0,0.1,0.25,0.5,1} ${STRATEGIES:+--strategies $STRATEGIES} --seconds 1 --json "$OUT/${HYBRID_NAME:-hybrid}.json" --md "$OUT/${HYBRID_NAME:-hybrid}.md" --chart "$OUT/${HYBRID_NAME:-hybrid}.svg"
fi
fi
echo; echo "=== done ($(date +%T))"
