import { existsSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { type BrowserContext, chromium } from "playwright-core"

/**
 * Headless Chromium for the browser test and the screenshot script: the Debian
 * `chromium` package driven by playwright-core (which downloads no browser of its own).
 *
 * @module
 */

/** Where Debian's chromium package puts the browser; `BUS_CHROMIUM` overrides it. */
export const chromiumPath = process.env.BUS_CHROMIUM ?? "/usr/bin/chromium"

/** A browser (its one context, on a fresh profile) and the means to close it and remove the profile. */
export interface LaunchedBrowser {
  readonly context: BrowserContext
  close(): Promise<void>
}

/** Launches headless Chromium with a fresh profile; throws a clear error when it is not installed. */
export const launchChromium = async (): Promise<LaunchedBrowser> => {
  if (!existsSync(chromiumPath)) {
    throw new Error(
      `Chromium is not installed at ${chromiumPath}: the browser test and the screenshot need it. ` +
        "Install it with `apt-get install -y chromium` (Debian; .ci/run does this), or set BUS_CHROMIUM to a Chromium binary.",
    )
  }
  const profile = mkdtempSync(join(tmpdir(), "bus-chromium-"))
  try {
    // A persistent context is how Playwright takes a profile directory of our choosing: a fresh one.
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: chromiumPath,
      headless: true,
      viewport: { width: 1360, height: 900 },
      // Without the background-networking flags Chromium's own connections get refused in sandboxes
      // without internet, which stalls start-up.
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    })
    return {
      context,
      close: async () => {
        await context.close().catch(() => {})
        rmSync(profile, { recursive: true, force: true })
      },
    }
  } catch (error) {
    rmSync(profile, { recursive: true, force: true })
    throw error
  }
}
