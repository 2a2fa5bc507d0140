import type { Address } from "../contracts/outboxStore.js"
import type { SendItem } from "../contracts/transport.js"
import { type BusError, isBusError } from "../model/errors.js"
import { validateName } from "../model/name.js"

/**
 * The send-preparation loop of a broker's `sendAll`: from `from` on, each item made into
 * what the broker writes (`prepare`), stopping at the first that cannot be sent (an invalid
 * tenant or channel name, an event over the broker's size limit). The run's items before it
 * are sent; the relay gets the error for that one (bad input: it changes nothing and is
 * parked, never skipped silently).
 *
 * A run is usually one address: its names are checked and its per-address value (`keyOf`:
 * a NATS subject, a Redis stream's keys) built once per change of address, not per event.
 *
 * @example
 * ```ts
 * import { prepareSends } from "@bus/core/adapter"
 *
 * const { prepared, invalid } = prepareSends(
 *   [],
 *   0,
 *   (address) => `${address.tenant}.${address.channel}`,
 *   ({ event }, subject) => ({ subject, id: event.id }),
 * )
 * ```
 */
export const prepareSends = <K, P>(
  items: ReadonlyArray<SendItem>,
  from: number,
  keyOf: (address: Address) => K,
  prepare: (item: SendItem, key: K) => P | BusError,
): { readonly prepared: Array<P>; readonly invalid: BusError | undefined } => {
  const prepared: Array<P> = []
  let tenant: string | undefined
  let channel: string | undefined
  let key: K | undefined
  for (let i = from; i < items.length; i++) {
    const item = items[i]!
    const { event } = item
    if (key === undefined || event.tenant !== tenant || event.channel !== channel) {
      const t = validateName("tenant", event.tenant)
      if (typeof t !== "string") return { prepared, invalid: t }
      const c = validateName("channel", event.channel)
      if (typeof c !== "string") return { prepared, invalid: c }
      tenant = t
      channel = c
      key = keyOf({ tenant, channel })
    }
    const out = prepare(item, key)
    if (isBusError(out)) return { prepared, invalid: out }
    prepared.push(out)
  }
  return { prepared, invalid: undefined }
}
