import { describe, expect, it } from "vitest"
import { parseProcStat, processTree, processTreeCpuMs, readProcessTable } from "../../src/index.js"

describe("/proc parsing", () => {
  it("finds this process in the table, with its parent and CPU time", () => {
    const me = readProcessTable().find((e) => e.pid === process.pid)
    expect(me?.ppid).toBe(process.ppid)
    expect(processTree(process.pid)[0]?.pid).toBe(process.pid)
    expect(processTreeCpuMs(process.pid)).toBeGreaterThan(0)
  })

  it("reads utime, stime and the children's times from a stat line with spaces in the name", () => {
    const line = "1234 (postgres: bus x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0 100 0 0"
    expect(parseProcStat(line)).toEqual({
      pid: 1234,
      ppid: 1,
      state: "S",
      startTime: "100",
      cpuTicks: 300,
      childCpuTicks: 10,
    })
  })

  it("sums a process tree", () => {
    const stats = [
      { pid: 10, ppid: 1, cpuTicks: 100, childCpuTicks: 50 },
      { pid: 11, ppid: 10, cpuTicks: 30, childCpuTicks: 0 },
      { pid: 12, ppid: 11, cpuTicks: 20, childCpuTicks: 0 },
      { pid: 99, ppid: 1, cpuTicks: 1000, childCpuTicks: 0 },
    ].map((e) => ({ ...e, state: "S", startTime: "1" }))
    const ticks = 200 // 100 + 50 + 30 + 20
    // The unit depends on CLK_TCK; the ratio of two trees does not.
    const ms = processTreeCpuMs(10, stats) as number
    expect(ms / (processTreeCpuMs(11, stats) as number)).toBeCloseTo(ticks / 50)
    expect(processTreeCpuMs(10, stats)).toBe(processTreeCpuMs(10, stats.slice(0, 3)))
    expect(processTreeCpuMs(42, stats)).toBeUndefined()
  })
})
