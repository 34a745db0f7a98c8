# Sourced by device-9.sh and later calls' scripts: the set-up every call repeats. Takes O, the call's
# scratch folder (packed into $OUT/all.tgz by `pack`); prints the commit, GPU and CPU.
set -u
mkdir -p "$O"
pack() { tar czf "$OUT/all.tgz" -C "$O" . 2>/dev/null; }
H="node dist/runtime/cli/main.js"
export HETMOE_CACHE_DIR=/tmp/hetmoe-cache CI=true
echo "commit ${HETMOE_COMMIT:-?}; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader); $(grep -m1 'model name' /proc/cpuinfo)"
# gpu_tests FILE...: runs dist/test/FILE.test.js for each (tap shimmed where the bundle has no tap), logs
# under $O/T, prints a count of ok / not ok and the failures.
gpu_tests() {
  if ! node -e "require.resolve('tap')" 2>/dev/null; then
    mkdir -p node_modules/tap && cp test/gpu-tap-shim.cjs node_modules/tap/index.cjs
    echo '{"name":"tap","version":"0.0.0-shim","main":"index.cjs"}' > node_modules/tap/package.json
  fi
  mkdir -p "$O/T"
  for f in "$@"; do
    timeout -k 5 60 node dist/test/$f.test.js > "$O/T/$f.log" 2>&1
    echo "T $f rc $?: $(grep -cE '^\s*ok' "$O/T/$f.log") ok, $(grep -cE '^\s*not ok' "$O/T/$f.log") not ok"; grep -E "not ok|# " "$O/T/$f.log" | head -6
  done
}
