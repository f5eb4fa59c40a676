// Settings from the environment (`k6 run -e HOST=... -e API_KEY=...`).
export const HOST = (__ENV.HOST ?? 'http://127.0.0.1:8080').replace(/\/$/, '');
export const API_KEY = __ENV.API_KEY ?? '';
export const MODEL = __ENV.MODEL ?? 'tiny-seed0';
/** Requests per second for the arrival-rate scenarios. */
export const RATE = Number(__ENV.RATE ?? 2);
/** Overrides the length of single-stage scenarios (throughput, soak, ...), e.g. `10m`. */
export const DURATION_OVERRIDE = __ENV.DURATION ?? '';
export const MAX_TOKENS = Number(__ENV.MAX_TOKENS ?? 32);
/** Stream answers (SSE). k6 reads the whole stream, so TTFT is measured as time to first byte. */
export const STREAM = (__ENV.STREAM ?? 'true') === 'true';
/** Where handleSummary writes loupe-<scenario>-summary.json and .txt. */
export const SUMMARY_DIR = __ENV.SUMMARY_DIR ?? '.';
