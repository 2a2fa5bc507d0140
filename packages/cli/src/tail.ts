import { type Bus, ConfigError, createBus, type DeliveredEvent, isBusError } from "@bus/core"
import { selectionFromEnv, selectTransport, type TransportName } from "@bus/core/adapter"
import { postgresOutbox } from "@bus/postgres-notify"
import { Layer as L, type Layer, References } from "effect"
import { type BrokerUrls, brokerTransport } from "./brokers.js"
import { CliError, postgresError } from "./errors.js"
import { withOutboxClient } from "./outboxClient.js"
import type { Out, Styles } from "./style.js"

/**
 * `bus tail <tenant> <channel>`: `tail -f` for a channel. It subscribes through the
 * transport this environment selects (`BUS_TRANSPORT`, …, or `--transport`), from `--from`
 * (`now` by default, `beginning`, or a cursor), and prints one line per event: time, type,
 * id and data, coloured on a terminal and plain when piped (`--json`: one JSON object per
 * line, cursor included). On Ctrl-C it prints the cursor to resume from.
 *
 * @module
 */

/** Options of {@link tail}. */
export interface TailOptions {
  readonly url: string
  readonly schema: string
  readonly tenant: string
  readonly channel: string
  readonly from: string
  readonly transport?: string | undefined
  readonly json: boolean
  /** Stop after this many events (default: run until interrupted). */
  readonly count?: number | undefined
  readonly env: Readonly<Record<string, string | undefined>>
  readonly brokers: BrokerUrls
  readonly out: Out
  readonly err: Out
  readonly styles: Styles
  /** Resolves when the tail should stop (Ctrl-C). */
  readonly stop: Promise<void>
}

const transportNames = ["postgres-notify", "nats", "redis-streams"] as const

/** One event as a line. */
export const formatEvent = (e: DeliveredEvent, s: Styles, json: boolean): string => {
  if (json) return JSON.stringify(e)
  const time = e.time.replace("T", " ").replace("Z", "")
  const data = JSON.stringify(e.data)
  return `${s.dim(time)}  ${s.bold(s.cyan(e.type))}  ${s.dim(e.id)}  ${data === "null" ? s.dim("null") : data}`
}

/** Runs the tail until `stop` resolves, `count` events were printed, or the subscription fails. */
export const tail = async (o: TailOptions): Promise<void> => {
  const selection = selectionFromEnv(
    o.transport === undefined ? {} : { transport: o.transport as TransportName },
    {
      ...o.env,
      ...(o.transport !== undefined ? { BUS_TRANSPORT: o.transport } : {}),
    },
  )
  if (selection instanceof ConfigError) throw new CliError(selection.message, 2)
  const choice = selectTransport(selection)
  if (choice instanceof ConfigError) throw new CliError(choice.message, 2)
  if (!(transportNames as ReadonlyArray<string>).includes(choice.transport)) {
    throw new CliError(`bus tail reads postgres-notify, nats or redis-streams, not ${choice.transport}`, 2)
  }
  // Fails fast, with a clear message, on a bad URL, an unreachable server or a missing schema.
  await checkOutbox(o.url, o.schema)
  const outbox = postgresOutbox({
    connectionString: o.url,
    schema: o.schema,
    migrate: false,
    pressure: false,
    applicationName: "bus-cli",
    listenerApplicationName: "bus-cli-listener",
    poolSize: 2,
    notify: "none",
  })
  const brokerName =
    choice.transport === "nats" || choice.transport === "redis-streams" ? choice.transport : undefined
  const broker =
    brokerName === undefined
      ? undefined
      : { name: brokerName, layer: await brokerTransport(brokerName, o.brokers) }
  let bus: Bus
  try {
    bus = await createBus({
      outbox,
      transport: { use: choice.transport, ...(broker !== undefined ? { broker } : {}) },
      env: false,
      relay: false,
      telemetry: L.succeed(References.MinimumLogLevel, "None") as Layer.Layer<never>,
    })
  } catch (error) {
    throw isBusError(error)
      ? new CliError(`cannot start the ${choice.transport} transport: ${error.message}`)
      : error
  }
  let cursor: string | undefined
  let printed = 0
  const subscription = bus.subscribe({ tenant: o.tenant, channel: o.channel, from: o.from })
  try {
    const started = await Promise.race([subscription.ready.then(() => true), o.stop.then(() => false)])
    // Said once the start is fixed ("now" resolved to a cursor): every event committed after
    // this line appears, so a script can wait for it before it publishes.
    if (started) {
      o.err.write(
        o.styles.dim(
          `tailing ${o.tenant}/${o.channel} on ${choice.transport} from ${o.from} (Ctrl-C to stop)\n`,
        ),
      )
    }
    const reading = (async () => {
      for await (const event of subscription) {
        o.out.write(`${formatEvent(event, o.styles, o.json)}\n`)
        cursor = event.cursor
        printed++
        if (o.count !== undefined && printed >= o.count) return
      }
    })()
    await Promise.race([reading, o.stop])
  } catch (error) {
    if (isBusError(error)) {
      throw new CliError(
        error._tag === "CursorInvalid"
          ? `cannot start from ${JSON.stringify(o.from)}: ${error.message}`
          : `${error._tag}: ${error.message}`,
      )
    }
    throw error
  } finally {
    await subscription.close().catch(() => {})
    await bus.close().catch(() => {})
    if (cursor !== undefined) o.err.write(o.styles.dim(`resume with: --from ${cursor}\n`))
  }
}

/** Connects once to check the URL, the server and the schema, with messages an operator can act on. */
export const checkOutbox = async (url: string, schema: string): Promise<void> => {
  await withOutboxClient(url, schema, (client) =>
    client.query(`SELECT epoch FROM "${schema}".meta`).catch((error: unknown) => {
      throw postgresError(error, url, schema)
    }),
  )
}
