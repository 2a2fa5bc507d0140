import { allTransports, type TransportId } from "./harness/types.js"

export const scenarioIds = [
  "throughput",
  "latency",
  "knee",
  "dbload",
  "fanout",
  "payload",
  "recovery",
  "natsFanout",
  "relay",
  "relayScaling",
] as const
export type ScenarioId = (typeof scenarioIds)[number]

export interface CliOptions {
  readonly quick: boolean
  readonly scenarios: readonly ScenarioId[]
  readonly transports: readonly TransportId[]
  readonly pgFsync: boolean
  /** Write docs/benchmarks.md even for a partial run. */
  readonly docs: boolean | undefined
  /** Re-render the report from this results JSON instead of running anything. */
  readonly render: string | undefined
  readonly help: boolean
}

export const usage = `pnpm bench [options]

  --quick                 every scenario, short blocks (< 3 min); results marked as quick
  --scenario <name>       run only this scenario (repeat or comma-separate for several):
                          ${scenarioIds.join(", ")}
  --transports <list>     only these transports (comma-separated): ${allTransports.join(", ")}
  --pg-fsync on|off       Postgres fsync + full_page_writes (default on; test-infra starts it with both off)
  --docs / --no-docs      write docs/benchmarks.md (default: only when every scenario and transport ran)
  --render <results.json> only re-render docs/benchmarks.md and its charts from a results file
                          ("--render latest": the newest run in benchmarks/results/)
  -h, --help              this text
`

export class CliError extends Error {}

const list = (value: string | undefined, flag: string): string[] => {
  if (value === undefined || value.startsWith("--")) throw new CliError(`${flag} needs a value`)
  return value
    .split(",")
    .map((v) => v.trim())
    .filter((v) => v !== "")
}

export const parseArgs = (argv: readonly string[]): CliOptions => {
  let quick = false
  let help = false
  let pgFsync = true
  let docs: boolean | undefined
  let render: string | undefined
  const scenarios: ScenarioId[] = []
  const transports: TransportId[] = []
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string
    const [flag, inline] = arg.includes("=")
      ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)]
      : [arg, undefined]
    const value = () => inline ?? argv[++i]
    switch (flag) {
      case "--":
        break
      case "--quick":
        quick = true
        break
      case "-h":
      case "--help":
        help = true
        break
      case "--scenario":
      case "--scenarios":
        for (const s of list(value(), flag)) {
          if (!(scenarioIds as readonly string[]).includes(s))
            throw new CliError(
              `unknown scenario ${JSON.stringify(s)}; expected one of ${scenarioIds.join(", ")}`,
            )
          if (!scenarios.includes(s as ScenarioId)) scenarios.push(s as ScenarioId)
        }
        break
      case "--transport":
      case "--transports":
        for (const t of list(value(), flag)) {
          if (!(allTransports as readonly string[]).includes(t))
            throw new CliError(
              `unknown transport ${JSON.stringify(t)}; expected one of ${allTransports.join(", ")}`,
            )
          if (!transports.includes(t as TransportId)) transports.push(t as TransportId)
        }
        break
      case "--pg-fsync": {
        const v = value()
        if (v !== "on" && v !== "off") throw new CliError("--pg-fsync takes on or off")
        pgFsync = v === "on"
        break
      }
      case "--docs":
        docs = true
        break
      case "--no-docs":
        docs = false
        break
      case "--render":
        render = list(value(), flag).join(",")
        break
      default:
        throw new CliError(`unknown option ${JSON.stringify(arg)}\n\n${usage}`)
    }
  }
  return {
    quick,
    help,
    pgFsync,
    docs,
    render,
    scenarios: scenarios.length > 0 ? scenarioIds.filter((s) => scenarios.includes(s)) : [...scenarioIds],
    transports:
      transports.length > 0 ? allTransports.filter((t) => transports.includes(t)) : [...allTransports],
  }
}
