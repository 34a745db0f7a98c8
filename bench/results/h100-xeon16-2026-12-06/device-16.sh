#!/usr/bin/env bash
# Call 16 (about 4 minutes on a fresh machine): device-12.sh (calibration, place vs run on sigma-lite,
# P runs), then
#   A. bench/app-loop-probe.ts with B's 256-token and 4096-token plans (25%): the runtime's stages under
#      hetmoe run's loop, a loop without its long input generation, and the calibration probe's loops;
#      where do the 256-token layers lose the ~0.25 ms a layer place does not predict?
#   L. hetmoe run of the 256-token plan on 32768 tokens (128 batches, where B runs 16): how steady is B's ratio?
# From the repo root: source .gpu/enter.sh && HETMOE_COMMIT=<c> bash bench/results/h100-xeon16-2026-12-06/device-16.sh
HERE="$(dirname "$0")"
bash "$HERE/device-12.sh"
O=/tmp/o12; source "$HERE/device-common.sh"; mkdir -p $O/A $O/L
for c in 256:/tmp/zipf.txt:32 4096:/tmp/zipf-32768.txt:8; do
  B=${c%%:*}; rest=${c#*:}; TOK=${rest%%:*}; N=${rest##*:}
  [ -f $O/B/plan-b$B-0.25.json ] || continue
  timeout -k 5 90 node dist/bench/app-loop-probe.js /tmp/sl $O/B/plan-b$B-0.25.json $TOK $B $N --json $O/A/b$B.json 2>&1 | tee $O/A/b$B.txt
  pack
done
if [ -f $O/B/plan-b256-0.25.json ]; then
  pred=$(node -e "console.log(require('$O/B/place-b256-0.25.json').predicted.decodeTokensPerS)")
  for i in 1 2; do
    timeout -k 5 60 $H run --model /tmp/sl --plan $O/B/plan-b256-0.25.json --tokens /tmp/zipf-32768.txt --domain 0 --json > $O/L/run-$i.json 2>/dev/null
    node -e "const r=require('$O/L/run-$i.json').report; console.log('L 256/25% on', r.tokens, 'tokens: tokens/s', r.tokensPerS.toFixed(0), 'ratio', (r.tokensPerS/$pred).toFixed(3), '| layer ms', r.perLayer.map(l=>l.msPerBatch.toFixed(3)).join(' '), '| route', r.perLayer.map(l=>l.routeMs.toFixed(3)).join(' '), '| gpu', r.perLayer.map(l=>(l.gpuMs??0).toFixed(3)).join(' '))" 2>&1 | tail -1
    pack
  done
fi
echo "done at $SECONDS s"
