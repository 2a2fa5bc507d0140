import { randomFillSync } from "node:crypto"

/**
 * UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then randomness. Ids sort by creation
 * time, which keeps outbox indexes append-mostly. Within one millisecond the 12-bit
 * `rand_a` field is a counter so ids minted by one process stay strictly increasing.
 */
let lastMs = -1
let counter = 0
const bytes = Buffer.alloc(16)
// Randomness is drawn from the CSPRNG in blocks: one randomFillSync per 256 ids instead
// of one per id (the call costs microseconds, a slice of a block nanoseconds).
const pool = Buffer.alloc(16 * 256)
let poolOffset = pool.length

/** A new UUIDv7 string, lower-case with hyphens. */
export const uuidv7 = (now: number = Date.now()): string => {
  let ms = now
  if (ms <= lastMs) {
    ms = lastMs
    counter++
    // The counter overflowed its 12 bits: borrow the next millisecond rather than repeat.
    if (counter > 0xfff) {
      ms = lastMs + 1
      counter = 0
    }
  } else {
    counter = 0
  }
  lastMs = ms
  if (poolOffset === pool.length) {
    randomFillSync(pool)
    poolOffset = 0
  }
  pool.copy(bytes, 0, poolOffset, poolOffset + 16)
  poolOffset += 16
  bytes[0] = Math.floor(ms / 2 ** 40) & 0xff
  bytes[1] = Math.floor(ms / 2 ** 32) & 0xff
  bytes[2] = (ms >>> 24) & 0xff
  bytes[3] = (ms >>> 16) & 0xff
  bytes[4] = (ms >>> 8) & 0xff
  bytes[5] = ms & 0xff
  bytes[6] = 0x70 | ((counter >>> 8) & 0x0f)
  bytes[7] = counter & 0xff
  bytes[8] = 0x80 | (bytes[8]! & 0x3f)
  const hex = bytes.toString("hex")
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}

const uuidv7Pattern = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

/** True for a lower-case UUIDv7 string. */
export const isUuidv7 = (s: string): boolean => uuidv7Pattern.test(s)
