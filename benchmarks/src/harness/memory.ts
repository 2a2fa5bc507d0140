import { setFlagsFromString } from "node:v8"
import { runInNewContext } from "node:vm"

/** Heap measurements after a full garbage collection (exposed at run time, no node flag needed). */

let gcFn: (() => void) | undefined
const gc = (): void => {
  if (gcFn === undefined) {
    setFlagsFromString("--expose-gc")
    gcFn = runInNewContext("gc") as () => void
  }
  gcFn()
}

/** Heap used after two full collections, in bytes. */
export const settledHeap = async (): Promise<number> => {
  gc()
  await new Promise((resolve) => setImmediate(resolve))
  gc()
  return process.memoryUsage().heapUsed
}
