set -u
R=${R:-/tmp/r}; mkdir -p $R
H="node dist/runtime/cli/main.js"
export HETMOE_CACHE_DIR=/tmp/hetmoe-cache CI=true
echo "=== scan $(date +%T)"
node .hrun/scan.mjs; HETMOE_SCAN_PARALLEL_MIN=0 node .hrun/scan.mjs; node .hrun/scan.mjs
echo "=== calibrate $(date +%T)"
$H calibrate --json > $R/calibration.json 2> $R/calibrate.err; $H info | tail -13; touch $HETMOE_CACHE_DIR/calibration-done
OUT=$R SKIP_HYBRID=1 PLACE_CASES="16:0.25 1:0.25 16:0.1 256:0.25 4096:0.25" bash bench/gpu-machine.sh 2
echo "=== repeats $(date +%T)"
for TAG in b16-0.25 b1-0.25 b16-0.1 b256-0.25 b4096-0.25; do
  B=${TAG%%-*}; B=${B#b}; TOK=/tmp/zipf.txt; [ $((8 * B)) -gt 4096 ] && TOK=/tmp/zipf-$((8 * B)).txt
  $H run --model /tmp/sl --plan $R/plan-$TAG.json --tokens $TOK --domain 0 > $R/run-$TAG-2.txt 2>&1; grep -E "^plan|tokens/s" $R/run-$TAG-2.txt | tail -1
done
echo "=== done $(date +%T)"
