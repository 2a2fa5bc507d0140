import pg from "pg"

/**
 * pg pools and clients that never crash the process: a server killed under them (a
 * fault scenario, Ctrl-C stopping Postgres) emits 'error' on every client, and an
 * 'error' event without a listener is an uncaught exception. Each query still rejects.
 */
const ignore = () => undefined

export const makePool = (config: pg.PoolConfig): pg.Pool => {
  const pool = new pg.Pool(config)
  pool.on("error", ignore)
  pool.on("connect", (client) => {
    client.on("error", ignore)
  })
  return pool
}

export const makeClient = (config: pg.ClientConfig): pg.Client => {
  const client = new pg.Client(config)
  client.on("error", ignore)
  return client
}
