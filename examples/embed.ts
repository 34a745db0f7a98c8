// A Node app that owns its model loop and hands hetmoe the MoE layers.
//   node dist/examples/embed.js [model-dir]     (default: the demo's cached 'small' model)
// The app's own parts (attention, norms, sampling) are stand-ins here; what matters is the call
// pattern: one runtime for the app's life, one forward per MoE layer, outputs in a buffer it owns.
import { homedir } from 'node:os'
import { join } from 'node:path'
import { createRuntime, loadModel } from '../runtime/index.js'

const dir = process.argv[2] ?? join(process.env.HETMOE_CACHE_DIR ?? join(homedir(), '.cache', 'hetmoe'), 'models', 'small-seed0-dense-bf16')
const model = await loadModel(dir)
await using rt = await createRuntime({ model, gpu: 'auto' })
rt.on('warning', (w: string) => console.error('hetmoe:', w))

const D = model.manifest.hiddenSize
const prompt = Int32Array.from([17, 923, 4051, 88, 12000, 7, 31000, 256])
let hidden = Float32Array.from({ length: prompt.length * D }, (_, i) => Math.sin(i * 0.37))
const moeOut = new Float32Array(hidden.length)

for (let layer = 0; layer < model.manifest.layers.length; layer++) {
  // ... the app's attention block would run here ...
  await rt.forward(layer, hidden, { tokenIds: prompt, domain: 0, out: moeOut })
  for (let i = 0; i < hidden.length; i++) hidden[i] += moeOut[i] // residual
}
let norm = 0
for (const v of hidden) norm += v * v
console.log(`ran ${model.manifest.layers.length} MoE layers over ${prompt.length} tokens; final hidden-state norm ${Math.sqrt(norm).toFixed(3)}`)
console.log(rt.stats().layers.map((s, l) => `layer ${l}: ${s.ms.total.toFixed(2)} ms`).join(', '))
model.close()
