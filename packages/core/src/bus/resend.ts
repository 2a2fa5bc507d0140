/**
 * Broker data loss, repaired by the relay. A broker can lose what the relay forwarded
 * without the relay noticing on its own: a stream deleted by an operator, a server whose
 * store was wiped, a Redis restarted without persistence. The relay's partition positions
 * then say "on the broker" for events that are not. The outbox still holds them (within its
 * retention), so the repair is to move the positions back and forward again: the broker
 * drops, by event id, whatever it still has.
 *
 * The broker transport detects the loss (it is the only one that can) and raises a
 * {@link ResendSignal} attached to its `Transport` service; the relay checks it before each
 * round of every partition it holds and, when it moved, rewinds that partition to the
 * beginning of the retained outbox (stored at once, so a relay that takes the partition over
 * does not skip the resend), logs it, and logs again how many events it resent once the
 * partition is caught up. Rewinding to the beginning, not to "the position before the
 * loss", is deliberate: nothing on the broker says which events it lost, the outbox is bounded
 * by its retention, and every repeat is dropped by the broker's dedupe.
 *
 * The signal is per process: every process whose relay holds partitions must learn of the
 * loss from its own transport (each broker transport watches its broker for that reason).
 *
 * @module
 */

/** One report of lost broker data. */
export interface BrokerLoss {
  /** Grows by one per loss; 0 when none was reported. */
  readonly generation: number
  /** What was lost and why the relay resends, for the relay's log. */
  readonly reason: string
  /** When the loss was reported (ms since the epoch). */
  readonly at: number
}

/**
 * How long after a loss a partition the relay only now takes (from a relay that stopped, or
 * handed over) is still rewound. The relay that held it when the loss was reported rewound
 * it already, so rewinding it again later would resend for nothing; within this bound the
 * repeats are still inside the broker's duplicate window (2 minutes by default on NATS), so
 * they cost nothing, and a partition claimed right after a start that found the broker
 * empty is covered.
 */
export const resendClaimGraceMs = 60_000

/** A broker transport's data-loss signal, read by the relay. */
export interface ResendSignal {
  /** The latest loss (generation 0: none). */
  readonly current: () => BrokerLoss
  /** Reports a loss: every partition of this process's relay resends from the outbox. */
  readonly lost: (reason: string) => void
}

/** A new signal, with no loss reported. */
export const makeResendSignal = (): ResendSignal => {
  let loss: BrokerLoss = { generation: 0, reason: "", at: 0 }
  return {
    current: () => loss,
    lost: (reason) => {
      loss = { generation: loss.generation + 1, reason, at: Date.now() }
    },
  }
}

const signals = new WeakMap<object, ResendSignal>()

/**
 * Attaches `signal` to a transport's service object (the value given to `Transport.of`) and
 * returns the object. Kept beside the contract rather than in it: only brokers that can lose
 * data have one, and the relay reads it with {@link resendSignalOf}.
 */
export const attachResendSignal = <S extends object>(service: S, signal: ResendSignal): S => {
  signals.set(service, signal)
  return service
}

/** Per signal: the generation each partition was rewound for in this process. */
const repaired = new WeakMap<ResendSignal, Map<number, number>>()

/**
 * The generation a partition the relay takes now counts as already repaired: the latest
 * loss, when this process already rewound the partition for it or when it is older than
 * {@link resendClaimGraceMs} (the relay that held the partition then repaired it); the one
 * before it otherwise, so that the latest loss is acted on.
 */
export const repairedOnClaim = (signal: ResendSignal | undefined, partition: number): number => {
  if (signal === undefined) return 0
  const loss = signal.current()
  if (repaired.get(signal)?.get(partition) === loss.generation) return loss.generation
  return loss.generation > 0 && Date.now() - loss.at < resendClaimGraceMs
    ? loss.generation - 1
    : loss.generation
}

/** Records that this process rewound `partition` for loss `generation` (see {@link repairedOnClaim}). */
export const markRepaired = (signal: ResendSignal, partition: number, generation: number): void => {
  let byPartition = repaired.get(signal)
  if (byPartition === undefined) {
    byPartition = new Map()
    repaired.set(signal, byPartition)
  }
  byPartition.set(partition, generation)
}

/** The data-loss signal of a transport's service object, if its transport has one. */
export const resendSignalOf = (service: object): ResendSignal | undefined => signals.get(service)
