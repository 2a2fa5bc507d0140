import { closeSync, fstatSync, openSync, readSync } from "node:fs"

const TAIL_BYTES = 16 * 1024

/** The last `lines` lines of a server's log, for error messages; never throws. */
export function readLogTail(file: string, lines = 25): string {
  let fd: number | undefined
  try {
    fd = openSync(file, "r")
    const size = fstatSync(fd).size
    const length = Math.min(size, TAIL_BYTES)
    const buffer = Buffer.alloc(length)
    readSync(fd, buffer, 0, length, size - length)
    const text = buffer.toString("utf8").trimEnd()
    return text === "" ? "(log is empty)" : text.split("\n").slice(-lines).join("\n")
  } catch (error) {
    return `(no log: ${(error as Error).message})`
  } finally {
    if (fd !== undefined) closeSync(fd)
  }
}
