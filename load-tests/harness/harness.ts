// The local load harness: the k6 scenarios' profiles (load-tests/lib/profiles.ts), sent from
// Node to a running stack. Requests arrive on the profile's schedule (open model: a slow
// server does not slow the arrivals), each streamed, so time to first token is the arrival of
// the first content chunk. Bounded: a total duration, a request cap and an in-flight cap.
import { PROFILES, chatRequest, pick, type Profile, type Stage } from '../lib/profiles.js';

export interface HarnessOptions {
  url: string;
  model: string;
  apiKey?: string;
  /** Base arrival rate, requests/s (the profiles' rate factors multiply it). */
  rate: number;
  /** Seconds: the run's length, the profile's stages scaled to fit (default: the profile's). */
  durationS?: number;
  maxTokens: number;
  maxRequests: number;
  maxInFlight: number;
  images: { small: Uint8Array; large: Uint8Array };
}

export interface RequestResult {
  stage: number;
  offeredRate: number;
  startedMs: number;
  ok: boolean;
  errorType?: string;
  ttftMs?: number;
  tpotMs?: number;
  e2eMs: number;
  outputTokens: number;
}

export interface StageSummary {
  stage: number;
  offeredRate: number;
  requests: number;
  throughputRps: number;
  tokensPerS: number;
  errorRate: number;
  ttft: Percentiles;
  tpot: Percentiles;
  e2e: Percentiles;
}

export interface Percentiles {
  p50: number;
  p95: number;
  p99: number;
}

export function percentiles(values: number[]): Percentiles {
  const v = [...values].sort((a, b) => a - b);
  const at = (p: number) =>
    v.length === 0 ? NaN : v[Math.min(v.length - 1, Math.ceil(p * v.length) - 1)]!;
  return { p50: at(0.5), p95: at(0.95), p99: at(0.99) };
}

function imageUrl(
  images: HarnessOptions['images'],
  size: 'small' | 'large',
  cached: boolean,
): string {
  const bytes = size === 'small' ? images.small : images.large;
  const mime = size === 'small' ? 'image/webp' : 'image/jpeg';
  const data = cached
    ? Buffer.from(bytes)
    : Buffer.concat([bytes, Buffer.from(crypto.getRandomValues(new Uint8Array(8)))]);
  return `data:${mime};base64,${data.toString('base64')}`;
}

/** One streamed chat completion, timed. */
async function send(
  o: HarnessOptions,
  body: string,
  stage: number,
  offeredRate: number,
  t0: number,
): Promise<RequestResult> {
  const started = performance.now();
  const base = { stage, offeredRate, startedMs: started - t0, outputTokens: 0 };
  let response: Response;
  try {
    response = await fetch(`${o.url}/v1/chat/completions`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        ...(o.apiKey ? { authorization: `Bearer ${o.apiKey}` } : {}),
      },
      body,
      signal: AbortSignal.timeout(600_000),
    });
  } catch (error) {
    return {
      ...base,
      ok: false,
      errorType: (error as Error).name === 'TimeoutError' ? 'timeout' : 'network',
      e2eMs: performance.now() - started,
    };
  }
  if (response.status !== 200) {
    await response.body?.cancel();
    return {
      ...base,
      ok: false,
      errorType: `http_${response.status}`,
      e2eMs: performance.now() - started,
    };
  }
  let first: number | undefined;
  let last = started;
  let tokens = 0;
  let usageTokens: number | undefined;
  let failed: string | undefined;
  let buffered = '';
  const decoder = new TextDecoder();
  for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
    buffered += decoder.decode(chunk, { stream: true });
    let nl;
    while ((nl = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, nl).trim();
      buffered = buffered.slice(nl + 1);
      if (!line.startsWith('data: {')) continue;
      const event = JSON.parse(line.slice(6)) as {
        error?: unknown;
        usage?: { completion_tokens: number };
        choices?: Array<{ delta?: { content?: string } }>;
      };
      if (event.error) failed = 'stream_error';
      if (event.usage) usageTokens = event.usage.completion_tokens;
      if (event.choices?.[0]?.delta?.content) {
        const now = performance.now();
        first ??= now;
        last = now;
        tokens++;
      }
    }
  }
  const end = performance.now();
  const outputTokens = usageTokens ?? tokens;
  if (failed) return { ...base, ok: false, errorType: failed, e2eMs: end - started, outputTokens };
  return {
    ...base,
    ok: true,
    ttftMs: (first ?? end) - started,
    ...(outputTokens > 1 && first !== undefined
      ? { tpotMs: (last - first) / (outputTokens - 1) }
      : {}),
    e2eMs: end - started,
    outputTokens,
  };
}

/** The profile's stages, scaled to last `durationS` in all when it is given. */
function effectiveStages(profile: Profile, durationS?: number): Stage[] {
  const total = profile.stages.reduce((sum, x) => sum + x.seconds, 0);
  if (!durationS) return profile.stages;
  return profile.stages.map((x) => ({ ...x, seconds: (x.seconds * durationS) / total }));
}

/** The arrival rate (requests/s) at time `t` seconds: each stage ramps linearly to its target. */
function rateAt(
  stages: readonly Stage[],
  base: number,
  t: number,
): { rate: number; stage: number } {
  let from = stages[0]!.rateFactor;
  let start = 0;
  for (const [i, s] of stages.entries()) {
    if (t < start + s.seconds) {
      const f = from + (s.rateFactor - from) * ((t - start) / s.seconds);
      return { rate: f * base, stage: i };
    }
    from = s.rateFactor;
    start += s.seconds;
  }
  return { rate: 0, stage: -1 };
}

export async function runScenario(
  name: keyof typeof PROFILES,
  o: HarnessOptions,
): Promise<{ results: RequestResult[]; stages: StageSummary[]; seconds: number }> {
  const profile: Profile = PROFILES[name];
  const stages = effectiveStages(profile, o.durationS);
  const durationS = stages.reduce((sum, x) => sum + x.seconds, 0);
  const t0 = performance.now();
  const pending = new Set<Promise<void>>();
  const results: RequestResult[] = [];
  let owed = 0;
  let sent = 0;
  const tickMs = 50;
  for (let t = 0; t < durationS && sent < o.maxRequests; t += tickMs / 1000) {
    const { rate, stage } = rateAt(stages, o.rate, t);
    if (stage < 0) break;
    owed += (rate * tickMs) / 1000;
    while (owed >= 1 && sent < o.maxRequests) {
      owed -= 1;
      sent++;
      if (pending.size >= o.maxInFlight) {
        results.push({
          stage,
          offeredRate: rate,
          startedMs: performance.now() - t0,
          ok: false,
          errorType: 'harness_in_flight_cap',
          e2eMs: 0,
          outputTokens: 0,
        });
        continue;
      }
      const m = pick(profile.mix, Math.random());
      const body = chatRequest(m, (size, cached) => imageUrl(o.images, size, cached), {
        model: o.model,
        maxTokens: o.maxTokens,
        stream: true,
      });
      const p = send(o, body, stage, rate, t0).then((r) => {
        results.push(r);
        pending.delete(p);
      });
      pending.add(p);
    }
    const next = t0 + (t + tickMs / 1000) * 1000;
    await new Promise((r) => setTimeout(r, Math.max(0, next - performance.now())));
  }
  await Promise.all(pending);
  const seconds = (performance.now() - t0) / 1000;
  return { results, stages: summarize(results, stages), seconds };
}

function summarize(results: RequestResult[], effective: readonly Stage[]): StageSummary[] {
  const stages: StageSummary[] = [];
  const lengths = effective.map((x) => x.seconds);
  for (let i = 0; i < effective.length; i++) {
    const r = results.filter((x) => x.stage === i);
    if (r.length === 0) continue;
    const ok = r.filter((x) => x.ok);
    const window = Math.max(1e-9, lengths[i]!);
    stages.push({
      stage: i,
      offeredRate: r.reduce((s, x) => s + x.offeredRate, 0) / r.length,
      requests: r.length,
      throughputRps: ok.length / window,
      tokensPerS: ok.reduce((s, x) => s + x.outputTokens, 0) / window,
      errorRate: 1 - ok.length / r.length,
      ttft: percentiles(ok.map((x) => x.ttftMs!)),
      tpot: percentiles(ok.flatMap((x) => (x.tpotMs === undefined ? [] : [x.tpotMs]))),
      e2e: percentiles(ok.map((x) => x.e2eMs)),
    });
  }
  return stages;
}

/** The profile's thresholds over the whole run: the failures, or [] when all hold. */
export function checkThresholds(results: RequestResult[], profile: Profile): string[] {
  const ok = results.filter((r) => r.ok);
  const failures: string[] = [];
  const errorRate = results.length === 0 ? 1 : 1 - ok.length / results.length;
  if (errorRate > profile.limits.errorRate) {
    failures.push(
      `error rate ${(errorRate * 100).toFixed(1)}% > ${(profile.limits.errorRate * 100).toFixed(1)}%`,
    );
  }
  const ttft = percentiles(ok.map((r) => r.ttftMs!)).p95;
  if (ttft > profile.limits.ttftP95Ms)
    failures.push(`TTFT p95 ${ttft.toFixed(0)} ms > ${profile.limits.ttftP95Ms} ms`);
  const tpot = percentiles(ok.flatMap((r) => (r.tpotMs === undefined ? [] : [r.tpotMs]))).p95;
  if (tpot > profile.limits.tpotP95Ms)
    failures.push(`TPOT p95 ${tpot.toFixed(0)} ms > ${profile.limits.tpotP95Ms} ms`);
  return failures;
}

/**
 * Round tick values from 0 to at least `max`: steps of 1, 2 or 5 × a power of ten, about
 * `target` of them; the last tick is the axis's end.
 */
export function niceTicks(max: number, target = 5): number[] {
  const raw = Math.max(max, 1e-9) / target;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw)!;
  const count = Math.max(1, Math.ceil(max / step - 1e-9));
  // Rounded to the step's decimals, so labels read 0.1, 0.2, 0.3 and not 0.30000000000000004.
  const decimals = Math.max(0, -Math.floor(Math.log10(step)));
  return Array.from({ length: count + 1 }, (_, i) => Number((i * step).toFixed(decimals)));
}

/** An SVG chart: latency (p50 and p95 TTFT and end to end) and throughput against offered load. */
export function chartSvg(title: string, stages: StageSummary[]): string {
  const W = 720;
  const H = 400;
  const pad = { l: 70, r: 70, t: 40, b: 50 };
  const xs = stages.map((s) => s.offeredRate);
  const xTicks = niceTicks(Math.max(1e-9, ...xs));
  const latTicks = niceTicks(
    Math.max(1, ...stages.flatMap((s) => [s.e2e.p95, s.ttft.p95].filter(Number.isFinite))),
  );
  const thrTicks = niceTicks(Math.max(1e-9, ...stages.map((s) => s.throughputRps)));
  const xMax = xTicks.at(-1)!;
  const latMax = latTicks.at(-1)!;
  const thrMax = thrTicks.at(-1)!;
  const x = (v: number) => pad.l + (v / xMax) * (W - pad.l - pad.r);
  const yl = (v: number) => H - pad.b - (v / latMax) * (H - pad.t - pad.b);
  const yr = (v: number) => H - pad.b - (v / thrMax) * (H - pad.t - pad.b);
  const line = (pts: Array<[number, number]>, color: string, dash = '') =>
    `<polyline fill="none" stroke="${color}" stroke-width="2" ${dash ? `stroke-dasharray="${dash}"` : ''} points="${pts.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(' ')}"/>` +
    pts
      .map(([a, b]) => `<circle cx="${a.toFixed(1)}" cy="${b.toFixed(1)}" r="3" fill="${color}"/>`)
      .join('');
  const series = (f: (s: StageSummary) => number, y: (v: number) => number) =>
    stages
      .filter((s) => Number.isFinite(f(s)))
      .map((s) => [x(s.offeredRate), y(f(s))] as [number, number]);
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">${esc(title)}</text>`,
    `<line x1="${pad.l}" y1="${H - pad.b}" x2="${W - pad.r}" y2="${H - pad.b}" stroke="black"/>`,
    `<line x1="${pad.l}" y1="${pad.t}" x2="${pad.l}" y2="${H - pad.b}" stroke="black"/>`,
    `<line x1="${W - pad.r}" y1="${pad.t}" x2="${W - pad.r}" y2="${H - pad.b}" stroke="black"/>`,
    // Ticks with their values, and light grid lines at the latency ticks.
    ...xTicks.map(
      (t) =>
        `<line class="tick-x" x1="${x(t).toFixed(1)}" y1="${H - pad.b}" x2="${x(t).toFixed(1)}" y2="${H - pad.b + 5}" stroke="black"/>` +
        `<text x="${x(t).toFixed(1)}" y="${H - pad.b + 18}" text-anchor="middle">${t}</text>`,
    ),
    ...latTicks.map(
      (t) =>
        `<line x1="${pad.l}" y1="${yl(t).toFixed(1)}" x2="${W - pad.r}" y2="${yl(t).toFixed(1)}" stroke="#e5e5e5"/>` +
        `<line class="tick-latency" x1="${pad.l - 5}" y1="${yl(t).toFixed(1)}" x2="${pad.l}" y2="${yl(t).toFixed(1)}" stroke="black"/>` +
        `<text x="${pad.l - 8}" y="${(yl(t) + 4).toFixed(1)}" text-anchor="end">${t}</text>`,
    ),
    ...thrTicks.map(
      (t) =>
        `<line class="tick-throughput" x1="${W - pad.r}" y1="${yr(t).toFixed(1)}" x2="${W - pad.r + 5}" y2="${yr(t).toFixed(1)}" stroke="black"/>` +
        `<text x="${W - pad.r + 8}" y="${(yr(t) + 4).toFixed(1)}">${t}</text>`,
    ),
    `<text x="${W / 2}" y="${H - 12}" text-anchor="middle">offered load (requests/s)</text>`,
    `<text x="15" y="${H / 2}" transform="rotate(-90 15 ${H / 2})" text-anchor="middle">latency (ms)</text>`,
    `<text x="${W - 15}" y="${H / 2}" transform="rotate(90 ${W - 15} ${H / 2})" text-anchor="middle">throughput (requests/s)</text>`,
    line(
      series((s) => s.e2e.p50, yl),
      '#1f77b4',
    ),
    line(
      series((s) => s.e2e.p95, yl),
      '#1f77b4',
      '6 4',
    ),
    line(
      series((s) => s.ttft.p95, yl),
      '#ff7f0e',
      '6 4',
    ),
    line(
      series((s) => s.throughputRps, yr),
      '#2ca02c',
    ),
    `<g transform="translate(${pad.l + 10},${pad.t + 5})">`,
    `<text y="0" fill="#1f77b4">— end-to-end p50   - - end-to-end p95</text>`,
    `<text y="16" fill="#ff7f0e">- - time to first token p95</text>`,
    `<text y="32" fill="#2ca02c">— throughput (right axis)</text>`,
    `</g></svg>`,
  ].join('\n');
}
