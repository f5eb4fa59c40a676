// What each scenario sends, as plain data shared by the k6 scenarios and the local harness
// (`npm run load`): the request mix, the arrival-rate shape and the thresholds.

export interface Mix {
  /** Share of requests with this shape; shares of a scenario add up to 1. */
  share: number;
  images: number;
  size: 'small' | 'large';
  cached: boolean;
  split?: boolean;
  maxTokens?: number;
}

export interface Stage {
  /** Requests per second at the end of the stage, × the run's base rate. */
  rateFactor: number;
  seconds: number;
}

export interface Limits {
  /** Highest acceptable share of failed requests. */
  errorRate: number;
  /** p95 limits, ms. */
  ttftP95Ms: number;
  tpotP95Ms: number;
  /**
   * Highest acceptable share of iterations k6 could not start on time (no VU free: the
   * system is slower than the arrival rate); 1 = no limit.
   */
  droppedShare: number;
}

export interface Profile {
  mix: Mix[];
  /** Arrival rate over time; a single stage with equal start and end is a constant rate. */
  stages: Stage[];
  limits: Limits;
}

const STRICT: Limits = { errorRate: 0.01, ttftP95Ms: 5000, tpotP95Ms: 500, droppedShare: 0.01 };

export const PROFILES = {
  smoke: {
    mix: [
      { share: 0.5, images: 0, size: 'small', cached: true },
      { share: 0.5, images: 1, size: 'small', cached: true },
    ],
    stages: [{ rateFactor: 1, seconds: 5 }],
    limits: STRICT,
  },
  throughput: {
    mix: [
      { share: 0.5, images: 1, size: 'small', cached: true },
      { share: 0.5, images: 1, size: 'small', cached: false },
    ],
    stages: [{ rateFactor: 1, seconds: 60 }],
    limits: STRICT,
  },
  ramp: {
    mix: [{ share: 1, images: 1, size: 'small', cached: false }],
    stages: [
      { rateFactor: 1, seconds: 60 },
      { rateFactor: 2, seconds: 60 },
      { rateFactor: 3, seconds: 60 },
      { rateFactor: 4, seconds: 60 },
    ],
    // Finds the knee: past it, iterations are dropped, and that is the measurement.
    limits: { errorRate: 0.05, ttftP95Ms: Infinity, tpotP95Ms: Infinity, droppedShare: 1 },
  },
  spike: {
    mix: [{ share: 1, images: 1, size: 'small', cached: true }],
    stages: [
      { rateFactor: 1, seconds: 30 },
      { rateFactor: 10, seconds: 5 },
      { rateFactor: 10, seconds: 30 },
      { rateFactor: 1, seconds: 5 },
      { rateFactor: 1, seconds: 60 },
    ],
    // 429s are the expected answer during the spike; the run checks the recovery.
    limits: { errorRate: 1, ttftP95Ms: Infinity, tpotP95Ms: Infinity, droppedShare: 1 },
  },
  soak: {
    mix: [
      { share: 0.3, images: 0, size: 'small', cached: true },
      { share: 0.3, images: 1, size: 'small', cached: true },
      { share: 0.2, images: 1, size: 'small', cached: false },
      { share: 0.2, images: 2, size: 'small', cached: false },
    ],
    stages: [{ rateFactor: 1, seconds: 3600 }],
    limits: STRICT,
  },
  'image-heavy': {
    mix: [{ share: 1, images: 3, size: 'large', cached: false, split: true, maxTokens: 16 }],
    stages: [{ rateFactor: 1, seconds: 60 }],
    limits: { errorRate: 0.01, ttftP95Ms: 20000, tpotP95Ms: Infinity, droppedShare: 0.01 },
  },
} satisfies Record<string, Profile>;

export type ScenarioName = keyof typeof PROFILES;

/** The mix entry for a uniform draw `u` in [0, 1). */
export function pick(mix: readonly Mix[], u: number): Mix {
  let acc = 0;
  for (const m of mix) {
    acc += m.share;
    if (u < acc) return m;
  }
  return mix[mix.length - 1]!;
}

/** Iterations a profile starts at `rate` requests/s × each stage's factor (linear ramps). */
export function expectedIterations(
  profile: Profile,
  rate: number,
  secondsOverride?: number,
): number {
  let previous = profile.stages[0]!.rateFactor;
  let total = 0;
  for (const s of profile.stages) {
    const seconds = secondsOverride ?? s.seconds;
    total += ((previous + s.rateFactor) / 2) * rate * seconds;
    previous = s.rateFactor;
  }
  return Math.round(total);
}

/**
 * k6 thresholds for `limits` (the same numbers the harness checks); `iterations` is what the
 * run should start (expectedIterations), for the dropped-iterations bound.
 */
export function k6Thresholds(limits: Limits, iterations: number): Record<string, string[]> {
  const t: Record<string, string[]> = {
    http_req_failed: [`rate<${limits.errorRate}`],
  };
  if (Number.isFinite(limits.ttftP95Ms)) t.loupe_ttft = [`p(95)<${limits.ttftP95Ms}`];
  if (Number.isFinite(limits.tpotP95Ms)) t.loupe_tpot = [`p(95)<${limits.tpotP95Ms}`];
  if (limits.droppedShare < 1)
    t.dropped_iterations = [`count<=${Math.floor(limits.droppedShare * iterations)}`];
  return t;
}

/** A request shape's tag: `1img-small-new`, `0img`, `3img-large-new-split`. */
export function shapeTag(m: Mix): string {
  if (m.images === 0) return '0img';
  return `${m.images}img-${m.size}-${m.cached ? 'cached' : 'new'}${m.split ? '-split' : ''}`;
}

/** The body of a chat request for `mix`; `image` turns a size and cache setting into a URL. */
export function chatRequest(
  m: Mix,
  image: (size: 'small' | 'large', cached: boolean) => string,
  { model, maxTokens, stream }: { model: string; maxTokens: number; stream: boolean },
): string {
  const content: unknown[] = [];
  for (let i = 0; i < m.images; i++) {
    content.push({
      type: 'image_url',
      image_url: {
        url: image(m.size, m.cached),
        ...(m.split === undefined ? {} : { split: m.split }),
      },
    });
  }
  content.push({
    type: 'text',
    text: m.images > 0 ? 'Describe the pictures.' : 'Write a short poem about the sea.',
  });
  return JSON.stringify({
    model,
    max_tokens: m.maxTokens ?? maxTokens,
    temperature: 0,
    stream,
    ...(stream ? { stream_options: { include_usage: true } } : {}),
    messages: [{ role: 'user', content }],
  });
}
