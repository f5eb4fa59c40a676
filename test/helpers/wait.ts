// Bounded waits on a condition a test can observe (a metric, a load report, an HTTP answer):
// the condition is the readiness signal, checked again every `intervalMs`, never a fixed sleep
// standing in for it.

export interface UntilOptions {
  /** How long before giving up (throwing). */
  timeoutMs?: number;
  /** How long between checks. */
  intervalMs?: number;
  /** Appended to the error on timeout (e.g. the last output seen). */
  detail?: () => string;
}

/**
 * Resolves with the first truthy value `probe` returns; throws naming `what` once `timeoutMs`
 * pass without one. A probe that throws fails the wait at once.
 */
export async function until<T>(
  what: string,
  probe: () => T | Promise<T>,
  { timeoutMs = 20_000, intervalMs = 10, detail }: UntilOptions = {},
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline)
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${detail ? `\n${detail()}` : ''}`,
      );
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
