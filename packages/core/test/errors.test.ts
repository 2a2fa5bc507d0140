import { describe, expect, it } from "vitest"
import {
  BusClosed,
  ConfigError,
  CursorInvalid,
  InvalidEvent,
  InvalidName,
  isBusError,
  NotInTransaction,
  PayloadTooLarge,
  TransportFailure,
  TransportUnavailable,
} from "../src/index.js"

describe("the error family", () => {
  const members = [
    new InvalidName({ field: "tenant", value: "", rule: "empty", message: "m" }),
    new InvalidEvent({ reason: "r", message: "m" }),
    new PayloadTooLarge({ bytes: 2, limit: 1, message: "m" }),
    new NotInTransaction({ message: "m" }),
    new CursorInvalid({ cursor: "c", reason: "malformed", message: "m" }),
    new ConfigError({ message: "m" }),
    new TransportUnavailable({ transport: "t", message: "m" }),
    new TransportFailure({ transport: "t", message: "m", retryable: true }),
    new BusClosed({ message: "m" }),
  ]

  it("isBusError knows every member, by a tag equal to its class name", () => {
    for (const error of members) {
      expect(isBusError(error), error._tag).toBe(true)
      expect(error._tag).toBe(error.constructor.name)
    }
  })

  it("every member says whether retrying helps; only the unavailable server and the transient answer do", () => {
    expect(Object.fromEntries(members.map((e) => [e._tag, e.retryable]))).toEqual({
      InvalidName: false,
      InvalidEvent: false,
      PayloadTooLarge: false,
      NotInTransaction: false,
      CursorInvalid: false,
      ConfigError: false,
      TransportUnavailable: true,
      TransportFailure: true,
      BusClosed: false,
    })
  })

  it("isBusError refuses other values, including a tag that is not in the family", () => {
    for (const other of [
      null,
      undefined,
      "InvalidName",
      new Error("x"),
      { _tag: "HandlerFailed" },
      { _tag: 1 },
    ]) {
      expect(isBusError(other)).toBe(false)
    }
  })
})
