#!/usr/bin/env bash
# Call 6 (about 4-5 minutes), packed into $OUT/all.tgz:
#   B. issue #6: calibration (activation copies on freshly written rows, the GPU's `serial` share from an
#      uneven call), then place vs run on sigma-lite at batch 1, 16, 256 and 4096 with 25%, and 4096 with 10%
#   C. issue #7: the overhead headline on the tiny models (gaps 0 and 300 µs)
# From the repo root: source .gpu/enter.sh && HETMOE_COMMIT=<c> bash bench/results/h100-xeon16-2026-12-06/device-6.sh
set -u
O=/tmp/o6; mkdir -p $O/B $O/C
pack() { tar czf $OUT/all.tgz -C $O . 2>/dev/null; }
H="node dist/runtime/cli/main.js"
export HETMOE_CACHE_DIR=/tmp/hetmoe-cache CI=true
echo "commit ${HETMOE_COMMIT:-?}; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader); $(grep -m1 'model name' /proc/cpuinfo)"
timeout -k 5 150 $H calibrate > $O/B/calibrate.txt 2>&1
echo "calibrate rc $?"; tail -12 $O/B/calibrate.txt; touch $HETMOE_CACHE_DIR/calibration-done; cp $HETMOE_CACHE_DIR/calibration-*.json $O/B/ 2>/dev/null
pack
OUT=$O/B SKIP_HYBRID=1 PLACE_CASES="${PLACE_CASES:-256:0.25 4096:0.25 1:0.25 4096:0.1 16:0.25}" timeout -k 5 260 bash bench/gpu-machine.sh 2 > $O/B/stdout.txt 2>&1
echo "B rc $?"; grep -E "ratio|wall|layer [0-9]" $O/B/stdout.txt
pack
timeout -k 5 80 $H bench overhead --models tiny-rre,tiny-gate --gap-us 0,300 --iters 2000 --json $O/C/overhead.json > $O/C/stdout.txt 2>/dev/null
echo "C (µs, route+dispatch+combine): $(grep -E '^dispatch' $O/C/stdout.txt | awk '{printf "%s/T%s/g%s %.1f  ", $2, $6, $5, $9+$10+$11}')"
pack
echo "done at $SECONDS s"
