import { mkdirSync } from "node:fs"
import { fileURLToPath } from "node:url"
import pg from "pg"
import type { Page } from "playwright-core"
import { afterAll, describe, expect, it } from "vitest"
import { type LaunchedBrowser, launchChromium } from "../src/browser.js"
import { type Demo, startDemo } from "../src/dashboard/app.js"
import { type PipelineState, readState } from "../src/dashboard/schema.js"

/**
 * The dashboard in a real browser (Debian's chromium, driven by playwright-core): events
 * arrive over SSE, the bus's LISTEN connection is killed server-side, the page is
 * reloaded, and at quiet points the page's rows are compared with the database's
 * `runs` / `jobs` tables: nothing missing, nothing twice.
 */

const resultsDir = fileURLToPath(new URL("../test-results/", import.meta.url))

interface PageCounters {
  readonly received: number
  readonly applied: number
  readonly stale: number
  readonly duplicates: number
}

declare global {
  interface Window {
    __dashboard: { ready: boolean; counters: PageCounters; state(): PipelineState }
  }
}

const counters = (page: Page) => page.evaluate(() => ({ ...window.__dashboard.counters }))

const waitFor = async <A>(
  what: string,
  probe: () => Promise<A | undefined>,
  timeoutMs = 20_000,
): Promise<A> => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await probe()
    if (value !== undefined) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

/** What the page renders: one entry per row element, read from the DOM. */
const renderedRows = (page: Page) =>
  page.evaluate(() => ({
    runs: [...document.querySelectorAll<HTMLElement>("tr.run")].map((tr) => ({
      id: Number(tr.dataset.runId),
      status: tr.dataset.status,
      version: Number(tr.dataset.version),
    })),
    jobs: [...document.querySelectorAll<HTMLElement>("[data-job-id]")].map((el) => ({
      id: Number(el.dataset.jobId),
      status: el.dataset.status,
      version: Number(el.dataset.version),
    })),
  }))

const byId = <A extends { id: number }>(rows: ReadonlyArray<A>) => [...rows].sort((a, b) => a.id - b.id)

/**
 * At a quiet point (producer paused), the page's state and its rendered rows must equal
 * the tables: every row present once, in its committed state.
 */
const expectPageMatchesDatabase = async (page: Page, db: pg.Pool) => {
  const expected = await readState(db)
  const project = (s: PipelineState) => ({
    runs: s.runs.map((r) => ({ id: r.id, status: r.status, version: r.version })),
    jobs: s.jobs.map((j) => ({ id: j.id, status: j.status, version: j.version })),
  })
  // The page may still be applying the last events: give it a moment, then compare strictly.
  let last: { state: PipelineState; dom: Awaited<ReturnType<typeof renderedRows>> } | undefined
  const settled = await waitFor(
    "the page to show the database's rows",
    async () => {
      const state = await page.evaluate(() => window.__dashboard.state())
      const dom = await renderedRows(page)
      last = { state, dom }
      const same =
        JSON.stringify(state) === JSON.stringify(expected) &&
        JSON.stringify({ runs: byId(dom.runs), jobs: byId(dom.jobs) }) === JSON.stringify(project(expected))
      return same ? last : undefined
    },
    10_000,
  ).catch(() => last)
  expect(settled, "page state").toBeDefined()
  expect(settled!.state).toEqual(expected)
  // Rendered: each row exactly once (no duplicates), none missing, in its committed state.
  const dom = settled!.dom
  expect(new Set(dom.runs.map((r) => r.id)).size, "duplicate run rows").toBe(dom.runs.length)
  expect(new Set(dom.jobs.map((j) => j.id)).size, "duplicate job chips").toBe(dom.jobs.length)
  expect({ runs: byId(dom.runs), jobs: byId(dom.jobs) }).toEqual(project(expected))
  return expected
}

describe("dashboard in headless Chromium", () => {
  let browser: LaunchedBrowser | undefined
  let demo: Demo | undefined
  let db: pg.Pool | undefined

  afterAll(async () => {
    await browser?.close()
    await db?.end()
    await demo?.stop()
  }, 60_000)

  it("shows runs and jobs live, and survives a listener kill and a reload with no missing or duplicated rows", async () => {
    // In the test, not in a hook, so that a missing browser fails this test (with the install
    // hint) instead of leaving it reported as skipped.
    browser = await launchChromium()
    demo = await startDemo({ port: 0, transport: "postgres-notify", log: () => {}, producer: { rate: 12 } })
    db = new pg.Pool({ connectionString: demo.databaseUrl, max: 1, application_name: "browser-test" })

    const page = await browser.context.newPage()
    const pageErrors: string[] = []
    page.on("pageerror", (error) => pageErrors.push(error.message))
    page.on("console", (message) => {
      if (message.type() === "error") pageErrors.push(message.text())
    })
    const post = async (path: string) => {
      const response = await page.request.post(new URL(path, demo!.url).href)
      expect(response.ok(), `${path}: HTTP ${response.status()}`).toBe(true)
      return response.json()
    }

    await page.goto(demo!.url)
    await page.waitForFunction(
      () => window.__dashboard?.ready && window.__dashboard.counters.applied >= 5,
      null,
      {
        timeout: 30_000,
      },
    )
    await expect.poll(() => page.locator("tr.run").count()).toBeGreaterThan(0)
    await expect.poll(() => page.locator("#transport-pill").textContent()).toBe("postgres-notify")

    // Server-side listener kill, from the dashboard's button.
    const before = await counters(page)
    const [killResponse] = await Promise.all([
      page.waitForResponse((r) => r.url().endsWith("/admin/kill-listener")),
      page.click("#kill"),
    ])
    const kill = (await killResponse.json()) as { terminated: number }
    expect(kill.terminated).toBeGreaterThanOrEqual(1)
    const recovered = await waitFor(
      "the listener to reconnect",
      async () => demo!.stats().listener.kills.at(-1)?.recoveredAfterMs,
    )
    expect(recovered).toBeLessThan(15_000)
    // Events keep arriving after the kill.
    await waitFor("events after the kill", async () =>
      (await counters(page)).applied >= before.applied + 10 ? true : undefined,
    )
    await expect.poll(() => page.locator("#kills li").first().textContent()).toContain("reconnected in")

    // Quiet point: nothing missing or twice after the kill.
    await post("/admin/pause")
    const first = await expectPageMatchesDatabase(page, db!)
    expect(first.runs.length).toBeGreaterThan(0)
    expect((await counters(page)).duplicates).toBe(0)

    // Reload while the producer runs: snapshot plus resumed stream, again exact.
    await post("/admin/resume")
    await waitFor("new runs after resume", async () => {
      const r = await db!.query<{ n: number }>("SELECT count(*)::int AS n FROM demo.jobs WHERE version > 1")
      return r.rows[0]!.n > 0 ? true : undefined
    })
    await page.reload()
    await page.waitForFunction(
      () => window.__dashboard?.ready && window.__dashboard.counters.applied >= 5,
      null,
      {
        timeout: 30_000,
      },
    )
    await post("/admin/pause")
    const second = await expectPageMatchesDatabase(page, db!)
    expect(second.runs.at(-1)!.id).toBeGreaterThanOrEqual(first.runs.at(-1)!.id)
    expect((await counters(page)).duplicates).toBe(0)

    // The artifact: the dashboard, live again.
    await post("/admin/resume")
    await page.waitForTimeout(2500)
    mkdirSync(resultsDir, { recursive: true })
    await page.screenshot({ path: `${resultsDir}dashboard.png` })
    expect(pageErrors).toEqual([])
  }, 180_000)
})
