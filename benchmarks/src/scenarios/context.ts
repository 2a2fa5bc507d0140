import { CpuMeter } from "../harness/cpu.js"
import type { BenchEnv } from "../harness/env.js"
import type { Profile } from "../harness/profile.js"
import type { Progress } from "../harness/progress.js"
import type { ScenarioResult, TransportId } from "../harness/types.js"
import type { Pipe } from "../targets/pipe.js"
import { rawNatsPipe, rawPgPipe, rawRedisPipe } from "../targets/raw.js"
import { sdkPipe } from "../targets/sdk.js"

/** What every scenario gets. */
export class ScenarioContext {
  readonly #sdk = new Map<TransportId, Pipe>()
  readonly #raw = new Map<TransportId, Pipe>()
  #channel = 0
  readonly cpu: CpuMeter

  constructor(
    readonly env: BenchEnv,
    readonly profile: Profile,
    readonly progress: Progress,
    /** Transports asked for on the command line, in report order. */
    readonly transports: readonly TransportId[],
    /** Why the SDK cannot run on a transport (missing server, package not built, probe failed). */
    readonly unavailable: ReadonlyMap<TransportId, string>,
    /** Why a transport's server is missing (raw baselines need only the server). */
    readonly serverUnavailable: ReadonlyMap<TransportId, string>,
    readonly aborted: () => boolean,
    readonly runId: string,
  ) {
    this.cpu = new CpuMeter(() => env.serverPids())
  }

  /** A channel name no earlier block of this run used. */
  channel(prefix: string): string {
    this.#channel++
    return `${prefix}-${this.runId}-${this.#channel}`
  }

  /** Why the SDK cannot run on `t`, if it cannot. */
  reason(t: TransportId): string | undefined {
    return this.unavailable.get(t)
  }

  /** Why `t`'s server is not there, if it is not. */
  serverReason(t: TransportId): string | undefined {
    return this.serverUnavailable.get(t)
  }

  /** Why a pipe cannot run: raw baselines need their server, SDK pipes the whole SDK. */
  reasonFor(pipe: Pipe): string | undefined {
    return pipe.kind === "raw" ? this.serverReason(pipe.transport) : this.reason(pipe.transport)
  }

  sdk(t: TransportId): Pipe {
    let p = this.#sdk.get(t)
    if (p === undefined) {
      p = sdkPipe(t, this.env)
      this.#sdk.set(t, p)
    }
    return p
  }

  /** The raw-client baseline of a transport (none for memory). */
  raw(t: TransportId): Pipe | undefined {
    if (t === "memory") return undefined
    let p = this.#raw.get(t)
    if (p === undefined) {
      p =
        t === "postgres-notify"
          ? rawPgPipe(this.env)
          : t === "nats"
            ? rawNatsPipe(this.env)
            : rawRedisPipe(this.env)
      this.#raw.set(t, p)
    }
    return p
  }

  /** Closes every pipe (buses, pools, connections) opened so far. */
  async closePipes(): Promise<void> {
    const all = [...this.#sdk.values(), ...this.#raw.values()]
    this.#sdk.clear()
    this.#raw.clear()
    await Promise.allSettled(all.map((p) => p.close()))
  }
}

export interface Scenario {
  readonly id: string
  readonly title: string
  run(ctx: ScenarioContext): Promise<Omit<ScenarioResult, "durationMs">>
}
