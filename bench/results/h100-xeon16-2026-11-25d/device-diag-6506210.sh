set -u
R=${R:-/tmp/r}; mkdir -p $R
P=bench/results/h100-xeon16-2026-11-25c
export HETMOE_CACHE_DIR=/tmp/hetmoe-cache
H="node dist/runtime/cli/main.js"
nproc; lscpu | grep -E "Model name|L3|L2|NUMA node0"
time $H synth --preset sigma-lite --out /tmp/sl --force > /dev/null
MICRO=1 node .hrun/diag.mjs
run() { echo "=== $*"; env "$@" node ${PROF:-} .hrun/diag.mjs 2>&1 | grep -v "^calibration"; }
run CASE=b4096 PLAN=$P/place-b4096-0.25-2380f47.json BATCH=4096 NTOK=32768
run CASE=b4096-norepl REPLACE=0 PLAN=$P/place-b4096-0.25-2380f47.json BATCH=4096 NTOK=32768
run CASE=b256cpu-t16 PLAN=$P/place-b256-0.25-04f2c37.json BATCH=256 NTOK=8192
run CASE=b256cpu-t15 THREADS=15 PLAN=$P/place-b256-0.25-04f2c37.json BATCH=256 NTOK=8192
run CASE=b256cpu-t12 THREADS=12 PLAN=$P/place-b256-0.25-04f2c37.json BATCH=256 NTOK=8192
run CASE=b256gpu PLAN=$P/place-b256-0.25-5511c4b.json BATCH=256 NTOK=8192
run CASE=b256gpu-norepl REPLACE=0 PLAN=$P/place-b256-0.25-5511c4b.json BATCH=256 NTOK=8192
run CASE=b16-10 PLAN=$P/place-b16-0.1-04f2c37.json BATCH=16 NTOK=2048
run CASE=b16-10-t15 THREADS=15 PLAN=$P/place-b16-0.1-04f2c37.json BATCH=16 NTOK=2048
PROF="--cpu-prof --cpu-prof-dir=$R/prof4096" run CASE=b4096-prof PLAN=$P/place-b4096-0.25-2380f47.json BATCH=4096 NTOK=32768
PROF="--cpu-prof --cpu-prof-dir=$R/prof256" run CASE=b256gpu-prof PLAN=$P/place-b256-0.25-5511c4b.json BATCH=256 NTOK=8192
echo done
