#!/usr/bin/env bash
# Call 18 (about 3 minutes): device-12.sh (calibration, place vs run on sigma-lite), then
#   S. does the scan pool's reading of the hidden rows slow the GPU's copy-in? On call 17's host
#      sigma-lite's GPU-only layers copied their rows in at 8 GB/s (4 ms at 4096 rows) where the
#      calibration's gated probe model, whose routing reads the rows on the crew's spinning workers,
#      copied the same bytes in at 20-30 GB/s, and sigma-lite's layer 0 with a CPU job beside (workers
#      busy) at 34. bench/app-loop-probe.ts over call 17's 256-token plan (every active expert on the
#      GPU), at 256 and 4096 tokens: the scan as shipped (its helpers sleep at once), on the calling
#      thread alone (HETMOE_SCAN_PARALLEL_MIN=0), and with its helpers awake 3 ms after each scan
#      (HETMOE_SCAN_SPIN_US=3000).
# From the repo root: source .gpu/enter.sh && HETMOE_COMMIT=<c> P_ROUNDS="" bash bench/results/h100-xeon16-2026-12-06/device-17.sh
HERE="$(dirname "$0")"
bash "$HERE/device-12.sh"
O=/tmp/o12; source "$HERE/device-common.sh"; mkdir -p $O/S
PLAN=$HERE/call17-af96e1a/B/plan-b256-0.25.json
for v in shipped serial spin3ms; do
  e=""; [ $v = serial ] && e="HETMOE_SCAN_PARALLEL_MIN=0"; [ $v = spin3ms ] && e="HETMOE_SCAN_SPIN_US=3000"
  for c in 256:/tmp/zipf.txt:32 4096:/tmp/zipf-32768.txt:8; do
    B=${c%%:*}; rest=${c#*:}; TOK=${rest%%:*}; N=${rest##*:}
    echo "S $v, $B tokens"
    env $e timeout -k 5 90 node dist/bench/app-loop-probe.js /tmp/sl $PLAN $TOK $B $N --json $O/S/$v-b$B.json 2>&1 | tail -6 | tee $O/S/$v-b$B.txt
    pack
  done
done
echo "done at $SECONDS s"
