/**
 * Where a stream keeps its resume id between page loads. One key per stream (endpoint and
 * channels), never one per tab or page: a cursor belongs to the stream that produced it,
 * and a page following two streams, or switching tenant, must not resume one stream from
 * the other's id (the server refuses a foreign id with a `reset`, which costs a reload).
 *
 * @module
 */

/** The part of the Web Storage API a stream uses; `localStorage` and `sessionStorage` fit. */
export interface ResumeStorage {
  getItem(key: string): string | null
  setItem(key: string, value: string): void
  removeItem(key: string): void
}

/** A storage that forgets on reload: for tests, workers, and pages without Web Storage. */
export const memoryStorage = (): ResumeStorage => {
  const map = new Map<string, string>()
  return {
    getItem: (k) => map.get(k) ?? null,
    setItem: (k, v) => void map.set(k, v),
    removeItem: (k) => void map.delete(k),
  }
}

/** `localStorage` when the page has it and it works (private modes may throw), else memory. */
export const defaultStorage = (): ResumeStorage => {
  try {
    const ls = (globalThis as { localStorage?: ResumeStorage }).localStorage
    if (ls !== undefined) {
      const probe = "@bus/sse:probe"
      ls.setItem(probe, "1")
      ls.removeItem(probe)
      return ls
    }
  } catch {
    // Storage disabled or full: fall through.
  }
  return memoryStorage()
}

/** The storage key of a stream: its endpoint (without query) and its sorted channels. */
export const streamKey = (url: string, channels: ReadonlyArray<string>): string => {
  const base = new URL(
    url,
    (globalThis as { location?: { href: string } }).location?.href ?? "http://localhost/",
  )
  return `@bus/sse:${base.origin}${base.pathname}:${[...channels].sort().join(",")}`
}
