#!/usr/bin/env bash
# One device call: the large-batch kernel's variants (HETMOE_WG_VARIANT, native/cuda/moe_launch.cuh)
# side by side. Builds nothing: run from the package root with .gpu, build/Release and dist carried
# (../shared/tools/gpu-bundle; the tap shim is laid into node_modules/tap here if tap is missing):
#   source .gpu/enter.sh && OUT=$OUT bash bench/gpu/variants.sh
# Variants (bits): 0 the measured kernel, 1 A-operand prefetch (all formats), 2 75% without the
# masked double MMA (75% only), 3 both.
# For each variant: test/gpu-layer.test.ts twice (default switch-over, and HETMOE_WGMMA_MIN=1: every
# group on the wgmma kernel), then `bench gpu --preset mixtral` at 256/1024/4096 tokens per expert
# (cuBLAS and cuSPARSELt measured once, in the variant-0 run of this same call). Stdout stays short;
# everything else goes to $OUT (8 files): tests.log, bench.log, bench-v{0,1,2,3}.json,
# bench-v0-rep.json, summary.txt. Steps after the main ones are skipped past DEADLINE seconds.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
DEADLINE=${DEADLINE:-270}
TOKENS=${TOKENS:-256,1024,4096}
export HETMOE_COMMIT=${HETMOE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || cat COMMIT 2>/dev/null || echo unknown)}
unset HETMOE_WGMMA HETMOE_WGMMA_MIN HETMOE_WG_VARIANT
T0=$SECONDS
el() { echo $((SECONDS - T0)); }
: > "$OUT/tests.log"
: > "$OUT/bench.log"
# The test runs under the tap shim where the full runner was not carried (as prepare-device.sh lays it).
if ! node -e "require.resolve('tap')" 2>/dev/null; then
  mkdir -p node_modules/tap
  cp test/gpu-tap-shim.cjs node_modules/tap/index.cjs
  echo '{"name":"tap","version":"0.0.0-shim","main":"index.cjs"}' > node_modules/tap/package.json
  echo "tap shim installed"
fi
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null | head -1
echo "commit $HETMOE_COMMIT"

declare -A BAD  # variant -> 1 when its test hung or crashed (its bench is skipped)

# runtest VARIANT MODE(default|min1)
runtest() {
  local v=$1 mode=$2 t=$SECONDS rc log
  if [ -n "${BAD[$v]:-}" ]; then echo "test v$v $mode: skipped (its previous run hung or crashed)"; return; fi
  log=$(mktemp)
  if [ "$mode" = min1 ]; then
    HETMOE_WG_VARIANT=$v HETMOE_WGMMA_MIN=1 timeout -k 5 100 node dist/test/gpu-layer.test.js > "$log" 2>&1
  else
    HETMOE_WG_VARIANT=$v timeout -k 5 100 node dist/test/gpu-layer.test.js > "$log" 2>&1
  fi
  rc=$?
  { echo "===== test variant $v $mode (rc $rc, $((SECONDS - t)) s)"; cat "$log"; } >> "$OUT/tests.log"
  local summary worst
  summary=$(grep -E "^# [0-9]+ assertions, [0-9]+ failed" "$log" | tail -1)
  worst=$(grep -oE "rel err [0-9.]+e[-+][0-9]+" "$log" | awk '{print $3}' | sort -g | tail -1)
  echo "test v$v $mode: ${summary:-# no summary} (rc $rc, $((SECONDS - t)) s, worst rel err ${worst:-?})"
  grep -E "not ok" "$log" | head -6
  if [ $rc -ge 124 ] || [ -z "$summary" ]; then
    BAD[$v]=1
    tail -4 "$log"
  fi
  rm -f "$log"
}

# runbench NAME VARIANT FORMATS [extra flags]
runbench() {
  local name=$1 v=$2 fmts=$3 t=$SECONDS rc log
  shift 3
  log=$(mktemp)
  HETMOE_WG_VARIANT=$v timeout -k 5 120 node dist/runtime/cli/main.js bench gpu --preset mixtral --tokens "$TOKENS" \
    --formats "$fmts" --json "$OUT/bench-$name.json" "$@" > "$log" 2>&1
  rc=$?
  { echo "===== bench $name (HETMOE_WG_VARIANT=$v, rc $rc, $((SECONDS - t)) s)"; cat "$log"; } >> "$OUT/bench.log"
  echo "bench $name: rc $rc, $((SECONDS - t)) s"
  grep -E "^note:|rror" "$log" | head -4
  rm -f "$log"
}

for v in 1 2 3; do
  runtest $v default
  runtest $v min1
done
runbench v0 0 "2:4,75%"
[ -z "${BAD[1]:-}" ] && runbench v1 1 "2:4,75%" --no-baselines
[ -z "${BAD[2]:-}" ] && runbench v2 2 "75%" --no-baselines
[ -z "${BAD[3]:-}" ] && runbench v3 3 "75%" --no-baselines
if [ "$(el)" -lt "$DEADLINE" ]; then runtest 0 default; fi
if [ "$(el)" -lt "$DEADLINE" ]; then runtest 0 min1; fi
if [ "$(el)" -lt "$DEADLINE" ]; then runbench v0-rep 0 "2:4,75%" --no-baselines; fi
echo "elapsed $(el) s"

# The table: ms and x cuBLAS (cuBLAS of the v0 run) per variant; 2:4 under variants 2/3 equals 0/1.
node -e '
const fs = require("fs"), out = process.argv[1]
const runs = ["v0", "v1", "v2", "v3", "v0-rep"]
const data = {}
for (const r of runs) { try { data[r] = JSON.parse(fs.readFileSync(`${out}/bench-${r}.json`, "utf8")).results } catch { } }
const base = data.v0 || []
const cublas = {}, lt = {}
for (const x of base) { if (x.kernel === "cublas") cublas[x.tokensPerExpert] = x.ms; if (x.kernel === "cusparselt") lt[x.tokensPerExpert] = x.ms }
const have = runs.filter((r) => data[r])
const lines = []
lines.push(`| fmt | tok | cuBLAS ms | cuSPARSELt ms | ${have.map((r) => `${r} ms (xcuBLAS)`).join(" | ")} |`)
lines.push(`| --- | ---: | ---: | ---: | ${have.map(() => "---:").join(" | ")} |`)
const toks = [...new Set(base.map((x) => x.tokensPerExpert))].sort((a, b) => a - b)
for (const f of ["2:4", "75%"]) for (const n of toks) {
  const cells = have.map((r) => {
    const x = data[r].find((y) => y.kernel === "hetmoe" && y.format === f && y.tokensPerExpert === n)
    if (!x) return "-"
    const p = x.path && x.path !== "wgmma" && !x.path.startsWith("wgmma-v") ? ` ${x.path}` : ""
    return `${x.ms.toFixed(3)} (${(cublas[n] / x.ms).toFixed(2)}x)${p}`
  })
  lines.push(`| ${f} | ${n} | ${cublas[n]?.toFixed(3) ?? "-"} | ${lt[n]?.toFixed(3) ?? "-"} | ${cells.join(" | ")} |`)
}
const txt = lines.join("\n")
console.log(txt)
fs.writeFileSync(`${out}/summary.txt`, txt + "\n")
' "$OUT"
