import { Counter, Gauge, Histogram, type Registry } from '../runtime/index.js';

export interface EncoderMetrics {
  requests: Counter<'outcome'>;
  subImages: Counter;
  batchSize: Histogram;
  queueWait: Histogram;
  compute: Histogram;
  failures: Counter<'reason'>;
  cacheHits: Counter;
  cacheMisses: Counter;
  cacheEvictions: Counter;
  inFlight: Gauge;
  weightBytes: Gauge<'format'>;
}

export interface EncoderGauges {
  queueDepth(): number;
  cacheBytes(): number;
  cacheEntries(): number;
  /** The run memory budget: its limit (Infinity: none) and what the running batch holds. */
  memoryBudget(): { readonly limit: number; readonly used: number };
}

const SECONDS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export function createEncoderMetrics(registry: Registry, gauges: EncoderGauges): EncoderMetrics {
  const registers = [registry];
  new Gauge({
    name: 'loupe_encoder_queue_depth',
    help: 'Sub-images waiting for a model run (the autoscaling signal).',
    registers,
    collect() {
      this.set(gauges.queueDepth());
    },
  });
  new Gauge({
    name: 'loupe_encoder_cache_bytes',
    help: 'Bytes held by the embedding cache.',
    registers,
    collect() {
      this.set(gauges.cacheBytes());
    },
  });
  new Gauge({
    name: 'loupe_encoder_cache_entries',
    help: 'Images held by the embedding cache.',
    registers,
    collect() {
      this.set(gauges.cacheEntries());
    },
  });
  new Gauge({
    name: 'loupe_encoder_memory_budget_bytes',
    help: 'The memory budget for model runs (state="limit", 0 when there is none) and the estimate of the running batch held against it (state="reserved"), bytes.',
    labelNames: ['state'],
    registers,
    collect() {
      const { limit, used } = gauges.memoryBudget();
      this.set({ state: 'limit' }, Number.isFinite(limit) ? limit : 0);
      this.set({ state: 'reserved' }, used);
    },
  });
  return {
    weightBytes: new Gauge({
      name: 'loupe_encoder_model_weight_bytes',
      help: 'Bytes of the vision tower and connector weights as loaded, by format.',
      labelNames: ['format'],
      registers: [registry],
    }),
    requests: new Counter({
      name: 'loupe_encoder_requests_total',
      help: 'Encode and Lookup calls answered, by outcome (computed, cache_hit, not_found, failed).',
      labelNames: ['outcome'],
      registers,
    }),
    subImages: new Counter({
      name: 'loupe_encoder_sub_images_total',
      help: 'Sub-images run through the model (rate: sub-images/s).',
      registers,
    }),
    batchSize: new Histogram({
      name: 'loupe_encoder_batch_size',
      help: 'Sub-images per model run.',
      buckets: [1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 64],
      registers,
    }),
    queueWait: new Histogram({
      name: 'loupe_encoder_queue_wait_seconds',
      help: 'Time a sub-image waited for its model run, seconds.',
      buckets: SECONDS,
      registers,
    }),
    compute: new Histogram({
      name: 'loupe_encoder_compute_seconds',
      help: 'Time of one model run (a batch), seconds.',
      buckets: SECONDS,
      registers,
    }),
    failures: new Counter({
      name: 'loupe_encoder_failures_total',
      help: 'Calls refused or failed, by reason.',
      labelNames: ['reason'],
      registers,
    }),
    cacheHits: new Counter({
      name: 'loupe_encoder_cache_hits_total',
      help: 'Embeddings served from the cache.',
      registers,
    }),
    cacheMisses: new Counter({
      name: 'loupe_encoder_cache_misses_total',
      help: 'Encode calls whose embeddings were not cached (one per image the cache did not hold: a Lookup that finds nothing counts in requests_total{outcome="not_found"} only).',
      registers,
    }),
    cacheEvictions: new Counter({
      name: 'loupe_encoder_cache_evictions_total',
      help: 'Entries evicted to make room.',
      registers,
    }),
    inFlight: new Gauge({
      name: 'loupe_encoder_requests_in_flight',
      help: 'Encode calls being handled now (queued or running).',
      registers,
    }),
  };
}
