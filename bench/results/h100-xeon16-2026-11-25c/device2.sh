#!/usr/bin/env bash
# Device call 2: before (7339ffe, the branch's base) vs after (HEAD) on the 16-core Xeon, same call.
source .gpu/enter.sh
C=${C:?}
L=$OUT/log-$C.txt
B=7339ffe
{
echo "== machine"; nproc; uname -r; lscpu | grep -E "Model name|Hypervisor"; node --version
echo "== bench overhead, after ($C)"
HETMOE_COMMIT=$C node dist/runtime/cli/main.js bench overhead --json $OUT/overhead-$C.json 2>/dev/null
echo "== bench overhead, before ($B)"
(cd scratch/before && HETMOE_COMMIT=$B node dist/runtime/cli/main.js bench overhead --json $OUT/overhead-$B.json 2>/dev/null)
P() { env "$@" ITERS=1500 MODELS=tiny-rre,tiny-gate node scratch/probe.mjs 2>&1 | cut -c1-215; }
echo "== probes: workers spinning (no gap) and asleep (300 µs of other work between forwards)"
P LABEL=after
P LABEL=before DIST=./before/dist
P LABEL=after-gap300 GAP_US=300
P LABEL=before-gap300 GAP_US=300 DIST=./before/dist
P LABEL=after-rows128 HETMOE_CPU_BLOCK_ROWS=128
P LABEL=after-rows64 HETMOE_CPU_BLOCK_ROWS=64
P LABEL=after-nosolo HETMOE_CREW_SOLO_WORK=0
P LABEL=after-allsolo HETMOE_CREW_SOLO_WORK=100000000
P LABEL=after-again
echo "== bench overhead variants (1000 forwards a case)"
HETMOE_COMMIT=$C-rows128 HETMOE_CPU_BLOCK_ROWS=128 node dist/runtime/cli/main.js bench overhead --iters 1000 --json $OUT/overhead-$C-rows128.json 2>/dev/null
HETMOE_COMMIT=$C-nosolo HETMOE_CREW_SOLO_WORK=0 node dist/runtime/cli/main.js bench overhead --iters 1000 --json $OUT/overhead-$C-nosolo.json 2>/dev/null
} 2>&1 | tee $L
