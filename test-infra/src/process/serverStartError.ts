/**
 * A server that could not be started or did not become ready. The message carries the server's
 * last log lines, because "timed out" alone never says why.
 */
export class ServerStartError extends Error {
  override readonly name = "ServerStartError"
  /** The server lost the race for its port to another process; starting again on new ports helps. */
  readonly portClash: boolean

  constructor(message: string, logTail: string) {
    super(`${message}\n--- last log lines ---\n${logTail}`)
    this.portClash = /address already in use/i.test(logTail)
  }
}
