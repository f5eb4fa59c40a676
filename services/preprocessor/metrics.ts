import { Counter, Gauge, Histogram, type Registry } from '../runtime/index.js';

export interface PreprocessorMetrics {
  images: Counter<'split'>;
  subImages: Counter;
  inputBytes: Counter;
  latency: Histogram<'split'>;
  failures: Counter<'reason'>;
  inFlight: Gauge;
  queueDepth: Gauge;
  memoryBudget: Gauge<'state'>;
}

export function createPreprocessorMetrics(
  registry: Registry,
  {
    queueDepth,
    budget,
  }: { queueDepth: () => number; budget: { readonly limit: number; readonly used: number } },
): PreprocessorMetrics {
  return {
    images: new Counter({
      name: 'loupe_preprocessor_images_total',
      help: 'Images preprocessed successfully, by split setting.',
      labelNames: ['split'],
      registers: [registry],
    }),
    subImages: new Counter({
      name: 'loupe_preprocessor_sub_images_total',
      help: 'Sub-images produced.',
      registers: [registry],
    }),
    inputBytes: new Counter({
      name: 'loupe_preprocessor_input_bytes_total',
      help: 'Encoded image bytes received.',
      registers: [registry],
    }),
    latency: new Histogram({
      name: 'loupe_preprocessor_latency_seconds',
      help: 'Time from receiving an image to answering, queue wait included, seconds.',
      labelNames: ['split'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    }),
    failures: new Counter({
      name: 'loupe_preprocessor_failures_total',
      help: 'Images refused or failed, by reason.',
      labelNames: ['reason'],
      registers: [registry],
    }),
    inFlight: new Gauge({
      name: 'loupe_preprocessor_requests_in_flight',
      help: 'Preprocess calls being handled now (queued or running).',
      registers: [registry],
    }),
    queueDepth: new Gauge({
      name: 'loupe_preprocessor_queue_depth',
      help: 'Images waiting for a worker thread.',
      registers: [registry],
      collect() {
        this.set(queueDepth());
      },
    }),
    memoryBudget: new Gauge({
      name: 'loupe_preprocessor_memory_budget_bytes',
      help: 'The memory budget for images (state="limit") and the part reserved now (state="reserved"), bytes.',
      labelNames: ['state'],
      registers: [registry],
      collect() {
        this.set({ state: 'limit' }, budget.limit);
        this.set({ state: 'reserved' }, budget.used);
      },
    }),
  };
}
