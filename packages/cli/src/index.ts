/**
 * @bus/cli — the `bus` command: `bus migrate`, `bus status`, `bus tail`. The functions
 * behind it are exported for tools that want the same report without the command line.
 *
 * @packageDocumentation
 */

export { type BrokerUrls, brokerUrls } from "./brokers.js"
export { CliError, checkPostgresUrl, postgresError, redact } from "./errors.js"
export { type Io, main, usage } from "./main.js"
export { collectStatus, formatStatus, type StatusOptions, type StatusReport } from "./status.js"
export { formatEvent, type TailOptions, tail } from "./tail.js"
