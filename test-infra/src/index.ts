/**
 * @bus/test-infra: real servers for tests and benchmarks. Postgres, Redis, a Redis Cluster, NATS and a NATS
 * JetStream cluster run as local processes on free loopback ports, with fault injection (kill, pause, restart,
 * dropped connections, and a proxy that blackholes connections without closing them) and cleanup on every exit path. The vitest global setup that reaps what
 * crashed workers leave behind is the `@bus/test-infra/global-setup` entry.
 *
 * @packageDocumentation
 */

export {
  type BlackholeProxy,
  type BlackholeProxyOptions,
  startBlackholeProxy,
  viaProxy,
} from "./net/blackholeProxy.js"
export { freePort } from "./net/freePort.js"
export { MissingBinaryError } from "./process/findExecutable.js"
export { RUN_DIR_ENV } from "./process/runDir.js"
export { ServerStartError } from "./process/serverStartError.js"
export {
  type ProcessEntry,
  parseProcStat,
  processTree,
  processTreeCpuMs,
  readProcessTable,
} from "./process/table.js"
export { rejectionOf } from "./rejection.js"
export { NATS_CLUSTER_URL_ENV, startNatsCluster } from "./servers/nats/cluster.js"
export { NATS_URL_ENV, startNats } from "./servers/nats/server.js"
export { pauseFor } from "./servers/pauseFor.js"
export { PG_OS_USER_ENV } from "./servers/postgres/osUser.js"
export { PG_URL_ENV, startPostgres } from "./servers/postgres/server.js"
export { REDIS_CLUSTER_URL_ENV, startRedisCluster } from "./servers/redis/cluster.js"
export { REDIS_URL_ENV, startRedis } from "./servers/redis/server.js"
export { resolveServerMode, SERVER_MODE_ENV, type TestServerMode } from "./servers/serverMode.js"
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
