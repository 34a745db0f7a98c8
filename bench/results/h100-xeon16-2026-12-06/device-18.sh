#!/usr/bin/env bash
# Call 19 (about 4 minutes): device-12.sh (calibration, place vs run on sigma-lite), then
#   M. why did call 17's host copy sigma-lite's rows in at 8 GB/s where the calibration's probe model's
#      went at 20-30? bench/app-loop-probe.ts under the same loops on both models, every active expert
#      on the GPU: sigma-lite (RRE: the rows are read by the finiteness scan's pool) with the pool as
#      shipped and with the scan on the calling thread (HETMOE_SCAN_PARALLEL_MIN=0), and the dense probe
#      model (gated: from 64 rows its gate GEMM runs on the crew, whose workers then spin), at 256 and
#      4096 tokens; and sigma-lite with the crew's workers woken at each forward's start
#      (HETMOE_CREW_EARLY_WAKE=16: they spin through the copy-in though no job comes). If cores that
#      all sleep make the device's reads of host memory slow, sl-wake and the probe copy in fast and
#      sl-shipped slowly. On a host like call 18's, where neither was slow, this says little; look at
#      B's copy-in column first.
# From the repo root: source .gpu/enter.sh && HETMOE_COMMIT=<c> P_ROUNDS="" bash bench/results/h100-xeon16-2026-12-06/device-18.sh
HERE="$(dirname "$0")"
bash "$HERE/device-12.sh"
O=/tmp/o12; source "$HERE/device-common.sh"; mkdir -p $O/M
PROBE=$HETMOE_CACHE_DIR/calibration-models/v2-dense
# Token ids inside the probe model's vocabulary (1000); its gate ignores them.
node -e "const fs=require('fs'); fs.writeFileSync('/tmp/probe-tokens.txt', fs.readFileSync('/tmp/zipf-32768.txt','utf8').trim().split(/\\s+/).map(x=>x%1000).join(' '))"
for v in sl-shipped sl-serial sl-wake probe; do
  e=""; [ $v = sl-serial ] && e="HETMOE_SCAN_PARALLEL_MIN=0"; [ $v = sl-wake ] && e="HETMOE_CREW_EARLY_WAKE=16"
  M=/tmp/sl; PLAN=$O/B/plan-b256-0.25.json; [ $v = probe ] && { M=$PROBE; PLAN=all; }
  for c in 256:/tmp/zipf.txt:32 4096:/tmp/zipf-32768.txt:8; do
    B=${c%%:*}; rest=${c#*:}; TOK=${rest%%:*}; N=${rest##*:}; [ $v = probe ] && TOK=/tmp/probe-tokens.txt
    echo "M $v, $B tokens"
    env $e timeout -k 5 90 node dist/bench/app-loop-probe.js $M $PLAN $TOK $B $N --json $O/M/$v-b$B.json 2>&1 | tail -6 | tee $O/M/$v-b$B.txt
    pack
  done
done
echo "done at $SECONDS s"
