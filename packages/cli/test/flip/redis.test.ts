import { type PostgresHandle, type ServerHandle, startPostgres, startRedis } from "@bus/test-infra"
import { afterAll, beforeAll, describe, it } from "vitest"
import { describeReport, expectFlipGuarantees, runFlip } from "./harness.js"

/**
 * The flip under load, postgres-notify → redis-streams → postgres-notify: three producer
 * processes publish in transactions all along, one consumer process runs a subscription
 * and two consumer groups per channel; between phases every process stops and starts again
 * with one environment variable changed.
 */

let postgres: PostgresHandle
let redis: ServerHandle

beforeAll(async () => {
  ;[postgres, redis] = await Promise.all([startPostgres(), startRedis()])
})

afterAll(async () => {
  await Promise.all([postgres?.stop(), redis?.stop()])
})

describe("flip under load: postgres-notify → redis-streams → postgres-notify", () => {
  it("loses nothing, runs no handler twice, and resumes every subscriber from its cursor", async () => {
    const report = await runFlip({
      servers: { pg: postgres.url, redis: redis.url },
      producers: 3,
      addresses: 4,
      groups: ["billing", "audit"],
      phases: [
        { name: "postgres-notify", bus: { BUS_TRANSPORT: "postgres-notify" }, events: 4_000 },
        { name: "redis-streams", bus: { BUS_TRANSPORT: "redis-streams" }, events: 4_000 },
        { name: "postgres-notify again", bus: { BUS_TRANSPORT: "postgres-notify" }, events: 2_500 },
      ],
    })
    console.log(describeReport(report))
    expectFlipGuarantees(report, "BUS_TRANSPORT")
  })
})
