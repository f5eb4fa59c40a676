// The encoder and decoder serving a GPTQ checkpoint (`loupe convert --bits 4`) as a user runs
// them: real processes on loopback, Info and metrics report what was loaded, the decoder's
// greedy tokens equal the reference's on the dequantized weights (test/fixtures/model/quant),
// and a restart reuses the packed weights instead of repacking them.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DecoderClient, type GenerateRequest } from '../proto/gen/loupe/v1/decoder.js';
import { EncoderClient } from '../proto/gen/loupe/v1/encoder.js';
import { Dtype } from '../proto/gen/loupe/v1/tensor.js';
import { generateRequest, generateTokens } from '../services/decoder/generate.test-helper.js';
import { convertCheckpoint, readSafetensors, writeTinyModel } from '../services/model/index.js';
import { call, clientOptions } from './helpers/grpc.js';
import { fixturesDir } from './helpers/fixtures.js';
import { scrapeMetrics } from './helpers/metrics.js';
import {
  builtService,
  ephemeralPorts,
  startServiceProcess,
  stopServiceProcesses,
  type ServiceProcess,
} from './helpers/service-process.js';

const CASE = 'tiny-q4-g32-asym';
const FORMAT = 'gptq-4bit-g32-asym';
const IMAGE_TOKEN = 459;
const HIDDEN = 64;
const quantDir = join(fixturesDir, 'model', 'quant');
const expected = JSON.parse(readFileSync(join(quantDir, 'expected.json'), 'utf8')) as {
  cases: Record<string, { prompts: Record<string, { generated_ids: number[] }> }>;
};

const work = mkdtempSync(join(tmpdir(), 'loupe-quantized-stages-'));
const floatDir = join(work, 'tiny-seed0');
const modelDir = join(work, 'tiny-q4');
const visionDir = join(work, 'tiny-q4-vision8');
const cacheDir = join(work, 'weight-cache');

function goldenRequest(prompt: string): GenerateRequest {
  const file = readSafetensors(join(quantDir, `${CASE}-${prompt}.safetensors`));
  const ids = Array.from(file.get('input_ids')!.data as BigInt64Array, Number);
  const rows = file.get('image_hidden_states')?.data as Float32Array | undefined;
  const positions = ids.flatMap((id, i) => (id === IMAGE_TOKEN ? [i] : []));
  // Greedy, 32 new tokens at most.
  return generateRequest(ids, {
    images: rows
      ? [
          {
            embeddings: {
              dtype: Dtype.DTYPE_FLOAT32,
              shape: [positions.length, HIDDEN],
              data: Buffer.from(rows.buffer, rows.byteOffset, rows.byteLength),
            },
          },
        ]
      : [],
  });
}

/** The greedy token ids (rejects if the call fails). */
const generate = async (client: DecoderClient, request: GenerateRequest) =>
  (await generateTokens(client, request)).map((t) => t.id);

const decoderEnv = () => ({
  ...ephemeralPorts('DECODER'),
  LOUPE_MODEL_DIR: modelDir,
  LOUPE_DECODER_THREADS: '1',
  LOUPE_DECODER_MAX_RUNNING: '2',
  LOUPE_DECODER_MAX_CONTEXT: '512',
  LOUPE_WEIGHT_CACHE_DIR: cacheDir,
});
const loaded = (p: ServiceProcess) => p.waitForLog((e) => e.event === 'model_loaded', 1);

beforeAll(() => {
  writeTinyModel({ out: floatDir, seed: 0 });
  convertCheckpoint({ from: floatDir, to: modelDir, quantize: { bits: 4, groupSize: 32 } });
  convertCheckpoint({
    from: floatDir,
    to: visionDir,
    quantize: { bits: 4, groupSize: 32, visionBits: 8 },
  });
});
afterAll(async () => {
  await stopServiceProcesses();
  rmSync(work, { recursive: true, force: true });
});

describe('stages on a 4-bit GPTQ checkpoint', () => {
  let decoder: ServiceProcess;
  let client: DecoderClient;
  beforeAll(async () => {
    decoder = await startServiceProcess(builtService('decoder'), decoderEnv());
    client = new DecoderClient(decoder.grpcAddress, credentials.createInsecure(), clientOptions);
  });
  afterAll(() => client?.close());

  it('the decoder reports the quantized weights in Info, metrics and its start-up log', async () => {
    const info = await call(client, client.info, {});
    expect(info.weightFormat).toBe(FORMAT);
    // 4-bit text weights: well under the float32 text weights of the same model.
    const t = { hidden: 64, intermediate: 128, layers: 2, kv: 32, vocab: 461 };
    const floatText =
      4 *
      (t.layers * (2 * t.hidden * t.hidden + 2 * t.kv * t.hidden + 3 * t.hidden * t.intermediate) +
        t.vocab * t.hidden);
    expect(info.weightBytes).toBeGreaterThan(0);
    expect(info.weightBytes).toBeLessThan(floatText);
    const metrics = await scrapeMetrics(decoder);
    expect(metrics.value('loupe_decoder_model_weight_bytes', { format: FORMAT })).toBe(
      info.weightBytes,
    );
    const log = await loaded(decoder);
    expect(log).toMatchObject({ weightFormat: FORMAT, weightBytes: info.weightBytes });
    expect(log.packedWeights).toMatchObject({ reused: false });
    expect(String(log.msg)).toContain(FORMAT);
    // The packed weights went where LOUPE_WEIGHT_CACHE_DIR says, not into the checkpoint.
    expect(readdirSync(cacheDir).some((f) => f.endsWith('.bin'))).toBe(true);
    expect(existsSync(join(modelDir, '.loupe-cache'))).toBe(false);
  });

  it.each(['text', 'image'])(
    'greedy tokens of the %s prompt equal the reference on the dequantized weights',
    async (prompt) => {
      const ids = await generate(client, goldenRequest(prompt));
      expect(ids).toEqual(expected.cases[CASE]!.prompts[prompt]!.generated_ids);
    },
  );

  it('a restart reuses the packed weights', async () => {
    expect(await decoder.stop()).toBe(0);
    const again = await startServiceProcess(builtService('decoder'), decoderEnv());
    expect(await loaded(again)).toMatchObject({ packedWeights: { reused: true } });
    const c = new DecoderClient(again.grpcAddress, credentials.createInsecure(), clientOptions);
    expect(await generate(c, goldenRequest('text'))).toEqual(
      expected.cases[CASE]!.prompts.text!.generated_ids,
    );
    c.close();
    expect(await again.stop()).toBe(0);
  });

  it('the encoder loads the same checkpoint (its vision tower stays float)', async () => {
    const encoder = await startServiceProcess(builtService('encoder'), {
      ...ephemeralPorts('ENCODER'),
      LOUPE_MODEL_DIR: modelDir,
      LOUPE_ENCODER_THREADS: '1',
    });
    const c = new EncoderClient(encoder.grpcAddress, credentials.createInsecure(), clientOptions);
    const info = await call(c, c.info, {});
    expect(info.weightFormat).toBe('float32');
    expect(info.weightBytes).toBeGreaterThan(0);
    const metrics = await scrapeMetrics(encoder);
    expect(metrics.value('loupe_encoder_model_weight_bytes', { format: 'float32' })).toBe(
      info.weightBytes,
    );
    c.close();
    expect(await encoder.stop()).toBe(0);
  });

  it('the encoder serves a checkpoint whose vision side is 8-bit too', async () => {
    const encoder = await startServiceProcess(builtService('encoder'), {
      ...ephemeralPorts('ENCODER'),
      LOUPE_MODEL_DIR: visionDir,
      LOUPE_ENCODER_THREADS: '1',
      LOUPE_WEIGHT_CACHE_DIR: cacheDir,
    });
    const c = new EncoderClient(encoder.grpcAddress, credentials.createInsecure(), clientOptions);
    const info = await call(c, c.info, {});
    expect(info.weightFormat).toBe('gptq-8bit-g32-sym');
    expect(await loaded(encoder)).toMatchObject({ weightFormat: 'gptq-8bit-g32-sym' });
    expect(readdirSync(cacheDir).some((f) => f.startsWith('vision-') && f.endsWith('.bin'))).toBe(
      true,
    );
    c.close();
    expect(await encoder.stop()).toBe(0);
  });

  it('the decoder warns that 8-bit weights want int8 activations on CPU', async () => {
    const eightBit = join(work, 'tiny-q8');
    convertCheckpoint({ from: floatDir, to: eightBit, quantize: { bits: 8, groupSize: 32 } });
    const p = await startServiceProcess(builtService('decoder'), {
      ...decoderEnv(),
      LOUPE_MODEL_DIR: eightBit,
    });
    expect(await p.waitForLog((e) => e.event === 'slow_kernel', 1)).toMatchObject({
      weightFormat: 'gptq-8bit-g32-asym',
    });
    expect(await p.stop()).toBe(0);
    const quiet = await startServiceProcess(builtService('decoder'), {
      ...decoderEnv(),
      LOUPE_MODEL_DIR: eightBit,
      LOUPE_DECODER_QUANT_ACTIVATIONS: 'int8',
    });
    await loaded(quiet);
    expect(quiet.lines.some((l) => l.includes('slow_kernel'))).toBe(false);
    expect(await quiet.stop()).toBe(0);
  });
});
