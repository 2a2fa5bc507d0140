/**
 * @bus/test-infra: real servers for tests and benchmarks. Postgres, Redis, a Redis Cluster, NATS and a NATS
 * JetStream cluster run as local processes on free loopback ports, with fault injection (kill, pause, restart,
 * dropped connections, and a proxy that blackholes connections without closing them) and cleanup on every exit path. The vitest global setup that reaps what
 * crashed workers leave behind is the `@bus/test-infra/global-setup` entry.
 *
 * @packageDocumentation
 */

export { rejectionOf } from "./rejection.js"
export {
  type BlackholeProxy,
  type BlackholeProxyOptions,
  startBlackholeProxy,
  viaProxy,
} from "./servers/blackhole-proxy.js"
export { MissingBinaryError } from "./servers/find-executable.js"
export { freePort } from "./servers/free-port.js"
export { NATS_URL_ENV, startNats } from "./servers/nats.js"
export { NATS_CLUSTER_URL_ENV, startNatsCluster } from "./servers/nats-cluster.js"
export { pauseFor } from "./servers/pause-for.js"
export { PG_URL_ENV, startPostgres } from "./servers/postgres.js"
export { PG_OS_USER_ENV } from "./servers/postgres-os-user.js"
export {
  type ProcessEntry,
  parseProcStat,
  processTree,
  processTreeCpuMs,
  readProcessTable,
} from "./servers/process-table.js"
export { REDIS_URL_ENV, startRedis } from "./servers/redis.js"
export { REDIS_CLUSTER_URL_ENV, startRedisCluster } from "./servers/redis-cluster.js"
export { RUN_DIR_ENV } from "./servers/run-dir.js"
export { resolveServerMode, SERVER_MODE_ENV, type TestServerMode } from "./servers/server-mode.js"
export { ServerStartError } from "./servers/server-start-error.js"
export type {
  NatsClusterHandle,
  PostgresHandle,
  RedisClusterHandle,
  RedisNodeRole,
  ServerHandle,
  StartNatsClusterOptions,
  StartNatsOptions,
  StartPostgresOptions,
  StartRedisClusterOptions,
  StartRedisOptions,
  TerminateConnectionsFilter,
} from "./servers/types.js"
