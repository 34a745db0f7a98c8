#!/usr/bin/env bash
# Call 23 (about 2 minutes, no calibration): why the calibration's one-row layer call costs 51-64 µs
# beyond its experts' terms on calls 20-22's hosts, where sigma-lite's batch-1 layers cost about 40.
# bench/app-loop-probe.ts at 1 and 16 tokens, every expert on the GPU, under the same loops (layer0 is
# the calibration probe's), on sigma-lite (RRE, 64 experts a layer) and on the dense probe model
# (gated top-1 with scales, 16 experts): if the probe model's GPU side is the slower one under the same
# loop, the gap is the model's path through forward(); if they agree, it is the calibration's setting.
# From the repo root: source .gpu/enter.sh && HETMOE_COMMIT=<c> bash bench/results/h100-xeon16-2026-12-06/device-23.sh
O=/tmp/o23; source "$(dirname "$0")/device-common.sh"; mkdir -p $O/M
node dist/runtime/cli/main.js synth --preset sigma-lite --out /tmp/sl > /dev/null
node --input-type=module -e "
import { synthModel } from './dist/experts/synth.js'; import { zipfTokens } from './dist/runtime/token-stream.js'; import { writeFileSync } from 'node:fs'
const ids = Array.from(zipfTokens(4096, 32000, 1.1, 7)); writeFileSync('/tmp/zipf.txt', ids.join(' ')); writeFileSync('/tmp/probe-tokens.txt', ids.map((x) => x % 1000).join(' '))
await synthModel({ preset: { name: 'calibration-dense', layers: 1, hidden: 2048, inner: 4096, ffn: 'swiglu', routing: { kind: 'gate', experts: 16, topK: 1, normalize: false }, vocabSize: 1000 }, out: '/tmp/probe-dense', format: 'dense', overwrite: true })"
echo "models ready at $SECONDS s"
for b in 1:1024 16:256; do
  for m in sl probe; do
    B=${b%%:*}; N=${b##*:}; M=/tmp/sl; TOK=/tmp/zipf.txt; [ $m = probe ] && { M=/tmp/probe-dense; TOK=/tmp/probe-tokens.txt; }
    echo "M $m, $B tokens"
    timeout -k 5 90 node dist/bench/app-loop-probe.js $M all $TOK $B $N --json $O/M/$m-b$B.json 2>&1 | tail -6 | tee $O/M/$m-b$B.txt
    pack
  done
done
echo "done at $SECONDS s"
