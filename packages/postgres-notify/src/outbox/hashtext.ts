/**
 * Postgres's `hashtext()` (Bob Jenkins' hash as `hash_bytes` in src/common/hashfn.c, on
 * little-endian machines) over a string's UTF-8 bytes, so that the process can tell an
 * address's relay partition without asking the database: the relay index and
 * `relay_partition()` use the same function. A test checks it against the server.
 *
 * @module
 */

const rot = (x: number, k: number): number => ((x << k) | (x >>> (32 - k))) >>> 0

const encoder = new TextEncoder()

/** `hashtext(text)` as Postgres returns it (a signed 32-bit integer). */
export const hashtext = (text: string): number => {
  const k = encoder.encode(text)
  let len = k.length
  let a = (0x9e3779b9 + len + 3923095) >>> 0
  let b = a
  let c = a
  const word = (i: number) => (k[i]! | (k[i + 1]! << 8) | (k[i + 2]! << 16) | (k[i + 3]! << 24)) >>> 0
  let i = 0
  while (len >= 12) {
    a = (a + word(i)) >>> 0
    b = (b + word(i + 4)) >>> 0
    c = (c + word(i + 8)) >>> 0
    // mix(a, b, c)
    a = (a - c) >>> 0
    a = (a ^ rot(c, 4)) >>> 0
    c = (c + b) >>> 0
    b = (b - a) >>> 0
    b = (b ^ rot(a, 6)) >>> 0
    a = (a + c) >>> 0
    c = (c - b) >>> 0
    c = (c ^ rot(b, 8)) >>> 0
    b = (b + a) >>> 0
    a = (a - c) >>> 0
    a = (a ^ rot(c, 16)) >>> 0
    c = (c + b) >>> 0
    b = (b - a) >>> 0
    b = (b ^ rot(a, 19)) >>> 0
    a = (a + c) >>> 0
    c = (c - b) >>> 0
    c = (c ^ rot(b, 4)) >>> 0
    b = (b + a) >>> 0
    i += 12
    len -= 12
  }
  // The last 11 bytes; the lowest byte of c is left for the length, as Postgres does
  // (its switch falls through from the highest byte down).
  if (len >= 9) {
    if (len >= 11) c = (c + (k[i + 10]! << 24)) >>> 0
    if (len >= 10) c = (c + (k[i + 9]! << 16)) >>> 0
    c = (c + (k[i + 8]! << 8)) >>> 0
  }
  if (len >= 8) {
    b = (b + word(i + 4)) >>> 0
    a = (a + word(i)) >>> 0
  } else if (len >= 4) {
    if (len >= 7) b = (b + (k[i + 6]! << 16)) >>> 0
    if (len >= 6) b = (b + (k[i + 5]! << 8)) >>> 0
    if (len >= 5) b = (b + k[i + 4]!) >>> 0
    a = (a + word(i)) >>> 0
  } else {
    if (len >= 3) a = (a + (k[i + 2]! << 16)) >>> 0
    if (len >= 2) a = (a + (k[i + 1]! << 8)) >>> 0
    if (len >= 1) a = (a + k[i]!) >>> 0
  }
  // final(a, b, c)
  c = (c ^ b) >>> 0
  c = (c - rot(b, 14)) >>> 0
  a = (a ^ c) >>> 0
  a = (a - rot(c, 11)) >>> 0
  b = (b ^ a) >>> 0
  b = (b - rot(a, 25)) >>> 0
  c = (c ^ b) >>> 0
  c = (c - rot(b, 16)) >>> 0
  a = (a ^ c) >>> 0
  a = (a - rot(c, 4)) >>> 0
  b = (b ^ a) >>> 0
  b = (b - rot(a, 14)) >>> 0
  c = (c ^ b) >>> 0
  c = (c - rot(b, 24)) >>> 0
  return c | 0
}

/** The relay partition of an address, as `relay_partition()` computes it in the database. */
export const relayPartitionOf = (tenant: string, channel: string, partitions: number): number =>
  (hashtext(`${tenant}/${channel}`) & 0x7fffffff) % partitions
