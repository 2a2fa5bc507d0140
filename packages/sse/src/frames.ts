import type { DeliveredEvent } from "@bus/core"
import { encodeSseId } from "./sseId.js"
import { eventData } from "./wire.js"

/**
 * Encoded event frames shared by every stream of one SSE endpoint. The bus hands the same
 * event object to every local subscriber of a channel, so an event's `data:` bytes are
 * serialized and encoded once per process and written to each client as the same bytes;
 * a single-channel stream's whole frame (its `id:` is the event's cursor) is shared too.
 * Entries live as long as the event object does (a `WeakMap`), so the cache holds nothing
 * the bus itself no longer holds.
 *
 * @module
 */

const encoder = new TextEncoder()

export class FrameCache {
  readonly #data = new WeakMap<DeliveredEvent, Uint8Array>()
  readonly #whole = new WeakMap<DeliveredEvent, Uint8Array>()

  constructor(private readonly serialize: (event: DeliveredEvent) => string) {}

  /** The `data:` lines of `event` and the blank line that ends the frame. Throws what `serialize` throws. */
  data(event: DeliveredEvent): Uint8Array {
    let bytes = this.#data.get(event)
    if (bytes === undefined) {
      bytes = encoder.encode(eventData(this.serialize(event)))
      this.#data.set(event, bytes)
    }
    return bytes
  }

  /**
   * The whole frame with `id: <event.cursor>`: what every single-channel stream sends for
   * `event`; `undefined` when the cursor cannot be an id as it is (then the stream sends a
   * composite id, {@link FrameCache.withId}). Checked once per event, not per client.
   */
  single(event: DeliveredEvent): Uint8Array | undefined {
    let bytes = this.#whole.get(event)
    if (bytes === undefined) {
      if (encodeSseId(new Map([["", event.cursor]]), 1) !== event.cursor) return undefined
      const id = encoder.encode(`id: ${event.cursor}\n`)
      const data = this.data(event)
      bytes = new Uint8Array(id.byteLength + data.byteLength)
      bytes.set(id, 0)
      bytes.set(data, id.byteLength)
      this.#whole.set(event, bytes)
    }
    return bytes
  }

  /** The frame with another `id:` (a multi-channel stream's composite position): only the id line is new. */
  withId(id: string | undefined, event: DeliveredEvent): Uint8Array {
    const data = this.data(event)
    if (id === undefined) return data
    const head = encoder.encode(`id: ${id}\n`)
    const bytes = new Uint8Array(head.byteLength + data.byteLength)
    bytes.set(head, 0)
    bytes.set(data, head.byteLength)
    return bytes
  }
}
