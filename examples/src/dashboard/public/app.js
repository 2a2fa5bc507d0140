// The dashboard: plain browser JavaScript, no build step.
//
// 1. GET /api/snapshot: the runs and jobs tables as they are now, plus the SSE id of the
//    stream's start, taken *before* the tables were read.
// 2. EventSource on /events (both channels on one connection), resuming from that id:
//    every change committed after the start is delivered; changes the snapshot already
//    holds are dropped by row version. Rows never go missing and never appear twice.
// 3. The browser's own reconnects send Last-Event-ID: the stream resumes where it was.

const channels = ["runs", "jobs"]
const pageId = Math.random().toString(36).slice(2)
const loadedAt = new Date()

const state = { runs: new Map(), jobs: new Map(), archivedThrough: 0 }
const counters = { received: 0, applied: 0, stale: 0, duplicates: 0, resets: 0, opens: 0, errors: 0 }
const seen = new Set()
const seenOrder = []
const latencies = [] // recent commit→browser latencies (ms), for the sparkline and p50
let pendingTelemetry = []
let source
let ready = false
let lastStats
const changedRuns = new Set()
const log = []

const $ = (id) => document.getElementById(id)
const esc = (s) =>
  String(s ?? "").replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c],
  )
const fmt = (n, digits = 0) =>
  n === undefined || n === null || Number.isNaN(n)
    ? "–"
    : Number(n).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits })

// ---------------------------------------------------------------- state

function loadSnapshot(snapshot) {
  state.runs.clear()
  state.jobs.clear()
  state.archivedThrough = snapshot.archivedThrough
  for (const run of snapshot.runs) state.runs.set(run.id, run)
  for (const job of snapshot.jobs) state.jobs.set(job.id, job)
  for (const run of snapshot.runs) changedRuns.add(run.id)
}

/** Upserts a row when it is newer than the one shown; false for a change the page already has. */
function upsert(map, row) {
  const current = map.get(row.id)
  if (current && current.version >= row.version) return false
  map.set(row.id, row)
  return true
}

function archive(through) {
  if (through <= state.archivedThrough) return
  state.archivedThrough = through
  for (const id of state.runs.keys()) if (id <= through) state.runs.delete(id)
  for (const [id, job] of state.jobs) if (job.runId <= through) state.jobs.delete(id)
}

function apply(event) {
  counters.received += 1
  if (seen.has(event.id)) {
    counters.duplicates += 1
    return
  }
  seen.add(event.id)
  seenOrder.push(event.id)
  if (seenOrder.length > 50000) seen.delete(seenOrder.shift())

  const latency = Date.now() - Date.parse(event.time)
  latencies.push(latency)
  if (latencies.length > 200) latencies.shift()
  pendingTelemetry.push(latency)

  let applied = false
  let subject = ""
  if (event.type === "run.archived") {
    archive(event.data.archivedThrough)
    applied = true
    subject = `run #${event.data.runId}`
  } else if (event.channel === "runs") {
    const run = event.data
    subject = `run #${run.id} ${run.pipeline}`
    if (run.id > state.archivedThrough && upsert(state.runs, run)) {
      applied = true
      changedRuns.add(run.id)
    }
  } else if (event.channel === "alerts") {
    // Published by a trigger on demo.alerts (plain SQL INSERT, no bus.publish).
    subject = `run #${event.data.run_id}: ${event.data.message}`
    applied = true
  } else if (event.channel === "jobs") {
    const job = event.data
    subject = `job #${job.id} ${job.name} (run #${job.runId})`
    if (job.runId > state.archivedThrough && upsert(state.jobs, job)) {
      applied = true
      changedRuns.add(job.runId)
    }
  }
  if (applied) counters.applied += 1
  else counters.stale += 1
  log.unshift({ at: new Date(), channel: event.channel, type: event.type, subject, latency, applied })
  if (log.length > 16) log.pop()
  scheduleRender()
}

// ---------------------------------------------------------------- stream

async function fetchSnapshot() {
  const response = await fetch("/api/snapshot", { cache: "no-store" })
  if (!response.ok) {
    const body = await response.json().catch(() => ({}))
    throw new Error(`snapshot failed (HTTP ${response.status}): ${body.error ?? "no details"}`)
  }
  return response.json()
}

/** Connects, and tries again every 3 s while the snapshot cannot be read. */
function start() {
  connect().catch((error) => {
    showError(error)
    setStream("no snapshot, retrying…", "pill-down")
    setTimeout(start, 3000)
  })
}

async function connect() {
  const snapshot = await fetchSnapshot()
  loadSnapshot(snapshot)
  scheduleRender()
  const query = channels.map((c) => `channel=${encodeURIComponent(c)}`).join("&")
  source = new EventSource(`/events?${query}&lastEventId=${encodeURIComponent(snapshot.lastEventId)}`)
  source.onopen = () => {
    counters.opens += 1
    ready = true
    setStream("live", "pill-live")
  }
  source.onmessage = (e) => apply(JSON.parse(e.data))
  source.onerror = () => {
    counters.errors += 1
    if (source.readyState === EventSource.CLOSED) setStream("disconnected", "pill-down")
    else setStream("reconnecting…", "pill-wait")
  }
  // The server cannot resume from our position (older than retention, another epoch): start over.
  source.addEventListener("reset", (e) => {
    counters.resets += 1
    console.warn("event stream reset", e.data)
    source.close()
    ready = false
    start()
  })
}

function setStream(text, cls) {
  const pill = $("stream-pill")
  pill.textContent = text
  pill.className = `pill ${cls}`
}

// ---------------------------------------------------------------- rendering

let renderQueued = false
function scheduleRender() {
  if (renderQueued) return
  renderQueued = true
  requestAnimationFrame(() => {
    renderQueued = false
    render()
  })
}

const glyph = { queued: "", running: " ⟳", succeeded: " ✓", failed: " ✗", skipped: "" }

function duration(run) {
  const end = run.finishedAt ? Date.parse(run.finishedAt) : Date.now()
  return `${((end - Date.parse(run.startedAt)) / 1000).toFixed(1)} s`
}

function render() {
  const jobsByRun = new Map()
  for (const job of state.jobs.values()) {
    const list = jobsByRun.get(job.runId) ?? []
    list.push(job)
    jobsByRun.set(job.runId, list)
  }
  const runs = [...state.runs.values()].sort((a, b) => b.id - a.id)
  const body = $("runs-body")
  if (runs.length === 0) {
    body.innerHTML = `<tr class="empty"><td colspan="4">Waiting for the first run…</td></tr>`
  } else {
    body.innerHTML = runs
      .map((run) => {
        const jobs = (jobsByRun.get(run.id) ?? []).sort((a, b) => a.step - b.step)
        const chips = jobs
          .map(
            (j) =>
              `<span class="chip s-${esc(j.status)}" data-job-id="${j.id}" data-status="${esc(j.status)}" data-version="${j.version}" title="${esc(`${j.name}: ${j.status}${j.agent ? ` (agent ${j.agent})` : ""}, attempt ${j.attempt}`)}">${esc(j.name)}${glyph[j.status] ?? ""}${j.attempt > 1 ? `<sup>×${j.attempt}</sup>` : ""}</span>`,
          )
          .join("")
        const flash = changedRuns.has(run.id) ? " flash" : ""
        return `<tr class="run${flash}" data-run-id="${run.id}" data-status="${esc(run.status)}" data-version="${run.version}">
          <td class="run-cell"><div><span class="run-id">#${run.id}</span><span class="run-title">${esc(run.title)}</span></div>
            <div class="pipeline">${esc(run.pipeline)}</div></td>
          <td><span class="badge b-${esc(run.status)}">${esc(run.status)}</span></td>
          <td><div class="jobs">${chips}</div></td>
          <td class="num muted">${duration(run)}</td></tr>`
      })
      .join("")
  }
  changedRuns.clear()
  $("runs-foot").textContent =
    `${runs.length} runs, ${state.jobs.size} jobs · older runs archived` +
    (state.archivedThrough > 0 ? ` (through #${state.archivedThrough})` : "") +
    " · each row as committed in demo.runs / demo.jobs"
  $("page-facts").innerHTML = [
    ["received", counters.received],
    ["applied", counters.applied],
    ["in snapshot", counters.stale],
    ["duplicates", counters.duplicates],
    ["stream opens", counters.opens],
    ["resets", counters.resets],
  ]
    .map(([k, v]) => `<div><dt>${k}</dt><dd>${fmt(v)}</dd></div>`)
    .join("")

  $("log").innerHTML = log
    .map(
      (e) =>
        `<li><span class="muted">${e.at.toTimeString().slice(0, 8)}.${String(e.at.getMilliseconds()).padStart(3, "0")}</span>` +
        `<span><span class="t-${esc(e.channel)}">${esc(e.type)}</span> ${esc(e.subject)}${e.applied ? "" : ' <span class="muted">(in snapshot)</span>'}</span>` +
        `<span class="lat">${fmt(e.latency)} ms</span></li>`,
    )
    .join("")
  $("log-count").textContent = `${fmt(counters.received)} received`
  $("page-since").textContent = `loaded ${loadedAt.toTimeString().slice(0, 8)}`
  renderSpark()
}

function percentile(values, q) {
  if (values.length === 0) return undefined
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]
}

function renderSpark() {
  const values = latencies.slice(-120)
  const svg = $("spark")
  if (values.length < 2) return
  const max = Math.max(20, ...values) * 1.1
  const step = 300 / (values.length - 1)
  const points = values
    .map((v, i) => `${(i * step).toFixed(1)},${(60 - (v / max) * 58).toFixed(1)}`)
    .join(" ")
  const p50 = percentile(values, 0.5)
  const y50 = (60 - (p50 / max) * 58).toFixed(1)
  svg.innerHTML =
    `<line x1="0" x2="300" y1="${y50}" y2="${y50}" stroke="#34d399" stroke-dasharray="3 3" stroke-width="1" opacity="0.6"/>` +
    `<polyline points="${points}" fill="none" stroke="#7aa2ff" stroke-width="1.6" vector-effect="non-scaling-stroke"/>`
  $("spark-text").textContent =
    `p50 ${fmt(p50)} · p95 ${fmt(percentile(values, 0.95))} · max ${fmt(Math.max(...values))} ms, last ${values.length}`
}

function renderStats(s) {
  lastStats = s
  $("transport-pill").textContent = s.transport.transport
  $("transport-name").textContent = s.transport.transport
  $("transport-why").textContent = `Why: ${s.transport.reason}.`
  $("transport-how").textContent = s.transport.how
  const ratio = Math.min(1, s.pressure.ratio || 0)
  $("pressure-fill").style.width = `${Math.max(1, ratio * 100).toFixed(1)}%`
  $("pressure-fill").style.background =
    ratio > 0.8 ? "var(--red)" : ratio > 0.5 ? "var(--amber)" : "var(--green)"
  $("pressure-text").textContent =
    `${fmt(s.pressure.notifyingCommitsPerSecond, 1)} notifying commits/s of ${fmt(s.pressure.threshold)}/s`

  $("t-events").innerHTML = `${fmt(s.producer.eventsPerSecond, 1)}`
  $("t-events-sub").textContent =
    `${fmt(s.producer.transactionsPerSecond, 1)} tx/s · ${fmt(s.producer.events)} total${s.producer.paused ? " · paused" : ""}`

  const local = latencies.slice(-100)
  $("t-latency").innerHTML = local.length ? `${fmt(percentile(local, 0.5))} <small>ms</small>` : "–"
  $("t-latency-sub").textContent = local.length
    ? `p50 · p95 ${fmt(percentile(local, 0.95))} ms · commit → browser`
    : "p50, commit → this browser"

  const q = s.queries
  $("t-queries-label").title = q.description
  $("t-queries").innerHTML =
    `${fmt(q.perMinute)} <small>${q.method === "pg_stat_statements" ? "" : "tx"}</small>`
  const perEvent =
    s.producer.eventsPerSecond > 0 ? q.perMinute / (s.producer.eventsPerSecond * 60) : undefined
  if (q.breakdown) {
    const b = q.breakdown
    $("t-queries-sub").textContent = `bus ${fmt(b.bus)} · app ${fmt(b.app)} · tx ${fmt(b.control)}`
    $("t-queries-sub").title = perEvent ? `≈ ${fmt(perEvent, 1)} statements per event published` : ""
    const total = Math.max(1, b.bus + b.app + b.control + b.other)
    $("t-queries-bar").innerHTML = [
      ["bus", b.bus, "var(--accent)"],
      ["app", b.app, "#c4b5fd"],
      ["tx", b.control, "var(--gray)"],
      ["other", b.other, "#334155"],
    ]
      .map(
        ([k, v, c]) =>
          `<span title="${k}: ${fmt(v)}/min" style="width:${(v / total) * 100}%;background:${c}"></span>`,
      )
      .join("")
  } else {
    $("t-queries-sub").textContent = `transactions, pg_stat_database (${q.windowSeconds} s)`
  }

  $("t-subscribers").textContent = fmt(s.subscribers)
  $("t-subscribers-sub").textContent = `SSE streams · ${fmt(s.delivery.sentPerSecond, 1)} events/s sent`

  const l = s.listener
  const reconnects = Math.max(0, l.connects - 1)
  $("t-listener").innerHTML = l.connected
    ? `<span class="ok">●</span> ${esc(l.notify)}`
    : `<span style="color:var(--amber)">●</span> reconnecting`
  $("t-listener-sub").textContent =
    `${fmt(reconnects)} reconnect${reconnects === 1 ? "" : "s"} · ${fmt(l.kills.length)} kill${l.kills.length === 1 ? "" : "s"}`
  $("kills").innerHTML = l.kills.length
    ? l.kills
        .slice(-5)
        .reverse()
        .map(
          (k) =>
            `<li>${new Date(k.at).toTimeString().slice(0, 8)} · killed ${k.terminated} backend${k.terminated === 1 ? "" : "s"} · ` +
            (k.recoveredAfterMs === undefined || k.recoveredAfterMs === null
              ? `<span style="color:var(--amber)">reconnecting…</span>`
              : `<span class="ok">reconnected in ${fmt(k.recoveredAfterMs)} ms</span>, caught up from cursor`) +
            `</li>`,
        )
        .join("")
    : `<li class="muted">No kills yet. The listener reconnects with backoff and catches up from its cursor.</li>`
  $("pause").textContent = s.producer.paused ? "Resume producer" : "Pause producer"
}

function showError(error) {
  console.error(error)
  toast(String(error.message ?? error))
}

let toastTimer
function toast(text) {
  const t = $("toast")
  t.textContent = text
  t.hidden = false
  clearTimeout(toastTimer)
  toastTimer = setTimeout(() => {
    t.hidden = true
  }, 4000)
}

// ---------------------------------------------------------------- stats and controls

async function pollStats() {
  try {
    const latenciesToSend = pendingTelemetry
    pendingTelemetry = []
    fetch("/api/telemetry", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ page: pageId, latencies: latenciesToSend }),
    }).catch(() => {})
    const response = await fetch("/api/stats", { cache: "no-store" })
    if (response.ok) renderStats(await response.json())
  } catch {
    // The server is gone or restarting; the next poll tries again.
  }
}

$("kill").addEventListener("click", async () => {
  $("kill").disabled = true
  try {
    const response = await fetch("/admin/kill-listener", { method: "POST" })
    const result = await response.json()
    toast(
      `pg_terminate_backend: killed ${result.terminated} listener connection(s); watch it reconnect and catch up.`,
    )
  } catch (error) {
    showError(error)
  } finally {
    setTimeout(() => {
      $("kill").disabled = false
    }, 800)
  }
})

$("pause").addEventListener("click", async () => {
  const paused = lastStats?.producer.paused
  await fetch(paused ? "/admin/resume" : "/admin/pause", { method: "POST" }).catch(showError)
  pollStats()
})

// For tests and the curious: the page's state, as rendered.
window.__dashboard = {
  get ready() {
    return ready
  },
  counters,
  state() {
    return {
      runs: [...state.runs.values()].sort((a, b) => a.id - b.id),
      jobs: [...state.jobs.values()].sort((a, b) => a.id - b.id),
      archivedThrough: state.archivedThrough,
    }
  },
}

setInterval(pollStats, 1000)
setInterval(scheduleRender, 1000) // run durations tick
pollStats()
start()
