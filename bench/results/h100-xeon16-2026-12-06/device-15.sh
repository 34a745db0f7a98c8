#!/usr/bin/env bash
# Call 15 (about 5 minutes on a fresh machine): device-12.sh (calibration, place vs run on sigma-lite,
# R and P runs), then E, CPU layer jobs timed alone (bench/cpu-expert-probe.ts): sigma-lite's layer 0
# with one expert (100, 200, 400 tokens: the slope is the marginal FLOP rate) and with the jobs its 10% plan leaves on the CPU at 4096 tokens (two streamed, as the
# runtime did in call 14: 8 experts of 92-196 tokens; and their first 2 and 4), then the calibration's
# dense probe model alike (one expert, 8 of 256 tokens, the same uneven 8): does a job of several
# experts on the probe model run as much faster than one expert as sigma-lite's do?
# From the repo root: source .gpu/enter.sh && HETMOE_COMMIT=<c> bash bench/results/h100-xeon16-2026-12-06/device-15.sh
HERE="$(dirname "$0")"
bash "$HERE/device-12.sh"
O=/tmp/o12; source "$HERE/device-common.sh"; mkdir -p $O/E
J8=196,188,181,175,148,147,101,92
timeout -k 5 60 node dist/bench/cpu-expert-probe.js /tmp/sl 100,200,400 15 --job 196,188 --job 196,188,181,175 --job $J8 --json $O/E/sigma-lite.json 2>&1 | tee $O/E/sigma-lite.txt
pack
P=$HETMOE_CACHE_DIR/calibration-models/v2-dense
timeout -k 5 60 node dist/bench/cpu-expert-probe.js $P 100,200,400 15 --job 256,256,256,256,256,256,256,256 --job $J8 --json $O/E/probe-dense.json 2>&1 | tee $O/E/probe-dense.txt
pack
echo "done at $SECONDS s"
