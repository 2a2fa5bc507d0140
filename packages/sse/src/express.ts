import type { IncomingMessage, ServerResponse } from "node:http"
import { admit } from "./access.js"
import { nodeRequestInfo, nodeStreamer, streamToNode, writeRefusal } from "./node.js"
import type { SseOptions } from "./options.js"
import type { SseSource } from "./source.js"

/**
 * Express helper. Express's request and response are Node's, extended, so this is the
 * Node handler with Express's error path; Express is not imported.
 *
 * @module
 */

/** An Express-compatible route handler (Express 4 and 5). */
export type ExpressSseHandler<Req extends IncomingMessage> = (
  req: Req,
  res: ServerResponse,
  next: (error?: unknown) => void,
) => void

/**
 * An Express route handler serving SSE. Throws at once when `options.authorize` is
 * missing. A throwing authorization hook goes to `next(error)`, so Express's error
 * handling answers it. Headers set by earlier middleware (CORS) are kept.
 *
 * @example
 * ```ts
 * import type { Bus } from "@bus/core"
 * import { expressSse, type SseGrant } from "@bus/sse"
 * import express from "express"
 *
 * declare const bus: Bus
 * declare const grantFor: (request: express.Request) => Promise<SseGrant | false> // your auth
 *
 * const app = express()
 * app.get("/events", expressSse<express.Request>(bus, { authorize: (req) => grantFor(req) }))
 * ```
 */
export const expressSse = <Req extends IncomingMessage = IncomingMessage>(
  source: SseSource,
  options: SseOptions<Req>,
): ExpressSseHandler<Req> => {
  const streamer = nodeStreamer(source, options)
  return (req, res, next) => {
    admit(req, nodeRequestInfo(req), streamer.options).then((decision) => {
      if (decision._tag === "Refusal") return writeRefusal(res, decision)
      return streamToNode(streamer, decision, req, res)
    }, next)
  }
}
