import { validateName } from "@bus/core/adapter"
import { type AuthorizeResult, nameOf, type ResolvedSseOptions, type SseGrant } from "./options.js"
import { decodeSseId, type SseIdError } from "./sseId.js"

/**
 * Turns a request and the authorization hook's answer into either a refusal (an HTTP
 * status and message) or a plan of what to stream. Pure, so every framework adapter
 * refuses and resumes the same way.
 *
 * @module
 */

/** What the helpers read from a request, whatever the framework. */
export interface RequestInfo {
  /** Full request URL (only the query is read). */
  readonly url: URL
  /** The `Last-Event-ID` header, if any. */
  readonly lastEventIdHeader: string | undefined
}

/** A refused request, answered with a status and a plain-text message instead of a stream. */
export interface HttpRefusal {
  readonly _tag: "Refusal"
  readonly status: 400 | 401 | 403
  readonly message: string
  readonly headers: Readonly<Record<string, string>>
}

/** An accepted request: which tenant and channels to stream, and from where. */
export interface StreamPlan {
  readonly _tag: "Plan"
  readonly tenant: string
  readonly channels: ReadonlyArray<string>
  /** Positions named by `Last-Event-ID` (empty without one), or why it could not be read. */
  readonly resume: ReadonlyMap<string, string> | SseIdError
}

const refuse = (
  status: HttpRefusal["status"],
  message: string,
  headers: Readonly<Record<string, string>> = {},
): HttpRefusal => ({ _tag: "Refusal", status, message, headers })

const isGrant = (u: AuthorizeResult): u is SseGrant =>
  typeof u === "object" && u !== null && "tenant" in u && "channels" in u

/**
 * The resume position a client sent: the `Last-Event-ID` header, or else the
 * `lastEventId` query parameter (for clients that cannot set headers). The header wins,
 * because a browser reconnecting to a URL that carries a stale `lastEventId` sends the
 * fresh position in the header.
 */
export const lastEventIdOf = (info: RequestInfo): string | undefined => {
  const id = info.lastEventIdHeader || info.url.searchParams.get("lastEventId") || undefined
  return id === undefined || id.length === 0 ? undefined : id
}

/** Decides between refusal and a stream plan. Throws only when the hook's answer is malformed. */
export const decide = (
  info: RequestInfo,
  answer: AuthorizeResult,
  options: Pick<ResolvedSseOptions<unknown>, "tenant" | "channels" | "maxChannels">,
): HttpRefusal | StreamPlan => {
  if (answer === false) return refuse(403, "forbidden")
  if (!isGrant(answer)) {
    if (typeof answer === "object" && answer !== null && (answer.status === 401 || answer.status === 403)) {
      const fallback = answer.status === 401 ? "authentication required" : "forbidden"
      return refuse(answer.status, answer.message ?? fallback, answer.headers)
    }
    throw new TypeError(
      "@bus/sse: authorize must return { tenant, channels }, { status: 401 | 403 } or false; got " +
        String(JSON.stringify(answer)),
    )
  }
  if (typeof answer.tenant !== "string" || !Array.isArray(answer.channels)) {
    throw new TypeError("@bus/sse: authorize returned a grant without a string tenant and a channels array")
  }
  const query = info.url.searchParams
  const tenant = query.get("tenant") ?? options.tenant ?? answer.tenant
  if (tenant !== answer.tenant) return refuse(403, `tenant ${JSON.stringify(tenant)} is not allowed`)
  const asked = query.getAll("channel")
  const grantedNames = answer.channels.map(nameOf)
  const channels = [...new Set(asked.length > 0 ? asked : (options.channels ?? grantedNames))]
  if (channels.length === 0) return refuse(400, "no channel to stream: add ?channel=NAME")
  if (channels.length > options.maxChannels) {
    return refuse(400, `at most ${options.maxChannels} channels per connection; got ${channels.length}`)
  }
  const granted = new Set(grantedNames)
  const denied = channels.find((c) => !granted.has(c))
  if (denied !== undefined) return refuse(403, `channel ${JSON.stringify(denied)} is not allowed`)
  for (const [field, name] of [
    ["tenant", tenant] as const,
    ...channels.map((c) => ["channel", c] as const),
  ]) {
    const checked = validateName(field, name)
    if (typeof checked !== "string") return refuse(400, checked.message)
  }
  const id = lastEventIdOf(info)
  return { _tag: "Plan", tenant, channels, resume: id === undefined ? new Map() : decodeSseId(id, channels) }
}

/** Runs the authorization hook for `request` and decides; rejects when the hook throws. */
export const admit = async <Req>(
  request: Req,
  info: RequestInfo,
  options: ResolvedSseOptions<Req>,
): Promise<HttpRefusal | StreamPlan> => decide(info, await options.authorize(request), options)
