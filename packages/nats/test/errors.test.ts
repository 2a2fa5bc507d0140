import { isBusError } from "@bus/core"
import { freePort, rejectionOf, type ServerHandle, startNats } from "@bus/test-infra"
import { jetstreamManager } from "@nats-io/jetstream"
import { connect, type NatsConnection } from "@nats-io/transport-node"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { toBusError } from "../src/errors.js"
import { uniqueName } from "./support.js"

/**
 * The NATS error mapper on what the real client throws against a real server: each
 * condition lands on the member of the error family every transport uses for it, with
 * `retryable` saying whether the same call can succeed later. (An event over the server's
 * max_payload is `PayloadTooLarge`: see transport.test.ts.)
 */

let server: ServerHandle
let nc: NatsConnection

beforeAll(async () => {
  server = await startNats({ user: "bus", password: "right" })
  nc = await connect({ servers: server.url, user: "bus", pass: "right" })
})

afterAll(async () => {
  await nc?.close()
  await server?.stop()
})

describe("toBusError (nats)", () => {
  it("connection refused: TransportUnavailable, retryable", async () => {
    const port = await freePort()
    const error = await rejectionOf(() =>
      connect({ servers: `nats://127.0.0.1:${port}`, reconnect: false, timeout: 5_000 }),
    )
    const mapped = toBusError(error, "connect")
    expect(mapped).toMatchObject({ _tag: "TransportUnavailable", transport: "nats", retryable: true })
    expect(mapped.message).toMatch(/^nats: connect: /)
  })

  it("wrong credentials: ConfigError, not retryable", async () => {
    const error = await rejectionOf(() =>
      connect({ servers: server.url, user: "bus", pass: "wrong", reconnect: false, timeout: 5_000 }),
    )
    const mapped = toBusError(error, "connect")
    expect(mapped).toMatchObject({ _tag: "ConfigError", retryable: false })
    expect(mapped.message).toMatch(/credentials/)
  })

  it("a JetStream API refusal the same call meets again (overlapping subjects): TransportFailure, not retryable", async () => {
    const jsm = await jetstreamManager(nc)
    const subject = `${uniqueName("e")}.>`
    const first = uniqueName("S")
    await jsm.streams.add({ name: first, subjects: [subject] })
    try {
      const error = await rejectionOf(() => jsm.streams.add({ name: uniqueName("S"), subjects: [subject] }))
      expect(toBusError(error, "add stream")).toMatchObject({
        _tag: "TransportFailure",
        transport: "nats",
        retryable: false,
      })
    } finally {
      await jsm.streams.delete(first)
    }
  })

  it("a request nobody answers in time: TransportUnavailable, retryable", async () => {
    const error = await rejectionOf(() => nc.request(uniqueName("nobody."), "ping", { timeout: 200 }))
    expect(toBusError(error, "request")).toMatchObject({ _tag: "TransportUnavailable", retryable: true })
  })

  it("keeps a bus error as it is", () => {
    const once = toBusError(new Error("boom"), "x")
    expect(isBusError(once)).toBe(true)
    expect(toBusError(once, "y")).toBe(once)
  })
})
