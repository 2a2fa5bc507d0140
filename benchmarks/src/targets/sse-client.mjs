// A real SSE client for the fan-out benchmark, run as its own OS process (so its CPU is
// not the server's): opens N HTTP connections to an @bus/sse endpoint, parses the
// text/event-stream frames, and reports to the parent (IPC) how many clients are
// connected and live, then the receive latency of every event at every client (from the
// intended send time `t`, an absolute high-resolution time both processes share), losses
// and duplicates. Plain JavaScript: the parent spawns it with `node`, no loader needed.
import http from "node:http"
import { monitorEventLoopDelay } from "node:perf_hooks"

const now = () => performance.timeOrigin + performance.now()

/** Per client: state of its stream. */
const clients = []
let measuring = false
/** Receive latencies of measured events, ms. */
let latencies = new Float64Array(1 << 20)
let count = 0
let connectedCount = 0
let liveCount = 0
let closedCount = 0

const record = (ms) => {
  if (count === latencies.length) {
    const bigger = new Float64Array(latencies.length * 2)
    bigger.set(latencies)
    latencies = bigger
  }
  latencies[count++] = ms
}

// The data of a bus event is `{"s":<seq>,"t":<intended>,"p":"…"}` inside the envelope
// JSON; reading the two numbers by position keeps the client cheap (no JSON.parse). The
// keys are looked up, not assumed in order: a Postgres outbox stores data as jsonb, which
// hands them back reordered (`{"p":…,"s":…,"t":…}`), and the pad `p` never holds a quote.
const marker = '"data":{'
const numberAfter = (frame, key, from) => {
  const k = frame.indexOf(key, from)
  if (k < 0) return Number.NaN
  const start = k + key.length
  let end = start
  while (end < frame.length && frame[end] !== "," && frame[end] !== "}") end++
  return Number(frame.slice(start, end))
}
const onFrame = (client, frame, at) => {
  const i = frame.indexOf(marker)
  if (i < 0) return
  const s = numberAfter(frame, '"s":', i)
  const t = numberAfter(frame, '"t":', i)
  if (Number.isNaN(s) || Number.isNaN(t)) return
  if (s < 0) {
    if (!client.live) {
      client.live = true
      liveCount++
    }
    return
  }
  if (!measuring) return
  // Concurrent publishes commit (and are delivered) in commit order, not in `s` order, so
  // a repeat is told by a per-client bitmap of the sequence numbers seen, not by order.
  if (s >= client.seen.length * 8) {
    const bigger = new Uint8Array(Math.max(client.seen.length * 2, (s >> 3) + 1))
    bigger.set(client.seen)
    client.seen = bigger
  }
  const bit = 1 << (s & 7)
  if ((client.seen[s >> 3] & bit) !== 0) client.duplicates++
  else {
    client.seen[s >> 3] |= bit
    client.received++
  }
  record(at - t)
}

/** Connections asked for and not answered yet: bounded, so a slow accept queue does not drop them. */
let pendingConnects = 0
const maxPendingConnects = 256
let firstError
const connectWaiters = []
const settledConnect = () => {
  pendingConnects--
  connectWaiters.shift()?.()
}

const open = (url, index) => {
  const client = {
    index,
    buffer: "",
    live: false,
    connected: false,
    received: 0,
    duplicates: 0,
    seen: new Uint8Array(32),
    req: undefined,
  }
  clients.push(client)
  pendingConnects++
  let answered = false
  const answer = () => {
    if (answered) return
    answered = true
    settledConnect()
  }
  const req = http.get(url, { agent: false, headers: { Accept: "text/event-stream" } }, (res) => {
    answer()
    res.setEncoding("utf8")
    res.on("data", (chunk) => {
      const at = now()
      if (!client.connected) {
        client.connected = true
        connectedCount++
      }
      let buffer = client.buffer + chunk
      let end = buffer.indexOf("\n\n")
      while (end >= 0) {
        onFrame(client, buffer.slice(0, end), at)
        buffer = buffer.slice(end + 2)
        end = buffer.indexOf("\n\n")
      }
      client.buffer = buffer
    })
    res.on("close", () => {
      closedCount++
    })
  })
  req.on("error", (error) => {
    answer()
    firstError ??= error.message
    closedCount++
  })
  client.req = req
}

const quantile = (sorted, q) =>
  sorted.length === 0 ? Number.NaN : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]

const send = (message) => process.send?.(message)

let progress
// This process's own event-loop delay while measuring: when it is high, the latencies
// measure the client, not the server.
const loopDelay = monitorEventLoopDelay({ resolution: 10 })
loopDelay.enable()
process.on("message", async (message) => {
  if (message.cmd === "connect") {
    const started = now()
    progress = setInterval(
      () => send({ type: "progress", connected: connectedCount, live: liveCount, closed: closedCount }),
      100,
    )
    // Connect in waves, so the server's accept queue is never the limit being measured.
    for (let i = 0; i < message.count; i++) {
      while (pendingConnects >= maxPendingConnects)
        await new Promise((resolve) => connectWaiters.push(resolve))
      open(message.url, i)
    }
    send({ type: "opened", ms: now() - started })
  } else if (message.cmd === "measure") {
    loopDelay.reset()
    for (const c of clients) {
      c.received = 0
      c.duplicates = 0
      c.seen = new Uint8Array(32)
    }
    count = 0
    measuring = true
  } else if (message.cmd === "report") {
    // Measuring goes on: the parent asks again while the last events are still arriving.
    const sorted = latencies.slice(0, count).sort()
    let received = 0
    let duplicates = 0
    let lost = 0
    for (const c of clients) {
      received += c.received
      duplicates += c.duplicates
      lost += Math.max(0, message.expected - c.received)
    }
    send({
      type: "report",
      clients: clients.length,
      connected: connectedCount,
      closed: closedCount,
      firstError,
      received,
      duplicates,
      lost,
      p50: quantile(sorted, 0.5),
      p90: quantile(sorted, 0.9),
      p99: quantile(sorted, 0.99),
      p999: quantile(sorted, 0.999),
      max: sorted.length > 0 ? sorted[sorted.length - 1] : Number.NaN,
      clientLoopDelayP99: loopDelay.percentile(99) / 1e6,
      clientLoopDelayMax: loopDelay.max / 1e6,
    })
  } else if (message.cmd === "close") {
    clearInterval(progress)
    for (const c of clients) c.req?.destroy()
    process.exit(0)
  }
})
process.on("disconnect", () => process.exit(0))
