// A small SVG line chart: one panel per group, one line per series, shared legend. No dependencies.

export interface ChartSeries {
  name: string
  points: { x: number; y: number }[]
}

export interface ChartPanel {
  title: string
  series: ChartSeries[]
}

const COLORS = ['#1b9e77', '#d95f02', '#7570b3', '#e7298a', '#66a61e', '#e6ab02', '#a6761d', '#666666']
const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;')

/** Panels side by side; x is linear (e.g. a budget fraction), y logarithmic (throughput spans decades). */
export function lineChartSvg(title: string, subtitle: string, xLabel: string, yLabel: string, panels: ChartPanel[], xFormat: (x: number) => string): string {
  const W = 300
  const H = 230
  const padL = 58
  const padB = 42
  const padT = 44
  const width = panels.length * W + 20
  const names = [...new Set(panels.flatMap((p) => p.series.map((s) => s.name)))]
  const height = H + 76 + 18 * Math.ceil(names.length / 3)
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="16" text-anchor="middle" font-size="14" font-weight="bold">${esc(title)}</text>`,
    `<text x="${width / 2}" y="32" text-anchor="middle" font-size="11" fill="#555">${esc(subtitle)}</text>`,
  ]
  panels.forEach((p, i) => {
    const x0 = i * W + padL
    const pw = W - padL - 10
    const ph = H - padT - padB
    const y0 = 24 + padT
    const pts = p.series.flatMap((s) => s.points).filter((q) => q.y > 0)
    if (!pts.length) return
    const xs = pts.map((q) => q.x)
    const xMin = Math.min(...xs)
    const xMax = Math.max(...xs) === xMin ? xMin + 1 : Math.max(...xs)
    const lyMin = Math.floor(Math.log10(Math.min(...pts.map((q) => q.y))))
    const lyMax = Math.ceil(Math.log10(Math.max(...pts.map((q) => q.y))) + 1e-9)
    const ly1 = lyMax === lyMin ? lyMin + 1 : lyMax
    const X = (x: number) => x0 + ((x - xMin) / (xMax - xMin)) * pw
    const Y = (y: number) => y0 + ph - ((Math.log10(y) - lyMin) / (ly1 - lyMin)) * ph
    out.push(`<text x="${x0 + pw / 2}" y="${y0 - 8}" text-anchor="middle" font-weight="bold">${esc(p.title)}</text>`)
    out.push(`<rect x="${x0}" y="${y0}" width="${pw}" height="${ph}" fill="none" stroke="#999"/>`)
    for (let e = lyMin; e <= ly1; e++) {
      const y = Y(10 ** e)
      out.push(`<line x1="${x0}" x2="${x0 + pw}" y1="${y}" y2="${y}" stroke="#eee"/><text x="${x0 - 4}" y="${y + 4}" text-anchor="end">${10 ** e >= 1000 ? `${10 ** (e - 3)}k` : 10 ** e}</text>`)
    }
    for (const x of [...new Set(xs)].sort((a, b) => a - b))
      out.push(`<text x="${X(x)}" y="${y0 + ph + 14}" text-anchor="middle">${esc(xFormat(x))}</text>`)
    out.push(`<text x="${x0 + pw / 2}" y="${y0 + ph + 30}" text-anchor="middle">${esc(xLabel)}</text>`)
    if (i === 0) out.push(`<text transform="translate(${x0 - 44} ${y0 + ph / 2}) rotate(-90)" text-anchor="middle">${esc(yLabel)}</text>`)
    for (const s of p.series) {
      const c = COLORS[names.indexOf(s.name) % COLORS.length]
      const ok = s.points.filter((q) => q.y > 0).sort((a, b) => a.x - b.x)
      if (ok.length > 1) out.push(`<polyline fill="none" stroke="${c}" stroke-width="2" points="${ok.map((q) => `${X(q.x).toFixed(1)},${Y(q.y).toFixed(1)}`).join(' ')}"/>`)
      for (const q of ok) out.push(`<circle cx="${X(q.x).toFixed(1)}" cy="${Y(q.y).toFixed(1)}" r="3" fill="${c}"/>`)
    }
  })
  names.forEach((n, i) => {
    const x = 20 + (i % 3) * 200
    const y = H + 56 + 18 * Math.floor(i / 3)
    out.push(`<rect x="${x}" y="${y - 9}" width="14" height="10" fill="${COLORS[i % COLORS.length]}"/><text x="${x + 20}" y="${y}">${esc(n)}</text>`)
  })
  out.push('</svg>')
  return out.join('\n') + '\n'
}
