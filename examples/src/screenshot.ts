/**
 * Takes the README's screenshot of the dashboard: starts the demo, lets it run, kills the
 * listener once (so the recovery panel has something to show), and saves a PNG.
 *
 *   pnpm --filter @bus/examples screenshot [--out ../docs/images/dashboard.png] [--seconds 60]
 */
import { mkdirSync } from "node:fs"
import { dirname, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { parseArgs } from "node:util"
import { launchChromium } from "./browser.js"
import { startDemo } from "./dashboard/app.js"

const { values } = parseArgs({
  options: { out: { type: "string" }, seconds: { type: "string" } },
})
const out = resolve(values.out ?? fileURLToPath(new URL("../../docs/images/dashboard.png", import.meta.url)))
const seconds = Number(values.seconds ?? 60)

const browser = await launchChromium()
const demo = await startDemo({
  port: 0,
  log: (line) => console.log(`• ${line}`),
})
try {
  const page = await browser.context.newPage()
  await page.goto(demo.url)
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
  await sleep((seconds * 1000) / 2)
  await page.click("#kill")
  await sleep((seconds * 1000) / 2)
  mkdirSync(dirname(out), { recursive: true })
  await page.screenshot({ path: out, fullPage: true })
  console.log(`saved ${out}`)
} finally {
  await browser.close()
  await demo.stop()
}
