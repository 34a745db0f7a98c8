#!/usr/bin/env bash
# Builds nothing: copies this worktree's build into /work/main/.hgpu for a device call (the device
# tool sends /work/main plus carried paths). Run from the package root after `npm run build`.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
main=${HETMOE_MAIN:-/work/main}
cd "$root"
[ -d .gpu ] || { echo "run gpu-bundle first"; exit 1; }
grep -qx '/.hgpu/' "$main/.git/info/exclude" 2>/dev/null || echo '/.hgpu/' >> "$main/.git/info/exclude"
rm -rf "$main/.hgpu" && mkdir -p "$main/.hgpu/build"
cp -a .gpu dist package.json "$main/.hgpu/"
cp -a build/Release "$main/.hgpu/build/"
rm -rf "$main/.hgpu/dist/test/fixtures" 2>/dev/null || true
mkdir -p "$main/.hgpu/.gpu/node_modules/tap"
cp test/gpu-tap-shim.cjs "$main/.hgpu/.gpu/node_modules/tap/index.cjs"
echo '{"name":"tap","version":"0.0.0-shim","main":"index.cjs"}' > "$main/.hgpu/.gpu/node_modules/tap/package.json"
cp bench/gpu/device-run.sh "$main/.hgpu/run.sh"
git rev-parse HEAD > "$main/.hgpu/COMMIT"
git diff --quiet || echo "$(git rev-parse HEAD)+dirty" > "$main/.hgpu/COMMIT"
du -sh "$main/.hgpu"
