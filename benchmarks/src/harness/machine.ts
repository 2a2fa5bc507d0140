import { execFileSync } from "node:child_process"
import { readFileSync } from "node:fs"
import { createRequire } from "node:module"
import os from "node:os"
import type { BenchEnv } from "./env.js"
import type { MachineFacts } from "./types.js"

/** Facts about the machine and software a run measured, stamped on every report. */

const git = (args: string[]): string | undefined => {
  try {
    return execFileSync("git", args, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim()
  } catch {
    return undefined
  }
}

const osName = (): string => {
  try {
    const text = readFileSync("/etc/os-release", "utf8")
    return /^PRETTY_NAME="?([^"\n]+)"?/m.exec(text)?.[1] ?? `${os.type()} ${os.release()}`
  } catch {
    return `${os.type()} ${os.release()}`
  }
}

/** Version of an installed package, resolved from this package or (for effect) from @bus/core. */
const packageVersion = (name: string, from = import.meta.url): string => {
  try {
    const file = createRequire(from).resolve(`${name}/package.json`)
    return String(JSON.parse(readFileSync(file, "utf8")).version)
  } catch {
    return "?"
  }
}

const coreUrl = (): string => {
  try {
    return import.meta.resolve("@bus/core")
  } catch {
    return import.meta.url
  }
}

export const machineFacts = (env: BenchEnv, loadAverageStart: readonly number[]): MachineFacts => {
  const cpus = os.cpus()
  const status = git(["status", "--porcelain"])
  return {
    cpuModel: cpus[0]?.model?.trim() ?? "?",
    cores: cpus.length,
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    os: osName(),
    kernel: os.release(),
    node: process.version,
    loadAverageStart: loadAverageStart.map((l) => Math.round(l * 100) / 100),
    loadAverageEnd: os.loadavg().map((l) => Math.round(l * 100) / 100),
    gitCommit: git(["rev-parse", "HEAD"]) ?? "?",
    gitDirty: status !== undefined && status !== "",
    servers: { ...env.versions },
    postgresSettings: { ...env.postgresSettings },
    packages: {
      effect: packageVersion("effect", coreUrl()),
      pg: packageVersion("pg"),
      ioredis: packageVersion("ioredis"),
      "@nats-io/transport-node": packageVersion("@nats-io/transport-node"),
      "hdr-histogram-js": packageVersion("hdr-histogram-js"),
    },
  }
}
