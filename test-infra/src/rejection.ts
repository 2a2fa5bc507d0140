/**
 * What `run` rejects with, for tests that examine a real failure (an error mapper fed what a
 * client library throws against a real server). Fails when `run` resolves, so a test cannot
 * pass by examining nothing.
 */
export async function rejectionOf(run: () => Promise<unknown>): Promise<unknown> {
  try {
    await run()
  } catch (error) {
    return error
  }
  throw new Error("expected the call to fail, and it succeeded")
}
