import { type PostgresHandle, type ServerHandle, startNats, startPostgres } from "@bus/test-infra"
import { afterAll, beforeAll, describe, it } from "vitest"
import { describeReport, expectFlipGuarantees, runFlip } from "./harness.js"

/**
 * The flip under load, postgres-notify → NATS JetStream → postgres-notify, by the notify
 * rate alone: `transport: "auto"` with `BUS_BROKER=nats`, and `BUS_NOTIFY_RATE` below, then
 * above, then below the threshold. Three producer processes publish in transactions all
 * along; one consumer process runs a subscription and two consumer groups per channel.
 */

let postgres: PostgresHandle
let nats: ServerHandle

beforeAll(async () => {
  ;[postgres, nats] = await Promise.all([startPostgres(), startNats()])
})

afterAll(async () => {
  await Promise.all([postgres?.stop(), nats?.stop()])
})

describe("flip under load: postgres-notify → nats → postgres-notify (auto, by notify rate)", () => {
  it("loses nothing, runs no handler twice, and resumes every subscriber from its cursor", async () => {
    const auto = (rate: number) => ({
      BUS_TRANSPORT: "auto",
      BUS_BROKER: "nats",
      BUS_NOTIFY_RATE: String(rate),
    })
    const report = await runFlip({
      servers: { pg: postgres.url, nats: nats.url },
      producers: 3,
      addresses: 4,
      groups: ["billing", "audit"],
      phases: [
        { name: "postgres-notify", bus: auto(100), events: 4_000 },
        { name: "nats", bus: auto(5_000), events: 4_000 },
        { name: "postgres-notify again", bus: auto(100), events: 2_500 },
      ],
    })
    console.log(describeReport(report))
    expectFlipGuarantees(report, "BUS_NOTIFY_RATE")
  })
})
