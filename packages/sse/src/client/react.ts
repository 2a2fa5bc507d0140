import {
  type EventOf,
  type FollowStreamOptions,
  followStream,
  type ResetInfo,
  type StreamStatus,
} from "./followStream.js"

/**
 * `@bus/sse/react`: a React hook over {@link followStream}.
 *
 * React is passed in rather than imported, so this package has no React dependency and an
 * application never ends up with two copies of it: `const useBusStream = makeUseBusStream(React)`
 * once, in your code.
 *
 * @module
 */

/** The part of React the hook uses (React 18 and 19 fit). */
export interface ReactHooks {
  useState<S>(initial: S | (() => S)): [S, (next: S) => void]
  useEffect(effect: () => undefined | (() => void), deps?: ReadonlyArray<unknown>): void
  useRef<T>(initial: T): { current: T }
}

/**
 * Builds `useBusStream(options, onEvent, onReset?)`: follows the stream while the component
 * is mounted (re-connecting when the endpoint or channels change) and returns its status.
 * The handlers may change on every render; the latest ones are called.
 *
 * @example
 * ```ts
 * import { makeUseBusStream, type ReactHooks } from "@bus/sse/react"
 * declare const React: ReactHooks
 *
 * const useBusStream = makeUseBusStream(React)
 * // In a component:
 * // const status = useBusStream({ url: "/events", channels: ["orders"] }, (e) => setLast(e))
 * void useBusStream
 * ```
 */
export const makeUseBusStream =
  (react: ReactHooks) =>
  <Types extends Record<string, unknown> = Record<string, unknown>>(
    options: FollowStreamOptions,
    onEvent: (event: EventOf<Types>) => void,
    onReset?: (info: ResetInfo) => void,
  ): StreamStatus => {
    const [status, setStatus] = react.useState<StreamStatus>({ state: "connecting", attempt: 0 })
    const handlers = react.useRef({ onEvent, onReset })
    handlers.current = { onEvent, onReset }
    const channels = options.channels
      .map((c) => (typeof c === "string" ? c : c.name))
      .sort()
      .join(",")
    react.useEffect(() => {
      const stream = followStream<Types>(options, {
        onEvent: (e) => handlers.current.onEvent(e),
        onReset: (info) => handlers.current.onReset?.(info),
        onStatus: setStatus,
      })
      return () => stream.close()
      // Reconnect only when what is followed changes, not on every render's new options object.
    }, [options.url, channels, options.key])
    return status
  }
