import type { Bus } from "@bus/core"

/**
 * What the conformance suite needs to know about one transport under test. The suite
 * never imports a transport package: the transport's own test file builds this object
 * and passes it to `runConformanceSuite`.
 */
export interface ConformanceTarget {
  /** Name shown in the test titles and in the fault-scenario report lines. */
  readonly name: string
  /**
   * Creates a fresh bus (`createBus` from `@bus/core`) on the transport under test, over
   * the same outbox that {@link ConformanceTarget.transaction} writes to. The suite closes
   * every bus it makes. Several buses may be open at once (one per test, and a second
   * one where a test simulates a process restart).
   */
  makeBus(): Promise<Bus>
  /**
   * Runs `fn` inside a producer transaction of this target's outbox: commit when `fn`
   * resolves, roll back when it throws (and rethrow). Several transactions may be open
   * at once (the suite holds one open while another commits).
   */
  transaction<A>(fn: (tx: unknown) => Promise<A>): Promise<A>
  /** Starts servers; called once in `beforeAll`. */
  setup?(): Promise<void>
  /** Stops servers; called once in `afterAll`. */
  teardown?(): Promise<void>
  /** Fault hooks; each fault scenario runs only when its hook exists (the suite logs which ran). */
  readonly faults?: {
    /** Drops every connection the bus holds (e.g. `pg_terminate_backend`, `CLIENT KILL`), server stays up. */
    killConnections?(): Promise<void>
    /** Stops and starts the server; resolves when it accepts connections again. */
    restartServer?(): Promise<void>
    /** Freezes the server (SIGSTOP) for `ms`, then resumes it; resolves after the resume. */
    pauseServer?(ms: number): Promise<void>
  }
  /**
   * Further fault scenarios of this transport (a broker node killed, a relay killed
   * mid-batch, …), by name. Each runs like the built-in ones: injected mid-stream while
   * publishing continues, then 0 lost and 0 duplicates to the handler.
   */
  readonly extraFaults?: Readonly<Record<string, () => Promise<void>>>
  /**
   * Encoded size in bytes of the largest event the large-payload test publishes. Default:
   * `bus.capabilities.maxPayloadBytes` (the event is sized so its encoded envelope is
   * exactly that many bytes).
   */
  readonly largestPayloadBytes?: number
  /** How long to wait for an expected delivery before failing (default 15 000 ms). */
  readonly deliveryTimeoutMs?: number
  /** How long a `close()` (bus, subscription, consumer) may take before it counts as hung (default 5 000 ms). */
  readonly closeTimeoutMs?: number
  /** Random fast-check runs of the hostile-name isolation property, on top of the fixed near-collision pairs (default 30). */
  readonly propertyRuns?: number
  /** How long `pauseServer` freezes the server in the pause scenario (default 3 000 ms). */
  readonly pauseMs?: number
}

/** The target with defaults applied, as the test groups read it. */
export interface SuiteContext {
  readonly target: ConformanceTarget
  readonly deliveryTimeoutMs: number
  readonly closeTimeoutMs: number
  readonly propertyRuns: number
  readonly pauseMs: number
}

export const resolveTarget = (target: ConformanceTarget): SuiteContext => ({
  target,
  deliveryTimeoutMs: target.deliveryTimeoutMs ?? 15_000,
  closeTimeoutMs: target.closeTimeoutMs ?? 5_000,
  propertyRuns: target.propertyRuns ?? 30,
  pauseMs: target.pauseMs ?? 3_000,
})
