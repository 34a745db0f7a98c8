#!/usr/bin/env bash
# Call 9 (about 2 minutes on a fresh machine), packed into $OUT/all.tgz: call 8's 25% plan for sigma-lite at
# 4096 tokens (call8-8c3b0b2/B/plan-b4096-0.25.json) run for 8 batches at a time, alternating
#   def  the defaults
#   inl  HETMOE_GPU_INLINE_PREFILL=1 (call 8 ran one batch a variant: 1-4% faster)
#   pf0  HETMOE_PREFETCH=0 (the lookahead's work at the end of every forward, which no layer's stage clock sees)
# Each line: tokens/s, forward() time a batch against the layers' stage clocks summed, and the GPU side
# less its native call per layer.
# From the repo root: source .gpu/enter.sh && HETMOE_COMMIT=<c> bash bench/results/h100-xeon16-2026-12-06/device-10.sh
O=/tmp/o10; source "$(dirname "$0")/device-common.sh"; mkdir -p $O/R
PLAN="$(dirname "$0")/call8-8c3b0b2/B/plan-b4096-0.25.json"
timeout -k 5 90 $H synth --preset sigma-lite --out /tmp/sl --force > $O/synth.txt 2>&1; echo "synth rc $? at $SECONDS s"
node --input-type=module -e "
import { zipfTokens } from './dist/runtime/token-stream.js'; import { writeFileSync } from 'node:fs'
writeFileSync('/tmp/zipf-32768.txt', Array.from(zipfTokens(32768, 32000, 1.1, 7)).join(' '))"
for v in ${R_ROUNDS:-def inl pf0 def inl pf0 def inl}; do
  f=$O/R/run-$v-$SECONDS.json
  case $v in
    def) e="" ;;
    inl) e="HETMOE_GPU_INLINE_PREFILL=1" ;;
    pf0) e="HETMOE_PREFETCH=0" ;;
  esac
  env $e timeout -k 5 60 $H run --model /tmp/sl --plan $PLAN --tokens /tmp/zipf-32768.txt --domain 0 --json > $f 2>/dev/null
  node -e "const r=require('$f').report; const L=r.perLayer; const sum=L.reduce((s,l)=>s+l.msPerBatch,0); console.log('R $v tokens/s', r.tokensPerS.toFixed(0), '| forward ms a batch', (1e3*r.seconds/r.batches).toFixed(2), 'layers', sum.toFixed(2), '| gpu less native', L.map(l=>((l.gpuMs??0)-(l.gpuHostMs??0)).toFixed(2)).join(' '), '| cpu', L.map(l=>(l.cpuMs??0).toFixed(2)).join(' '))" 2>&1 | tail -1
  pack
done
echo "done at $SECONDS s"
