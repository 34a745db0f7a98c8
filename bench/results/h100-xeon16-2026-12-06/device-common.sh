# Sourced by device-8.sh and later calls' scripts: the set-up every call repeats. Takes O, the call's
# scratch folder (packed into $OUT/all.tgz by `pack`); prints the commit, GPU and CPU.
set -u
mkdir -p "$O"
pack() { tar czf "$OUT/all.tgz" -C "$O" . 2>/dev/null; }
H="node dist/runtime/cli/main.js"
export HETMOE_CACHE_DIR=/tmp/hetmoe-cache CI=true
echo "commit ${HETMOE_COMMIT:-?}; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader); $(grep -m1 'model name' /proc/cpuinfo)"
