import { readFileSync } from "node:fs"
import http from "node:http"
import type { AddressInfo } from "node:net"
import { fileURLToPath } from "node:url"
import { type Bus, createBus } from "@bus/core"
import { postgresOutbox } from "@bus/postgres-notify"
import { nodeSseHandler } from "@bus/sse"
import { type PostgresHandle, startPostgres } from "@bus/test-infra"
import pg from "pg"
import type { Page } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type LaunchedBrowser, launchChromium } from "../src/browser.js"

/**
 * `@bus/sse/client` in real Chromium against a real `nodeSseHandler` over Postgres: a
 * bearer token in a header (which `EventSource` cannot send), two streams on one page each
 * with its own stored resume id, a server restart with events committed while it was down,
 * a page reload, and a `reset` for an unusable stored id.
 */

const clientJs = readFileSync(fileURLToPath(import.meta.resolve("@bus/sse/client")), "utf8")

const page = `<!doctype html><meta charset="utf-8"><title>client</title>
<script type="module">
  import { followStream } from "/client.js"
  window.__token = "wrong"
  window.__got = { a: [], b: [] }
  window.__resets = []
  window.__statuses = { a: [], b: [] }
  window.__streams = {}
  window.__start = () => {
    for (const channel of ["a", "b"]) {
      window.__streams[channel] = followStream(
        { url: "/events", channels: [channel], headers: () => ({ Authorization: "Bearer " + window.__token }), initialRetryMs: 200, maxRetryMs: 1000 },
        {
          onEvent: (e) => window.__got[channel].push({ id: e.id, type: e.type, seq: e.data.seq }),
          onReset: (info) => window.__resets.push({ channel, ...info }),
          onStatus: (s) => window.__statuses[channel].push(s),
        },
      )
    }
  }
</script>`

interface Got {
  readonly id: string
  readonly type: string
  readonly seq: number
}
declare global {
  interface Window {
    __token: string
    __got: { a: Got[]; b: Got[] }
    __resets: Array<{ channel: string; reason: string }>
    __statuses: {
      a: Array<{ state: string; httpStatus?: number }>
      b: Array<{ state: string; httpStatus?: number }>
    }
    __start(): void
  }
}

let postgres: PostgresHandle
let browser: LaunchedBrowser
let db: pg.Pool

beforeAll(async () => {
  postgres = await startPostgres()
  db = new pg.Pool({ connectionString: postgres.url, max: 2 })
  browser = await launchChromium()
}, 120_000)

afterAll(async () => {
  await server?.stop()
  await browser?.close()
  await db?.end()
  await postgres?.stop()
})

interface Server {
  readonly port: number
  readonly bus: Bus
  stop(): Promise<void>
}
let server: Server | undefined

const startServer = async (port = 0): Promise<Server> => {
  const pgn = postgresOutbox({ connectionString: postgres.url, pressure: false })
  const bus = await createBus({
    outbox: pgn,
    env: false,
  })
  const events = nodeSseHandler(bus, {
    authorize: (req) =>
      req.headers.authorization === "Bearer secret"
        ? { tenant: "acme", channels: ["a", "b"] }
        : { status: 401 },
  })
  const httpServer = http.createServer((req, res) => {
    if (req.url === "/") return void res.writeHead(200, { "content-type": "text/html" }).end(page)
    if (req.url === "/client.js")
      return void res.writeHead(200, { "content-type": "text/javascript" }).end(clientJs)
    if (req.url?.startsWith("/events")) return void events(req, res)
    res.writeHead(404).end()
  })
  await new Promise<void>((resolve) => httpServer.listen(port, "127.0.0.1", resolve))
  return {
    port: (httpServer.address() as AddressInfo).port,
    bus,
    stop: async () => {
      httpServer.closeAllConnections()
      await new Promise<void>((resolve) => httpServer.close(() => resolve()))
      await bus.close()
    },
  }
}

/** Publishes `n` events to `channel` with the SQL function (works while no app server runs). */
const publish = async (channel: string, from: number, n: number) => {
  const client = await db.connect()
  try {
    await client.query("BEGIN")
    for (let seq = from; seq < from + n; seq++)
      await client.query("SELECT bus.publish('acme', $1, 'tick', $2)", [channel, JSON.stringify({ seq })])
    await client.query("COMMIT")
  } finally {
    client.release()
  }
}

const waitFor = async (what: string, check: () => Promise<boolean>, timeoutMs = 20_000) => {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

/** The resume ids the page stored, by stream key. */
const storedIds = (p: Page) =>
  p.evaluate(() =>
    Object.fromEntries(
      Object.keys(localStorage)
        .filter((k) => k.startsWith("@bus/sse:"))
        .map((k) => [k, localStorage.getItem(k)]),
    ),
  )

const seqs = (p: Page, channel: "a" | "b") => p.evaluate((c) => window.__got[c].map((e) => e.seq), channel)
const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i)

describe("@bus/sse/client in Chromium", () => {
  it("sends a bearer header, keeps one resume id per stream, resumes after a server restart and a reload, and handles reset", async () => {
    server = await startServer()
    const port = server.port
    const tab = await browser.context.newPage()
    await tab.goto(`http://127.0.0.1:${port}/`)
    await tab.evaluate(() => window.__start())

    // A wrong token: 401, retried with backoff (the header function is called again each time).
    await waitFor("a 401 retry", async () =>
      (await tab.evaluate(() => window.__statuses.a)).some(
        (s) => s.state === "retrying" && s.httpStatus === 401,
      ),
    )
    await tab.evaluate(() => {
      window.__token = "secret"
    })
    // Open, and positioned: the server's first frame carries the start position, stored at once.
    await waitFor("both streams positioned", async () => Object.keys(await storedIds(tab)).length === 2)
    await publish("a", 0, 5)
    await publish("b", 100, 5)
    await waitFor(
      "the first events",
      async () => (await seqs(tab, "a")).length === 5 && (await seqs(tab, "b")).length === 5,
    )

    // One stored id per stream, each that stream's last event id.
    const stored = await storedIds(tab)
    const keys = Object.keys(stored)
    expect(keys.sort()).toEqual([
      `@bus/sse:http://127.0.0.1:${port}/events:a`,
      `@bus/sse:http://127.0.0.1:${port}/events:b`,
    ])
    expect(stored[keys[0]!]).not.toEqual(stored[keys[1]!])

    // The server goes away; events are committed meanwhile; it comes back on the same port.
    await server.stop()
    server = undefined
    await waitFor(
      "the client noticing",
      async () => (await tab.evaluate(() => window.__statuses.a.at(-1)?.state)) === "retrying",
    )
    await publish("a", 5, 5)
    await publish("b", 105, 5)
    server = await startServer(port)
    await waitFor(
      "the events committed while down",
      async () => (await seqs(tab, "a")).length >= 10 && (await seqs(tab, "b")).length >= 10,
    )
    await new Promise((r) => setTimeout(r, 500))
    expect(await seqs(tab, "a")).toEqual(range(0, 10))
    expect(await seqs(tab, "b")).toEqual(range(100, 110))

    // A reload resumes from storage: only what comes after, nothing replayed.
    await tab.reload()
    await tab.evaluate(() => {
      window.__token = "secret"
      window.__start()
    })
    await waitFor(
      "reopened",
      async () => (await tab.evaluate(() => window.__statuses.a.at(-1)?.state)) === "open",
    )
    await publish("a", 10, 2)
    await waitFor("events after the reload", async () => (await seqs(tab, "a")).length >= 2)
    await new Promise((r) => setTimeout(r, 300))
    expect(await seqs(tab, "a")).toEqual([10, 11])
    expect(await seqs(tab, "b")).toEqual([])

    // An unusable stored id: reset, the id forgotten, the stream continues from now.
    await tab.evaluate((key) => {
      for (const s of Object.values(
        (window as unknown as { __streams: Record<string, { close(): void }> }).__streams,
      ))
        s.close()
      localStorage.setItem(key, "pg1:not-a-cursor")
      window.__got.a = []
      window.__start()
    }, `@bus/sse:http://127.0.0.1:${port}/events:a`)
    await waitFor("the reset", async () => (await tab.evaluate(() => window.__resets.length)) === 1)
    const reset = await tab.evaluate(() => window.__resets[0]!)
    expect(reset.channel).toBe("a")
    const keyA = `@bus/sse:http://127.0.0.1:${port}/events:a`
    await waitFor("positioned after the reset", async () => {
      const id = (await storedIds(tab))[keyA]
      return id !== undefined && id !== "pg1:not-a-cursor"
    })
    await publish("a", 20, 1)
    await waitFor("an event after the reset", async () => (await seqs(tab, "a")).length >= 1)
    expect(await seqs(tab, "a")).toEqual([20])
    await tab.close()
  })
})
