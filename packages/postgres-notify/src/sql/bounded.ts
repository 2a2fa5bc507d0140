import type pg from "pg"
import type { QueryResultLike } from "./executor.js"

/**
 * Bounded waits on pool connections. A connection behind a NAT or load balancer that
 * stopped forwarding stays open and silent (TCP notices nothing until keepalive gives up,
 * minutes to hours later): a statement sent on it waits for ever, and so does whoever
 * waits for that statement. Every statement the store runs on its pool therefore gets a
 * deadline; one that misses it is abandoned and its connection destroyed, so the pool
 * slot is freed at once and no later statement queues behind it.
 *
 * @module
 */

/** The `code` of the error a missed deadline raises (a network code: callers retry it). */
export const queryTimeoutCode = "ETIMEDOUT"

/** Destroys the socket of a pg client: the only way to end a connection that answers nothing. */
export const destroySocket = (client: pg.Client | pg.PoolClient): void => {
  ;(
    client as unknown as { connection?: { stream?: { destroy?: () => void } } }
  ).connection?.stream?.destroy?.()
}

// pg-pool takes its own 'error' listener off a client while it is checked out (pool.query
// adds one for the query); a checked-out client whose backend is terminated would
// otherwise throw from an 'error' event nobody hears. The failed statement reports it.
const guarded = new WeakSet<pg.PoolClient>()
const ignoreErrors = () => {}
const guard = (client: pg.PoolClient): pg.PoolClient => {
  if (!guarded.has(client)) {
    guarded.add(client)
    client.on("error", ignoreErrors)
  }
  return client
}

const timeoutError = (what: string, ms: number): Error =>
  Object.assign(new Error(`${what}: no reply within ${ms} ms; the connection was destroyed`), {
    code: queryTimeoutCode,
  })

/**
 * Runs one statement on a connection of `pool` with a deadline of `timeoutMs` covering
 * both the checkout (a new connection may hang in its handshake) and the reply. On the
 * deadline the promise rejects with an `ETIMEDOUT` error, the connection's socket is
 * destroyed and the connection removed from the pool (a checkout that completes later is
 * handed back the same way). `timeoutMs` 0 means no deadline.
 */
export const boundedQuery = (
  pool: pg.Pool,
  timeoutMs: number,
  text: string,
  params: ReadonlyArray<unknown>,
  /** A name to keep the statement prepared under on the connection (see `SqlExecutor.prepared`). */
  name?: string,
): Promise<QueryResultLike> => {
  const query = (c: pg.Pool | pg.PoolClient) =>
    name === undefined ? c.query(text, [...params]) : c.query({ name, text, values: [...params] })
  if (timeoutMs <= 0) return query(pool)
  return new Promise<QueryResultLike>((resolve, reject) => {
    let settled = false
    let client: pg.PoolClient | undefined
    const timer = setTimeout(() => {
      settled = true
      const error = timeoutError(client ? "query" : "connection checkout", timeoutMs)
      if (client) {
        destroySocket(client)
        client.release(error)
      }
      reject(error)
    }, timeoutMs)
    pool.connect().then(
      (connected) => {
        const c = guard(connected)
        if (settled) {
          // The deadline passed while connecting: this connection is not trusted either.
          destroySocket(c)
          c.release(new Error("abandoned after its deadline"))
          return
        }
        client = c
        query(c).then(
          (result) => {
            if (settled) return
            settled = true
            clearTimeout(timer)
            c.release()
            resolve(result)
          },
          (error: unknown) => {
            if (settled) return
            settled = true
            clearTimeout(timer)
            // As pool.query does: a client that failed a statement leaves the pool.
            c.release(error instanceof Error ? error : new Error(String(error)))
            reject(error)
          },
        )
      },
      (error: unknown) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        reject(error)
      },
    )
  })
}

/**
 * Ends a pool within `graceMs` whatever its sockets do: `pool.end()` waits for every
 * connection to end politely, which a silent peer never lets happen; after the grace
 * period the remaining sockets are destroyed, and `end()` then completes at once.
 * `clients` are the connections the pool opened (tracked from its `connect`/`remove` events).
 */
export const endPoolWithin = async (
  pool: pg.Pool,
  clients: ReadonlySet<pg.Client>,
  graceMs: number,
): Promise<void> => {
  const ended = pool.end().catch(() => {})
  let timer: ReturnType<typeof setTimeout> | undefined
  const graceOver = new Promise<"grace">((resolve) => {
    timer = setTimeout(() => resolve("grace"), graceMs)
  })
  const first = await Promise.race([ended.then(() => "ended" as const), graceOver])
  clearTimeout(timer)
  if (first === "ended") return
  for (const c of clients) destroySocket(c)
  // Destroyed sockets end at once; the bound holds even if something still lingers.
  let last: ReturnType<typeof setTimeout> | undefined
  await Promise.race([ended, new Promise<void>((resolve) => (last = setTimeout(resolve, 1_000)))])
  clearTimeout(last)
}
