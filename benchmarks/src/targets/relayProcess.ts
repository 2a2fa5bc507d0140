/**
 * A relay-only application process for the relay-scaling scenario: a bus over the given
 * outbox schema and broker whose only work is its in-process relay (no producer, no
 * subscriber). Several of these share the outbox's relay partitions exactly as a fleet of
 * application processes would. Prints `ready` on stdout once the bus is up; SIGTERM closes
 * the bus (releasing its partitions) and exits.
 *
 * Environment: BENCH_PG_URL, BENCH_SCHEMA, BENCH_BROKER (`nats` | `redis-streams`),
 * BENCH_BROKER_URL, BENCH_PREFIX (subject / key prefix, and the NATS stream name upper-cased),
 * BENCH_OWNER (the relay's owner name in `relay_partitions`).
 */
import { createBus } from "@bus/core"
import { nats } from "@bus/nats"
import { postgresOutbox } from "@bus/postgres-notify"
import { redisStreams } from "@bus/redis-streams"

const env = (name: string): string => {
  const v = process.env[name]
  if (v === undefined) throw new Error(`relay-process: ${name} is required`)
  return v
}

const broker = env("BENCH_BROKER") as "nats" | "redis-streams"
const prefix = env("BENCH_PREFIX")
const bus = await createBus({
  outbox: postgresOutbox({
    connectionString: env("BENCH_PG_URL"),
    schema: env("BENCH_SCHEMA"),
    migrate: false,
    notify: "none",
    applicationName: `bench-relay-${env("BENCH_OWNER")}`,
  }),
  transport: {
    use: broker,
    broker:
      broker === "nats"
        ? nats({
            servers: env("BENCH_BROKER_URL"),
            subjectPrefix: prefix,
            stream: { name: prefix.toUpperCase() },
          })
        : redisStreams({ url: env("BENCH_BROKER_URL"), keyPrefix: prefix }),
  },
  env: false,
  relay: { owner: env("BENCH_OWNER") },
})
process.stdout.write("ready\n")
process.on("SIGTERM", () => {
  void bus.close().then(
    () => process.exit(0),
    () => process.exit(1),
  )
})
