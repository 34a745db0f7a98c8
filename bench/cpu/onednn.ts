// The vendor baseline of `hetmoe bench cpu`: PyTorch's bf16 torch.nn.functional.linear (oneDNN on
// x86) on the same expert shapes, token counts, expert rotation and thread count, timed in a python
// subprocess (medians). Skipped, with a note, where python3 cannot import torch.
import { spawnSync } from 'node:child_process'

const SCRIPT = String.raw`
import json, sys, time, statistics
import torch
import torch.nn.functional as F
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
torch.manual_seed(0)
D, Fs, swiglu = cfg["D"], cfg["F"], cfg["ffn"] == "swiglu"
maxE = max(c["experts"] for c in cfg["cases"])
def mat(r, c):
    return (torch.rand(r, c) * 0.1 - 0.05).to(torch.bfloat16)
W = [dict(g=mat(Fs, D) if swiglu else None, u=mat(Fs, D), d=mat(D, Fs)) for _ in range(maxE)]
def ffn(x, w):
    if swiglu:
        h = F.silu(F.linear(x, w["g"])) * F.linear(x, w["u"])
    else:
        h = F.gelu(F.linear(x, w["u"]), approximate="tanh")
    return F.linear(h, w["d"])
out = []
with torch.inference_mode():
    for c in cfg["cases"]:
        T, E = c["tokens"], c["experts"]
        xs = [torch.randn(T, D).to(torch.bfloat16) for _ in range(E)]
        def run():
            t0 = time.perf_counter()
            for e in range(E):
                ffn(xs[e], W[e])
            return time.perf_counter() - t0
        first = run()
        reps = max(3, min(50, int(cfg["minTime"] / max(first, 1e-6)) + 1))
        times = [run() for _ in range(reps)]
        out.append(dict(tokens=T, experts=E, seconds=statistics.median(times)))
        print("onednn: %d tokens/expert: %.3f ms" % (T, 1e3 * statistics.median(times)), file=sys.stderr, flush=True)
print(json.dumps(dict(torch=torch.__version__, onednn=torch.backends.mkldnn.is_available(), results=out)))
`

export interface OneDnnCase {
  tokens: number
  experts: number
}

export interface OneDnnResult {
  torch: string
  results: Array<{ tokens: number; experts: number; seconds: number }>
}

/** Whether python3 can import torch; the reason when not. */
export function oneDnnAvailable(python = 'python3'): { ok: true; version: string } | { ok: false; why: string } {
  const r = spawnSync(python, ['-c', 'import torch; print(torch.__version__)'], { encoding: 'utf8' })
  if (r.error) return { ok: false, why: `${python} not found` }
  if (r.status !== 0) return { ok: false, why: `${python} cannot import torch` }
  return { ok: true, version: r.stdout.trim() }
}

export function runOneDnn(
  cfg: { D: number; F: number; ffn: string; threads: number; minTime: number; cases: OneDnnCase[] },
  python = 'python3',
): OneDnnResult {
  const r = spawnSync(python, ['-c', SCRIPT, JSON.stringify(cfg)], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, OMP_NUM_THREADS: String(cfg.threads) },
    maxBuffer: 1 << 24,
  })
  if (r.status !== 0) throw new Error(`the oneDNN baseline failed (exit ${r.status}): ${r.error?.message ?? ''}`)
  const lines = r.stdout.trim().split('\n')
  return JSON.parse(lines[lines.length - 1]) as OneDnnResult
}
