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
}

/** A broker transport's data-loss signal, read by the relay. */
export interface ResendSignal {
  /** The latest loss (generation 0: none). */
  readonly current: () => BrokerLoss
  /** Reports a loss: every partition of this process's relay resends from the outbox. */
  readonly lost: (reason: string) => void
}

/** A new signal, with no loss reported. */
export const makeResendSignal = (): ResendSignal => {
  let loss: BrokerLoss = { generation: 0, reason: "" }
  return {
    current: () => loss,
    lost: (reason) => {
      loss = { generation: loss.generation + 1, reason }
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

/** The data-loss signal of a transport's service object, if its transport has one. */
export const resendSignalOf = (service: object): ResendSignal | undefined => signals.get(service)
