#!/usr/bin/env bash
# Per-layer overhead at decode (issue #7) on the 16-core Xeon of the H100 machine, in one device call of
# at most ~3 minutes that builds nothing (the addon and dist/ are carried). From the repository root:
#
#   source .gpu/enter.sh && OUT=$OUT bash bench/overhead-xeon.sh
#
# 1. `hetmoe bench overhead --iters 2000 --gap-us 0,300`: every model, with the workers spinning (a
#    tight loop of forwards) and with 300 µs of the app's own work between forwards (a decode step's
#    attention, which outlasted the old fixed 100 µs idle spin: workers asleep at every layer).
# 2. The crew's variants side by side on the tiny models (gaps 0 and 300 µs, --trace): the adaptive idle
#    spin (the default now) against the old fixed 100 µs, workers always asleep (with and without the
#    old wake-up fan-out), how many workers spin, early wake-ups, the solo threshold, pauses in the
#    spin, a repeat of the first two for the noise; a 1000-µs gap; the old warm-up (comparable with
#    the recorded runs).
# 3. A V8 profile of the calling thread for the 16-token gate and 1-token RRE layers (bench/overhead-profile.ts).
# Files under $OUT (5): overhead.json (1), variants.json (2: { name: that run's JSON }), machine.txt,
# log.txt, summary.txt. The last thing printed is the summary: compact tables of both
# (bench/overhead-summary.ts).
set -u
OUT=${OUT:?OUT must name the output folder}
START=$(date +%s)
elapsed() { echo $(($(date +%s) - START)); }
LOG=$OUT/log.txt
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
export HETMOE_COMMIT=${HETMOE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
HM=(node dist/runtime/cli/main.js)
# The budget: the device call has 3 minutes; variants stop being started after this many seconds.
BUDGET=${BUDGET:-150}
# QUICK=1: a trial of the script itself (few forwards; the numbers mean nothing).
if [ -n "${QUICK:-}" ]; then
  HEAD_ITERS=(--iters 100 --warmup 50 --model-warmup 100)
  VAR_ITERS=(--iters 100 --warmup 50 --model-warmup 100)
else
  HEAD_ITERS=(--iters 2000)
  VAR_ITERS=(--iters 1200 --warmup 600)
fi

{
  echo "== machine ($(date -u +%FT%TZ), commit $HETMOE_COMMIT)"
  nproc
  uname -r
  node --version
  lscpu | grep -E 'Model name|Thread\(s\) per core|Core\(s\) per socket|Socket|NUMA node\(s\)|CPU MHz|Hypervisor|L2 cache|L3 cache'
  echo "clocksource: $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null)"
  echo "cpuidle: $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null) / $(cat /sys/devices/system/cpu/cpuidle/current_governor_ro 2>/dev/null || cat /sys/devices/system/cpu/cpuidle/current_governor 2>/dev/null)"
  for p in /sys/module/haltpoll/parameters/*; do [ -f "$p" ] && echo "haltpoll $(basename "$p"): $(cat "$p")"; done
  echo "smt active: $(cat /sys/devices/system/cpu/smt/active 2>/dev/null); cpu0 siblings: $(cat /sys/devices/system/cpu/cpu0/topology/thread_siblings_list 2>/dev/null)"
  grep -m4 MHz /proc/cpuinfo
  uptime
} > "$OUT/machine.txt" 2>&1
head -3 "$OUT/machine.txt"

echo "== 1. headline: bench overhead --iters 2000 --gap-us 0,300 ($(elapsed) s)" | tee -a "$LOG"
timeout 100 "${HM[@]}" bench overhead "${HEAD_ITERS[@]}" --gap-us 0,300 --json "$OUT/overhead.json" >> "$LOG" 2>&1 || echo "headline: exit $?" | tee -a "$LOG"

# name | environment | extra flags. Tiny models only; gaps 0 and 300 µs unless the flags say otherwise.
# Defaults now: adaptive spin (100-2000 µs) on cores-1 workers, sleepers peek every 4-128 ms, the lazy
# wake prices a woken worker's arrival, no wake-up fan-out between workers. "old" is the closest the
# settings give to df18aef (fixed 100 µs on every worker, fan-out 2; the lazy rule is the new one).
OLD="HETMOE_CREW_IDLE_SPIN_US=100 HETMOE_CREW_SPIN_WORKERS=64 HETMOE_CREW_JOB_FANOUT=2"
VARIANTS=(
  "adaptive||"
  "old|$OLD|"
  "asleep|HETMOE_CREW_IDLE_SPIN_US=0|"
  "adaptive-spin16|HETMOE_CREW_SPIN_WORKERS=16|"
  "adaptive-solo128k|HETMOE_CREW_SOLO_WORK=131072|"
  "old-early2|$OLD HETMOE_CREW_EARLY_WAKE=2|"
  "adaptive-gap1000||--gap-us 1000 --iters 800 --warmup 400"
  "adaptive-again||"
  "old-again|$OLD|"
  "adaptive-spin8|HETMOE_CREW_SPIN_WORKERS=8|"
  "asleep-fanout2|HETMOE_CREW_IDLE_SPIN_US=0 HETMOE_CREW_JOB_FANOUT=2|"
  "adaptive-pause20|HETMOE_CREW_SPIN_PAUSES=20|"
  "adaptive-nosolo|HETMOE_CREW_SOLO_WORK=0|"
  "oldwarmup||--gap-us 0 --warmup 200 --model-warmup 0 --iters 2000"
)
ARGS=()
for v in "${VARIANTS[@]}"; do
  IFS='|' read -r name envs flags <<< "$v"
  if [ "$(elapsed)" -ge "$BUDGET" ]; then
    echo "== variant $name skipped: $(elapsed) s used" | tee -a "$LOG"
    continue
  fi
  echo "== 2. variant $name: ${envs:-defaults} ${flags} ($(elapsed) s)" | tee -a "$LOG"
  # shellcheck disable=SC2086
  env $envs timeout 40 "${HM[@]}" bench overhead --models tiny-rre,tiny-gate --gap-us 0,300 "${VAR_ITERS[@]}" --trace $flags \
    --json "$TMP/$name.json" >> "$LOG" 2>&1 || echo "variant $name: exit $?" | tee -a "$LOG"
  ARGS+=("$name=$TMP/$name.json")
done
# 3. Where the calling thread's time goes (V8's sampling profiler; natives show under a native name).
PROFILES=""
if [ "$(elapsed)" -lt "$((BUDGET + 10))" ]; then
  echo "== 3. profiles ($(elapsed) s)" | tee -a "$LOG"
  PROFILES=$( (timeout 20 node dist/bench/overhead-profile.js tiny-gate 16 20000; timeout 20 node dist/bench/overhead-profile.js tiny-rre 1 20000) 2>>"$LOG")
fi
echo "== done in $(elapsed) s" | tee -a "$LOG"
{
  node dist/bench/overhead-summary.js --merge "$OUT/variants.json" "$OUT/overhead.json" "${ARGS[@]}"
  echo
  echo "$PROFILES"
} | tee "$OUT/summary.txt"
