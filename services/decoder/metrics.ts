// Decoder metrics, named as vLLM names them where the meaning is the same.
import { Counter, Gauge, Histogram, type Registry } from '../runtime/index.js';
import type { EngineLoad } from './protocol.js';

export interface DecoderMetrics {
  timeToFirstToken: Histogram;
  interTokenLatency: Histogram;
  e2eLatency: Histogram;
  promptTokens: Counter;
  generationTokens: Counter;
  requestSuccess: Counter<'finished_reason'>;
  failures: Counter<'reason'>;
  preemptions: Counter;
  prefixCacheQueries: Counter;
  prefixCacheHits: Counter;
  batchSize: Histogram<'step'>;
  stepSeconds: Histogram<'step'>;
  weightBytes: Gauge<'format'>;
}

const LATENCY = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

export function createDecoderMetrics(registry: Registry, load: () => EngineLoad): DecoderMetrics {
  const registers = [registry];
  new Gauge({
    name: 'loupe_decoder_num_requests_running',
    help: 'Sequences holding a KV slot (prefilling or decoding).',
    registers,
    collect() {
      this.set(load().running);
    },
  });
  new Gauge({
    name: 'loupe_decoder_num_requests_waiting',
    help: 'Requests waiting for a KV slot (the autoscaling signal).',
    registers,
    collect() {
      this.set(load().waiting);
    },
  });
  new Gauge({
    name: 'loupe_decoder_kv_cache_usage_perc',
    help: 'Share of KV-cache slots reserved by sequences, 0 to 1.',
    registers,
    collect() {
      this.set(load().kvCacheUsage);
    },
  });
  return {
    weightBytes: new Gauge({
      name: 'loupe_decoder_model_weight_bytes',
      help: 'Bytes of the text model weights as loaded (quantized weights as stored), by format.',
      labelNames: ['format'],
      registers,
    }),
    timeToFirstToken: new Histogram({
      name: 'loupe_decoder_time_to_first_token_seconds',
      help: 'From receiving a request to its first token, seconds.',
      buckets: LATENCY,
      registers,
    }),
    interTokenLatency: new Histogram({
      name: 'loupe_decoder_inter_token_latency_seconds',
      help: 'Between consecutive tokens of a request, seconds.',
      buckets: [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5],
      registers,
    }),
    e2eLatency: new Histogram({
      name: 'loupe_decoder_e2e_request_latency_seconds',
      help: 'From receiving a request to its last token, seconds.',
      buckets: LATENCY,
      registers,
    }),
    promptTokens: new Counter({
      name: 'loupe_decoder_prompt_tokens_total',
      help: 'Prompt tokens of accepted requests.',
      registers,
    }),
    generationTokens: new Counter({
      name: 'loupe_decoder_generation_tokens_total',
      help: 'Tokens generated.',
      registers,
    }),
    requestSuccess: new Counter({
      name: 'loupe_decoder_request_success_total',
      help: 'Requests ended, by finish reason (stop, length, cancelled).',
      labelNames: ['finished_reason'],
      registers,
    }),
    failures: new Counter({
      name: 'loupe_decoder_failures_total',
      help: 'Requests refused or failed, by reason.',
      labelNames: ['reason'],
      registers,
    }),
    preemptions: new Counter({
      name: 'loupe_decoder_num_preemptions_total',
      help: 'Sequences preempted (always 0: a sequence reserves its whole KV slot at admission).',
      registers,
    }),
    prefixCacheQueries: new Counter({
      name: 'loupe_decoder_prefix_cache_queries_total',
      help: 'Prompt tokens looked up in the prefix cache (every prompt token of every request, when it is on).',
      registers,
    }),
    prefixCacheHits: new Counter({
      name: 'loupe_decoder_prefix_cache_hits_total',
      help: 'Prompt tokens found in the prefix cache (their KV loaded, not computed).',
      registers,
    }),
    batchSize: new Histogram({
      name: 'loupe_decoder_batch_size',
      help: 'Sequences per model step (prompt chunks and decode rows), by step kind (prefill, decode, mixed).',
      labelNames: ['step'],
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
      registers,
    }),
    stepSeconds: new Histogram({
      name: 'loupe_decoder_step_seconds',
      help: 'Time of one model step, by step kind (prefill, decode, mixed), seconds.',
      labelNames: ['step'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    }),
  };
}
