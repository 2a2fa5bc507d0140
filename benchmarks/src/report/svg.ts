/**
 * Small, dependency-free SVG charts: a line chart (optionally log-scaled axes, with
 * vertical markers) and a horizontal bar chart (with min–max whiskers and a reference
 * line). Deterministic output, so reports diff cleanly.
 */

const palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]

export const esc = (s: string): string =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;")

const num = (n: number): string => (Math.round(n * 10) / 10).toString()

/** "Nice" tick values covering [lo, hi] for a linear axis. */
export const linearTicks = (lo: number, hi: number, count = 5): number[] => {
  if (!(hi > lo)) return [lo]
  const raw = (hi - lo) / count
  const mag = 10 ** Math.floor(Math.log10(raw))
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw
  const ticks: number[] = []
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step)
    ticks.push(Math.round(v / step) * step)
  return ticks
}

/** Powers of ten (and 2×, 5× when the range is narrow) covering [lo, hi] for a log axis. */
export const logTicks = (lo: number, hi: number): number[] => {
  const ticks: number[] = []
  const from = Math.floor(Math.log10(lo))
  const to = Math.ceil(Math.log10(hi))
  const narrow = to - from <= 2
  for (let e = from; e <= to; e++) {
    for (const m of narrow ? [1, 2, 5] : [1]) {
      const v = m * 10 ** e
      if (v >= lo * 0.999 && v <= hi * 1.001) ticks.push(v)
    }
  }
  return ticks.length > 0 ? ticks : [lo, hi]
}

export const fmtTick = (v: number): string => {
  const a = Math.abs(v)
  if (a >= 1e6) return `${num(v / 1e6)}M`
  if (a >= 1e3) return `${num(v / 1e3)}k`
  if (a >= 1) return num(v)
  if (a === 0) return "0"
  return v.toPrecision(2)
}

export interface Series {
  readonly name: string
  readonly points: ReadonlyArray<{
    readonly x: number
    readonly y: number
    readonly lo?: number
    readonly hi?: number
  }>
  readonly dashed?: boolean
}

export interface LineChartOptions {
  readonly title: string
  readonly xLabel: string
  readonly yLabel: string
  readonly series: readonly Series[]
  readonly logX?: boolean
  readonly logY?: boolean
  readonly markers?: ReadonlyArray<{ readonly x: number; readonly label: string }>
  readonly subtitle?: string
  readonly width?: number
  readonly height?: number
}

export const lineChart = (o: LineChartOptions): string => {
  const W = o.width ?? 720
  const H = o.height ?? 400
  const m = { left: 70, right: 230, top: o.subtitle ? 52 : 40, bottom: 50 }
  const pw = W - m.left - m.right
  const ph = H - m.top - m.bottom
  const pts = o.series.flatMap((s) => s.points).filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y))
  const xs = pts.map((p) => p.x)
  const ys = pts.flatMap((p) => [p.y, p.lo ?? p.y, p.hi ?? p.y]).filter((v) => Number.isFinite(v))
  const out: string[] = []
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" font-family="system-ui, sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#fff"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="15" font-weight="600">${esc(o.title)}</text>`,
  )
  if (o.subtitle)
    out.push(`<text x="${W / 2}" y="38" text-anchor="middle" fill="#555">${esc(o.subtitle)}</text>`)
  if (pts.length === 0) {
    out.push(`<text x="${W / 2}" y="${H / 2}" text-anchor="middle" fill="#888">no data</text></svg>`)
    return out.join("\n")
  }
  const logX = o.logX === true && xs.every((x) => x > 0)
  const logY = o.logY === true && ys.every((y) => y > 0)
  let x0 = Math.min(...xs)
  let x1 = Math.max(...xs)
  let y0 = logY ? Math.min(...ys) : Math.min(0, ...ys)
  let y1 = Math.max(...ys)
  if (x0 === x1) {
    x0 = logX ? x0 / 2 : x0 - 1
    x1 = logX ? x1 * 2 : x1 + 1
  }
  if (y0 === y1) y1 = y0 === 0 ? 1 : y0 * 1.5
  if (logY) {
    y0 = 10 ** Math.floor(Math.log10(y0))
    y1 = 10 ** Math.ceil(Math.log10(y1))
  } else {
    y1 = y1 * 1.08
  }
  const fx = (x: number) =>
    m.left + (logX ? (Math.log(x) - Math.log(x0)) / (Math.log(x1) - Math.log(x0)) : (x - x0) / (x1 - x0)) * pw
  const fy = (y: number) =>
    m.top +
    ph -
    (logY
      ? (Math.log(Math.max(y, y0)) - Math.log(y0)) / (Math.log(y1) - Math.log(y0))
      : (y - y0) / (y1 - y0)) *
      ph
  // Axes and grid.
  const xt = logX ? logTicks(x0, x1) : linearTicks(x0, x1)
  const yt = logY ? logTicks(y0, y1) : linearTicks(y0, y1)
  for (const t of yt) {
    out.push(
      `<line x1="${m.left}" x2="${m.left + pw}" y1="${num(fy(t))}" y2="${num(fy(t))}" stroke="#e5e5e5"/>`,
      `<text x="${m.left - 6}" y="${num(fy(t) + 4)}" text-anchor="end" fill="#333">${fmtTick(t)}</text>`,
    )
  }
  // On a log axis the measured points are the ticks (rates, concurrencies, sizes).
  const xTicks = logX ? [...new Set(xs)].sort((a, b) => a - b) : xt
  for (const t of xTicks) {
    out.push(
      `<line x1="${num(fx(t))}" x2="${num(fx(t))}" y1="${m.top + ph}" y2="${m.top + ph + 4}" stroke="#333"/>`,
      `<text x="${num(fx(t))}" y="${m.top + ph + 18}" text-anchor="middle" fill="#333">${fmtTick(t)}</text>`,
    )
  }
  out.push(
    `<line x1="${m.left}" x2="${m.left + pw}" y1="${m.top + ph}" y2="${m.top + ph}" stroke="#333"/>`,
    `<line x1="${m.left}" x2="${m.left}" y1="${m.top}" y2="${m.top + ph}" stroke="#333"/>`,
    `<text x="${m.left + pw / 2}" y="${H - 10}" text-anchor="middle">${esc(o.xLabel)}</text>`,
    `<text transform="translate(16 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle">${esc(o.yLabel)}</text>`,
  )
  ;(o.markers ?? []).forEach((mk, k) => {
    if (!(mk.x >= x0 && mk.x <= x1)) return
    // Labels stack, so two markers at one x stay readable.
    out.push(
      `<line x1="${num(fx(mk.x))}" x2="${num(fx(mk.x))}" y1="${m.top}" y2="${m.top + ph}" stroke="#999" stroke-dasharray="4 3"/>`,
      `<text x="${num(fx(mk.x) + 4)}" y="${m.top + 12 + k * 14}" fill="#555">${esc(mk.label)}</text>`,
    )
  })
  o.series.forEach((s, i) => {
    const color = palette[i % palette.length] as string
    const ps = s.points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y))
    if (ps.length === 0) return
    for (const p of ps) {
      if (p.lo !== undefined && p.hi !== undefined && Number.isFinite(p.lo) && Number.isFinite(p.hi)) {
        out.push(
          `<line x1="${num(fx(p.x))}" x2="${num(fx(p.x))}" y1="${num(fy(p.lo))}" y2="${num(fy(p.hi))}" stroke="${color}" stroke-opacity="0.5"/>`,
        )
      }
    }
    const d = ps.map((p, k) => `${k === 0 ? "M" : "L"}${num(fx(p.x))},${num(fy(p.y))}`).join(" ")
    out.push(
      `<path d="${d}" fill="none" stroke="${color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ""}/>`,
    )
    for (const p of ps) out.push(`<circle cx="${num(fx(p.x))}" cy="${num(fy(p.y))}" r="3" fill="${color}"/>`)
    const ly = m.top + 8 + i * 18
    out.push(
      `<line x1="${m.left + pw + 14}" x2="${m.left + pw + 34}" y1="${ly}" y2="${ly}" stroke="${color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ""}/>`,
      `<text x="${m.left + pw + 40}" y="${ly + 4}">${esc(s.name)}</text>`,
    )
  })
  out.push("</svg>")
  return out.join("\n")
}

export interface Bar {
  readonly label: string
  readonly value: number
  readonly lo?: number
  readonly hi?: number
  /** Text after the bar (defaults to the value). */
  readonly text?: string
  readonly group?: number
}

export interface BarChartOptions {
  readonly title: string
  readonly xLabel: string
  readonly bars: readonly Bar[]
  /** A vertical reference line (e.g. 1.0 for ratios). */
  readonly reference?: { readonly value: number; readonly label: string }
  readonly logX?: boolean
  readonly subtitle?: string
  readonly width?: number
}

export const barChart = (o: BarChartOptions): string => {
  const W = o.width ?? 720
  const barH = 22
  const gap = 8
  const labelW = Math.min(330, Math.max(120, Math.max(0, ...o.bars.map((b) => b.label.length)) * 6.6 + 12))
  const m = { left: labelW, right: 90, top: o.subtitle ? 52 : 40, bottom: 44 }
  const H = m.top + m.bottom + Math.max(1, o.bars.length) * (barH + gap)
  const pw = W - m.left - m.right
  const vals = o.bars.flatMap((b) => [b.value, b.hi ?? b.value]).filter((v) => Number.isFinite(v))
  if (o.reference) vals.push(o.reference.value)
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" font-family="system-ui, sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#fff"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="15" font-weight="600">${esc(o.title)}</text>`,
  ]
  if (o.subtitle)
    out.push(`<text x="${W / 2}" y="38" text-anchor="middle" fill="#555">${esc(o.subtitle)}</text>`)
  if (vals.length === 0) {
    out.push(`<text x="${W / 2}" y="${H / 2}" text-anchor="middle" fill="#888">no data</text></svg>`)
    return out.join("\n")
  }
  const logX = o.logX === true && vals.every((v) => v > 0)
  const lo = logX ? 10 ** Math.floor(Math.log10(Math.min(...vals))) : 0
  const hi = logX ? 10 ** Math.ceil(Math.log10(Math.max(...vals))) : Math.max(...vals) * 1.1 || 1
  const fx = (v: number) =>
    m.left +
    (logX
      ? (Math.log(Math.max(v, lo)) - Math.log(lo)) / (Math.log(hi) - Math.log(lo))
      : (v - lo) / (hi - lo)) *
      pw
  const ticks = logX ? logTicks(lo, hi) : linearTicks(lo, hi)
  const bottom = m.top + o.bars.length * (barH + gap)
  for (const t of ticks) {
    out.push(
      `<line x1="${num(fx(t))}" x2="${num(fx(t))}" y1="${m.top - 4}" y2="${bottom}" stroke="#e5e5e5"/>`,
      `<text x="${num(fx(t))}" y="${bottom + 16}" text-anchor="middle" fill="#333">${fmtTick(t)}</text>`,
    )
  }
  o.bars.forEach((b, i) => {
    const y = m.top + i * (barH + gap)
    const color = palette[(b.group ?? 0) % palette.length] as string
    out.push(`<text x="${m.left - 6}" y="${y + barH / 2 + 4}" text-anchor="end">${esc(b.label)}</text>`)
    if (!Number.isFinite(b.value)) {
      out.push(`<text x="${m.left + 4}" y="${y + barH / 2 + 4}" fill="#888">${esc(b.text ?? "n/a")}</text>`)
      return
    }
    out.push(
      `<rect x="${m.left}" y="${y}" width="${num(Math.max(1, fx(b.value) - m.left))}" height="${barH}" fill="${color}" fill-opacity="0.8"/>`,
    )
    if (b.lo !== undefined && b.hi !== undefined && Number.isFinite(b.lo) && Number.isFinite(b.hi)) {
      const cy = y + barH / 2
      out.push(
        `<line x1="${num(fx(b.lo))}" x2="${num(fx(b.hi))}" y1="${cy}" y2="${cy}" stroke="#222"/>`,
        `<line x1="${num(fx(b.lo))}" x2="${num(fx(b.lo))}" y1="${cy - 5}" y2="${cy + 5}" stroke="#222"/>`,
        `<line x1="${num(fx(b.hi))}" x2="${num(fx(b.hi))}" y1="${cy - 5}" y2="${cy + 5}" stroke="#222"/>`,
      )
    }
    const textX = Math.max(fx(b.value), b.hi !== undefined && Number.isFinite(b.hi) ? fx(b.hi) : 0) + 6
    out.push(`<text x="${num(textX)}" y="${y + barH / 2 + 4}">${esc(b.text ?? fmtTick(b.value))}</text>`)
  })
  if (o.reference) {
    const x = fx(o.reference.value)
    out.push(
      `<line x1="${num(x)}" x2="${num(x)}" y1="${m.top - 6}" y2="${bottom}" stroke="#444" stroke-dasharray="4 3"/>`,
      `<text x="${num(x + 4)}" y="${m.top - 8}" fill="#444">${esc(o.reference.label)}</text>`,
    )
  }
  out.push(`<text x="${m.left + pw / 2}" y="${H - 8}" text-anchor="middle">${esc(o.xLabel)}</text>`, "</svg>")
  return out.join("\n")
}
