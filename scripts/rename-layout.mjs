#!/usr/bin/env node
// Issue 14: one layout for the repo, applied by a script rather than by hand, because the
// files it moves are being edited on other branches at the same time. Run it at the repo root
// of any later tree (`node scripts/rename-layout.mjs`); run it again and it changes nothing.
// `--check` changes nothing and exits 1 when the tree is not in the new layout yet.
//
// Naming style: every source file and folder is camelCase (`wakeUps.ts`, `outboxTransport/`),
// suffixes after a dot (`x.test.ts`, `x.d.ts`, `vitest.config.ts`). Not PascalCase for files
// that hold a class or service: a file is a module, not a class, most of them export several
// things, and one rule needs no judgement ("is this a service?") nor case-only renames later.
// The layout and the per-transport role files are documented in docs/architecture.md
// ("Files per transport"); packages/package-tests/test/layout.test.ts enforces the style and
// the absence of import cycles between folders.

// ---------------------------------------------------------------------------------------------
// The mapping. Each block: a base folder, then [from, to] relative to it. A file listed in KEEP
// stays where it is. Until a folder's moves are done, every .ts file directly in it must be
// listed (in MAP or KEEP), and a folder the layout dissolves must stay empty for good: a file
// there stops the script, so that nobody's new file is left behind in a folder that no longer
// means what it did.
// ---------------------------------------------------------------------------------------------
const MAP = {
  "packages/core/src": [
    // the data the bus carries and its rules
    ["envelope/Envelope.ts", "model/envelope.ts"],
    ["envelope/CloudEvent.ts", "model/cloudEvent.ts"],
    ["envelope/uuidv7.ts", "model/uuidv7.ts"],
    ["names/Name.ts", "model/name.ts"],
    ["errors/BusError.ts", "model/errors.ts"],
    ["channel/Channel.ts", "model/channel.ts"],
    ["config/BusConfig.ts", "model/config.ts"],
    // the contracts a database or broker implements
    ["contracts/Capabilities.ts", "contracts/capabilities.ts"],
    ["contracts/Cursor.ts", "contracts/cursor.ts"],
    ["contracts/OutboxStore.ts", "contracts/outboxStore.ts"],
    ["contracts/Transport.ts", "contracts/transport.ts"],
    ["contracts/Wiring.ts", "contracts/wiring.ts"],
    ["contracts/DeadLetterStore.ts", "contracts/deadLetterStore.ts"],
    ["contracts/GroupStore.ts", "contracts/groupStore.ts"],
    ["contracts/OutboxReader.ts", "contracts/outboxReader.ts"],
    ["contracts/OutboxRetention.ts", "contracts/outboxRetention.ts"],
    ["contracts/OutboxWriter.ts", "contracts/outboxWriter.ts"],
    ["contracts/RelayLog.ts", "contracts/relayLog.ts"],
    // the bus, written once over the contracts
    ["bus/busLayer.ts", "bus/busLayer.ts"],
    ["publisher/Publisher.ts", "bus/publisher.ts"],
    ["subscriber/Subscriber.ts", "bus/subscriber.ts"],
    ["subscriber/allTenants.ts", "bus/allTenants.ts"],
    ["relay/Relay.ts", "bus/relay.ts"],
    ["relay/resend.ts", "bus/resend.ts"],
    ["schedule/backoff.ts", "bus/backoff.ts"],
    ["metrics/metrics.ts", "observability/metrics.ts"],
    ["observability/telemetry.ts", "observability/telemetry.ts"],
    // the transport that reads the outbox directly (postgres-notify, memory)
    ["outbox-transport/OutboxTransport.ts", "outboxTransport/transport.ts"],
    ["outbox-transport/dedupe.ts", "outboxTransport/dedupe.ts"],
    ["outbox-transport/feed.ts", "outboxTransport/feed.ts"],
    ["outbox-transport/feedCursor.ts", "outboxTransport/feedCursor.ts"],
    // the in-memory implementations: same role, same file name as in the packages
    ["memory/MemoryOutbox.ts", "memory/store.ts"],
    ["memory/memoryTransports.ts", "memory/transport.ts"],
    ["facade/EventQueue.ts", "facade/eventQueue.ts"],
  ],
  "packages/core/test": [
    ["all-tenants.test.ts", "allTenants.test.ts"],
    ["consumer-groups.test.ts", "consumerGroups.test.ts"],
    ["cursor-address.test.ts", "cursorAddress.test.ts"],
    ["payload-types.test.ts", "payloadTypes.test.ts"],
    ["typed-channels.test.ts", "typedChannels.test.ts"],
  ],
  "packages/postgres-notify/src": [
    // the role files every transport package has (docs/architecture.md, "Files per transport");
    // moving the store out of outbox/ also breaks the listener/ <-> outbox/ and
    // schema/ <-> outbox/ cycles: those folders now only depend on each other one way.
    ["postgres.ts", "wiring.ts"],
    ["outbox/PostgresOutboxStore.ts", "store.ts"],
    ["outbox/options.ts", "options.ts"],
    ["outbox/channels.ts", "names.ts"],
    ["outbox/cursor.ts", "cursor.ts"],
    ["outbox/groups.ts", "group.ts"],
    ["outbox/deadLetters.ts", "deadLetters.ts"],
    ["listener/Listener.ts", "listener/listener.ts"],
    ["listener/WakeUps.ts", "listener/wakeUps.ts"],
  ],
  "packages/postgres-notify/test": [["fanout-bounded.test.ts", "fanoutBounded.test.ts"]],
  "packages/nats/src": [
    ["NatsTransport.ts", "transport.ts"],
    ["broker.ts", "wiring.ts"],
    ["subjects.ts", "names.ts"],
  ],
  "packages/redis-streams/src": [
    ["RedisStreamsTransport.ts", "transport.ts"],
    ["broker.ts", "wiring.ts"],
    ["keys.ts", "names.ts"],
    ["codec.ts", "wire.ts"],
  ],
  "packages/redis-streams/test": [
    ["cluster-support.ts", "clusterSupport.ts"],
    ["conformance-cluster.test.ts", "conformanceCluster.test.ts"],
  ],
  "packages/sse/src": [["SseSession.ts", "sseSession.ts"]],
  "test-infra/src/servers": [
    // one folder per server, the same file names in each
    ["postgres.ts", "postgres/server.ts"],
    ["postgres-admin.ts", "postgres/admin.ts"],
    ["postgres-binaries.ts", "postgres/binaries.ts"],
    ["postgres-os-user.ts", "postgres/osUser.ts"],
    ["redis.ts", "redis/server.ts"],
    ["redis-cluster.ts", "redis/cluster.ts"],
    ["redis-command.ts", "redis/command.ts"],
    ["redis-ping.ts", "redis/ping.ts"],
    ["nats.ts", "nats/server.ts"],
    ["nats-cluster.ts", "nats/cluster.ts"],
    ["nats-monitor.ts", "nats/monitor.ts"],
    // what every server handle is made of
    ["controllable-handle.ts", "controllableHandle.ts"],
    ["external-handle.ts", "externalHandle.ts"],
    ["server-mode.ts", "serverMode.ts"],
    ["pause-for.ts", "pauseFor.ts"],
    // child processes: start, track, reap (depends on nothing else in test-infra)
    ["server-process.ts", "../process/serverProcess.ts"],
    ["server-start-error.ts", "../process/serverStartError.ts"],
    ["run-to-completion.ts", "../process/runToCompletion.ts"],
    ["process-registry.ts", "../process/registry.ts"],
    ["process-table.ts", "../process/table.ts"],
    ["process-tree.ts", "../process/tree.ts"],
    ["leftover-reaper.ts", "../process/leftoverReaper.ts"],
    ["global-setup.ts", "../process/globalSetup.ts"],
    ["find-executable.ts", "../process/findExecutable.ts"],
    ["os-user.ts", "../process/osUser.ts"],
    ["run-dir.ts", "../process/runDir.ts"],
    ["temp-dir.ts", "../process/tempDir.ts"],
    ["log-tail.ts", "../process/logTail.ts"],
    ["wait-until.ts", "../process/waitUntil.ts"],
    // the network between a test and its server
    ["free-port.ts", "../net/freePort.ts"],
    ["tcp-probe.ts", "../net/tcpProbe.ts"],
    ["redact-url.ts", "../net/redactUrl.ts"],
    ["blackhole-proxy.ts", "../net/blackholeProxy.ts"],
  ],
  "test-infra/test/servers": [
    ["blackhole-proxy.test.ts", "blackholeProxy.test.ts"],
    ["nats-cluster.test.ts", "natsCluster.test.ts"],
    ["process-table.test.ts", "processTable.test.ts"],
    ["redis-cluster.test.ts", "redisCluster.test.ts"],
    ["server-process.test.ts", "serverProcess.test.ts"],
  ],
  "benchmarks/src": [
    // the suite: which scenarios there are, their reports, and the report frame over all of
    // them. Above scenarios/ and report/, so that neither imports what imports it
    ["scenarios/index.ts", "suite/scenarios.ts"],
    ["scenarios/reports.ts", "suite/reports.ts"],
    ["report/markdown.ts", "suite/markdown.ts"],
    ["report/summary.ts", "suite/summary.ts"],
    // drives a target's pipe: a scenario's tool, next to the scenario context (harness/ is
    // below targets/, and targets/pipe.ts uses harness/types.ts)
    ["harness/delivery.ts", "scenarios/delivery.ts"],
    ["targets/relay-process.ts", "targets/relayProcess.ts"],
  ],
}

// Files that stay where they are, in folders files move out of or into.
const KEEP = {
  "packages/core/src": ["index.ts", "adapter.ts"],
  "packages/core/src/facade": ["createBus.ts"],
  "packages/core/src/flip": ["flip.ts", "frontier.ts"],
  "packages/postgres-notify/src": ["index.ts", "adapter.ts", "errors.ts"],
  "packages/postgres-notify/src/listener": ["health.ts"],
  "packages/postgres-notify/src/outbox": [
    "append.ts",
    "batched.ts",
    "hashtext.ts",
    "members.ts",
    "queries.ts",
    "read.ts",
    "relay.ts",
    "relayLog.ts",
    "relayQueries.ts",
    "retention.ts",
  ],
  "packages/nats/src": [
    "index.ts",
    "adapter.ts",
    "errors.ts",
    "options.ts",
    "connection.ts",
    "cursor.ts",
    "wire.ts",
    "group.ts",
    "deadLetters.ts",
    "subscribe.ts",
    "feed.ts",
    "ackMux.ts",
    "stream.ts",
    "streamWatch.ts",
  ],
  "packages/redis-streams/src": [
    "index.ts",
    "adapter.ts",
    "options.ts",
    "connection.ts",
    "group.ts",
    "deadLetters.ts",
    "subscribe.ts",
    "recovery.ts",
    "scripts.ts",
  ],
  "packages/sse/src": [
    "index.ts",
    "access.ts",
    "express.ts",
    "fastify.ts",
    "frames.ts",
    "node.ts",
    "options.ts",
    "source.ts",
    "sseId.ts",
    "webResponse.ts",
    "wire.ts",
  ],
  "test-infra/src/servers": ["types.ts"],
  "benchmarks/src": ["cli.ts", "main.ts"],
  "benchmarks/src/targets": ["pipe.ts", "poll.ts", "raw.ts", "sdk.ts", "sse.ts"],
  "benchmarks/src/scenarios": ["context.ts"],
  "benchmarks/src/report": ["format.ts", "svg.ts"],
  "benchmarks/src/harness": [
    "blocks.ts",
    "cpu.ts",
    "env.ts",
    "histogram.ts",
    "machine.ts",
    "memory.ts",
    "pg.ts",
    "profile.ts",
    "progress.ts",
    "schedule.ts",
    "sdklog.ts",
    "stats.ts",
    "types.ts",
  ],
}

// Test folders are not guarded (a new test file elsewhere stays valid where it is; the
// layout test catches a name that breaks the style).
const UNGUARDED = new Set([
  "packages/core/test",
  "packages/postgres-notify/test",
  "packages/redis-streams/test",
  "test-infra/test/servers",
])

// Where sources are looked for (imports are rewritten in every .ts/.tsx/.mts file under them)
// and which Markdown files mention paths.
const CODE_ROOTS = ["packages", "test-infra", "benchmarks", "examples"]
const SKIP_DIRS = new Set(["node_modules", "dist", ".turbo", "results", "generated"])
const DOC_FILES = [
  "README.md",
  "docs/*.md",
  "packages/*/README.md",
  "test-infra/README.md",
  "benchmarks/README.md",
  "examples/README.md",
]

// ---------------------------------------------------------------------------------------------

import { execFileSync } from "node:child_process"
import { existsSync, mkdirSync, readdirSync, readFileSync, rmdirSync, statSync, writeFileSync } from "node:fs"
import { posix } from "node:path"

const check = process.argv.includes("--check")
const problems = []
const fail = (msg) => problems.push(msg)

if (!existsSync("pnpm-workspace.yaml") || !existsSync(".git")) {
  console.error("rename-layout: run me at the repo root (where pnpm-workspace.yaml is)")
  process.exit(2)
}

// An exact-name existence test: on a case-insensitive file system `existsSync("Listener.ts")`
// is true for `listener.ts`, and the state of a case-only rename would be misread.
const exists = (p) => {
  const dir = posix.dirname(p)
  try {
    return readdirSync(dir).includes(posix.basename(p)) && statSync(p).isFile()
  } catch {
    return false
  }
}

// ---- the pairs and their state ----
const pairs = []
for (const [base, list] of Object.entries(MAP)) {
  for (const [from, to] of list) {
    pairs.push({ from: posix.normalize(`${base}/${from}`), to: posix.normalize(`${base}/${to}`) })
  }
}
const bySource = new Map()
const byTarget = new Map()
for (const p of pairs) {
  if (bySource.has(p.from)) fail(`MAP lists ${p.from} twice`)
  if (byTarget.has(p.to)) fail(`MAP moves two files to ${p.to}`)
  bySource.set(p.from, p)
  byTarget.set(p.to, p)
}
// No chains: a path is either an old name or a new one, so "the old path exists" is unambiguous.
for (const p of pairs)
  if (p.from !== p.to && bySource.has(p.to) && bySource.get(p.to) !== p)
    fail(`MAP: ${p.to} is both a target and a source`)

for (const p of pairs) {
  const a = exists(p.from)
  const b = exists(p.to)
  if (p.from === p.to) p.state = a ? "done" : "missing"
  else if (a && !b) p.state = "todo"
  else if (!a && b) p.state = "done"
  else if (a && b) p.state = "both"
  else p.state = "missing"
  if (p.state === "missing") fail(`expected file is gone: ${p.from} (nor is ${p.to} there); update MAP`)
  if (p.state === "both") fail(`both ${p.from} and ${p.to} exist; merge them by hand, then re-run`)
}

// ---- guard: no file left behind ----
// A folder the layout dissolves must be empty, always: a file there (a branch written against
// the old layout, merged later) would keep the old architecture alive. A folder that stays
// but loses or gains files is checked against MAP and KEEP only while its moves are still to
// be done; once applied, new files there are ordinary new files.
const dirsOf = (p) => [posix.dirname(p.from), posix.dirname(p.to)]
const living = new Set([...Object.keys(KEEP), ...pairs.map((p) => posix.dirname(p.to))])
const dissolved = new Set(pairs.map((p) => posix.dirname(p.from)).filter((d) => !living.has(d)))
const pending = new Set(pairs.filter((p) => p.state === "todo").flatMap(dirsOf))
const known = new Set(pairs.flatMap((p) => [p.from, p.to]))
for (const [dir, files] of Object.entries(KEEP)) {
  for (const f of files) {
    const path = `${dir}/${f}`
    known.add(path)
    if (pending.has(dir) && !exists(path)) fail(`expected file is gone: ${path} (KEEP); update KEEP`)
  }
}
for (const dir of new Set([...dissolved, ...pending])) {
  if (UNGUARDED.has(dir) || !existsSync(dir)) continue
  for (const name of readdirSync(dir)) {
    const path = `${dir}/${name}`
    if (!/\.(ts|tsx|mts)$/.test(name) || !statSync(path).isFile()) continue
    if (dissolved.has(dir) && !bySource.has(path))
      fail(`${dir}/ is gone in the new layout, but has ${name}: add it to MAP`)
    else if (!dissolved.has(dir) && !known.has(path))
      fail(`new file in a reorganised folder: ${path}; add it to MAP or KEEP`)
  }
}

// ---- all sources, and where each one ends up ----
const walk = (dir, out) => {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (SKIP_DIRS.has(e.name) || e.name.startsWith(".")) continue
    const p = `${dir}/${e.name}`
    if (e.isDirectory()) walk(p, out)
    else out.push(p)
  }
  return out
}
const allFiles = CODE_ROOTS.filter((r) => existsSync(r)).flatMap((r) => walk(r, []))
const present = new Set(allFiles)
const finalOf = (p) => {
  const pair = bySource.get(p)
  return pair && pair.state !== "missing" ? pair.to : p
}

// The file a relative specifier names, as it is now (or as it was, for a file this script
// moved earlier: code merged after a first run may still use the old path).
const SOURCE_EXT = [".ts", ".tsx", ".mts"]
const resolveTarget = (fromDir, spec) => {
  const raw = posix.normalize(posix.join(fromDir, spec))
  const stem = raw.replace(/\.(js|ts|tsx|mts|mjs)$/, "")
  const candidates = /\.(js|mjs)$/.test(raw) ? [raw, ...SOURCE_EXT.map((e) => stem + e)] : [raw]
  for (const c of candidates) {
    const pair = bySource.get(c)
    if (pair && pair.state !== "missing" && (pair.state === "todo" || pair.state === "done")) return c
    if (present.has(c) || exists(c)) return c
  }
  return undefined
}
const relativeSpec = (fromDir, target, original) => {
  let rel = posix.relative(fromDir, target)
  if (!rel.startsWith(".")) rel = `./${rel}`
  // keep the specifier's extension style: `.js` for a `.ts` source, `.ts` where it was `.ts`
  const ext = original.match(/\.[a-z]+$/)[0]
  return rel.replace(/\.(ts|tsx|mts)$/, (e) =>
    ext === ".js" || ext === ".mjs" ? (e === ".mts" ? ".mjs" : ".js") : e,
  )
}

// ---- new contents of every source file ----
const LITERAL = /(["'])(\.{1,2}\/[^"'\n]*?\.(?:js|ts|tsx|mts|mjs))\1/g
const CONFIG_ENTRY = /(["'])(src\/[^"'\n]*?\.(?:ts|tsx|mts))\1/g
const edits = new Map() // final path -> new text
for (const file of allFiles) {
  if (!/\.(ts|tsx|mts)$/.test(file)) continue
  const final = finalOf(file)
  const fromDir = posix.dirname(file)
  const toDir = posix.dirname(final)
  const text = readFileSync(file, "utf8")
  let next = text.replace(LITERAL, (whole, q, spec) => {
    const target = resolveTarget(fromDir, spec)
    if (target === undefined) {
      if (spec.includes("/dist/") || spec.startsWith("../dist/") || /\.mjs$/.test(spec)) return whole
      fail(`${file}: cannot map "${spec}" (no such file, and not in MAP)`)
      return whole
    }
    const rewritten = relativeSpec(toDir, finalOf(target), spec)
    return rewritten === spec ? whole : `${q}${rewritten}${q}`
  })
  // build and test configs name entry files relative to the package folder
  if (/(^|\/)(tsup|vitest)\.config\.ts$/.test(file)) {
    const pkg = posix.dirname(file)
    next = next.replace(CONFIG_ENTRY, (whole, q, spec) => {
      const target = resolveTarget(pkg, spec)
      if (target === undefined) {
        fail(`${file}: cannot map "${spec}"`)
        return whole
      }
      const rel = posix.relative(pkg, finalOf(target))
      const out = spec.startsWith("./") ? `./${rel}` : rel
      return out === spec ? whole : `${q}${out}${q}`
    })
  }
  if (next !== text || final !== file) edits.set(final, { from: file, text: next, changed: next !== text })
}

// ---- package.json: string values that name a source file ----
for (const file of allFiles.filter((f) => f.endsWith("/package.json"))) {
  const pkg = posix.dirname(file)
  const text = readFileSync(file, "utf8")
  const next = text.replace(/"((?:\.\/)?src\/[^"]+\.(?:ts|tsx|mts))"/g, (whole, spec) => {
    const target = resolveTarget(pkg, spec)
    if (target === undefined) {
      fail(`${file}: cannot map "${spec}"`)
      return whole
    }
    const rel = posix.relative(pkg, finalOf(target))
    return `"${spec.startsWith("./") ? "./" : ""}${rel}"`
  })
  if (next !== text) edits.set(file, { from: file, text: next, changed: true })
}

// ---- Markdown: paths written in full or from some folder down (`core/src/relay/Relay.ts`,
// `outbox/cursor.ts`, `test/conformance-cluster.test.ts`); a bare file name only when one file
// in the repo has it. Folders that are emptied are rewritten when they map to one new folder.
const moved = pairs.filter((p) => p.state === "todo" || p.state === "done").filter((p) => p.from !== p.to)
const basenameCount = new Map()
for (const f of new Set([...allFiles, ...moved.map((p) => p.from)])) {
  const b = posix.basename(f)
  basenameCount.set(b, (basenameCount.get(b) ?? 0) + 1)
}
const folderMoves = new Map() // old folder -> new folder, when every file of it went to one folder
{
  const groups = new Map()
  for (const p of moved) {
    const d = posix.dirname(p.from)
    if (!groups.has(d)) groups.set(d, new Set())
    groups.get(d).add(posix.dirname(p.to))
  }
  for (const [d, targets] of groups) {
    const stays = (KEEP[d] ?? []).length > 0 || pairs.some((p) => posix.dirname(p.to) === d)
    if (!stays && targets.size === 1) folderMoves.set(d, [...targets][0])
  }
}
const mapDocToken = (token) => {
  const isDir = token.endsWith("/")
  const body = isDir ? token.slice(0, -1) : token
  const results = new Set()
  const table = isDir ? [...folderMoves].map(([from, to]) => ({ from, to })) : moved
  for (const p of table) {
    let prefix
    if (p.from === body) prefix = ""
    else if (p.from.endsWith(`/${body}`)) prefix = p.from.slice(0, p.from.length - body.length)
    else continue
    // a bare file name is rewritten only when the name itself changed and only one file had it
    if (!body.includes("/") && !isDir && (basenameCount.get(body) !== 1 || posix.basename(p.to) === body))
      continue
    // the new path written from the same folder down, or in full when it left that folder
    let out = p.to.startsWith(prefix) ? p.to.slice(prefix.length) : p.to
    // `outbox/cursor.ts` -> `src/cursor.ts`, not a bare `cursor.ts` that loses its place
    if (body.includes("/") && !out.includes("/")) out = `${posix.basename(prefix)}/${out}`
    results.add(out + (isDir ? "/" : ""))
  }
  if (results.size > 1) {
    fail(
      `docs: "${token}" could mean several moved files (${[...results].join(", ")}); write more of its path`,
    )
    return token
  }
  return results.size === 1 ? [...results][0] : token
}
const expandGlob = (pattern) => {
  if (!pattern.includes("*")) return existsSync(pattern) ? [pattern] : []
  const [dir, rest] = [
    pattern.slice(0, pattern.indexOf("*")).replace(/\/$/, ""),
    pattern.slice(pattern.indexOf("*") + 1),
  ]
  if (rest.startsWith("/")) {
    return existsSync(dir)
      ? readdirSync(dir)
          .map((d) => `${dir}/${d}${rest}`)
          .filter(existsSync)
      : []
  }
  return existsSync(dir)
    ? readdirSync(dir)
        .filter((f) => f.endsWith(rest))
        .map((f) => `${dir}/${f}`)
    : []
}
for (const doc of DOC_FILES.flatMap(expandGlob)) {
  const text = readFileSync(doc, "utf8")
  const next = text.replace(
    /[A-Za-z0-9_.\-/]*[A-Za-z0-9_-]\.(?:ts|tsx|mts)\b|[A-Za-z0-9_.\-/]*\/src\/[A-Za-z0-9_.\-/]*\//g,
    (token) => {
      // a doc link such as `../packages/...` keeps its leading dots
      const lead = token.match(/^(\.\.?\/)*/)[0]
      return lead + mapDocToken(token.slice(lead.length))
    },
  )
  if (next !== text) edits.set(doc, { from: doc, text: next, changed: true })
}

// ---- report or apply ----
if (problems.length > 0) {
  console.error(`rename-layout: ${problems.length} problem(s), nothing changed:`)
  for (const p of problems) console.error(`  - ${p}`)
  process.exit(1)
}
const todo = pairs.filter((p) => p.state === "todo")
const changed = [...edits.values()].filter((e) => e.changed)
if (todo.length === 0 && changed.length === 0) {
  console.log("rename-layout: the tree is in the new layout; nothing to do")
  process.exit(0)
}
if (check) {
  console.error(`rename-layout --check: ${todo.length} file(s) to move, ${changed.length} file(s) to rewrite`)
  for (const p of todo) console.error(`  move ${p.from} -> ${p.to}`)
  for (const e of changed) console.error(`  rewrite ${e.from}`)
  process.exit(1)
}
const git = (...args) => execFileSync("git", args, { stdio: ["ignore", "inherit", "inherit"] })
for (const p of todo) {
  mkdirSync(posix.dirname(p.to), { recursive: true })
  if (p.from.toLowerCase() === p.to.toLowerCase()) {
    // a case-only rename goes through a temporary name, for case-insensitive file systems
    git("mv", p.from, `${p.to}.rename-layout`)
    git("mv", `${p.to}.rename-layout`, p.to)
  } else git("mv", p.from, p.to)
}
for (const [path, e] of edits) if (e.changed) writeFileSync(path, e.text)
// folders emptied by the moves (git does not track folders, so only the working tree has them)
for (const p of todo) {
  let dir = posix.dirname(p.from)
  while (dir.includes("/") && existsSync(dir) && readdirSync(dir).length === 0) {
    rmdirSync(dir)
    dir = posix.dirname(dir)
  }
}
// Rewritten specifiers can leave an import list out of the order biome keeps (CI runs
// `biome check`): let the repo's own biome sort and format the files this run wrote.
const biome = "node_modules/.bin/biome"
const written = [...edits.keys()].filter((p) => /\.(ts|tsx|mts|json|md)$/.test(p))
if (existsSync(biome) && written.length > 0) {
  execFileSync(biome, ["check", "--write", "--no-errors-on-unmatched", ...written], { stdio: "inherit" })
}
console.log(`rename-layout: moved ${todo.length} file(s), rewrote ${changed.length} file(s)`)
