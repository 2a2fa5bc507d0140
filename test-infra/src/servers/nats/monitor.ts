import { get } from "node:http"

/**
 * GETs a JSON document from a NATS monitoring port. A plain one-shot request (no keep-alive agent)
 * so that no pooled socket keeps the process alive or outlives the server.
 */
function getJson(port: number, path: string, timeoutMs: number): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    const request = get({ host: "127.0.0.1", port, path, agent: false, timeout: timeoutMs }, (response) => {
      let text = ""
      response.setEncoding("utf8")
      response.on("data", (chunk: string) => {
        text += chunk
      })
      response.on("end", () => {
        try {
          resolve({ status: response.statusCode ?? 0, body: JSON.parse(text) })
        } catch (error) {
          reject(error)
        }
      })
      response.on("error", reject)
    })
    request.on("timeout", () => request.destroy(new Error(`GET ${path} timed out`)))
    request.on("error", reject)
  })
}

/** True when /healthz reports ok: the server accepts clients and its JetStream is up. */
export async function natsHealthy(monitorPort: number, timeoutMs = 1_000): Promise<boolean> {
  const { status, body } = await getJson(monitorPort, "/healthz", timeoutMs)
  return status === 200 && (body as { status?: unknown }).status === "ok"
}

/** The JetStream meta-group leader this node currently knows of, if any. */
export async function natsMetaLeader(monitorPort: number, timeoutMs = 1_000): Promise<string | undefined> {
  const { body } = await getJson(monitorPort, "/jsz", timeoutMs)
  const leader = (body as { meta_cluster?: { leader?: unknown } }).meta_cluster?.leader
  return typeof leader === "string" && leader !== "" ? leader : undefined
}
