// Structured output and logit_bias end to end: the real gateway and decoder processes with the
// tiny random checkpoint, called with the official `openai` SDK. A random model writes valid
// JSON only if the decoder's grammar masks make it (docs/structured-output.md).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { zodResponseFormat } from 'openai/helpers/zod';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { validate } from '../services/decoder/grammar/grammar.test-helper.js';
import { loadTokenizer, openCheckpoint, writeTinyModel } from '../services/model/index.js';
import {
  builtService,
  ephemeralPorts,
  startGateway,
  startServiceProcess,
  stopServiceProcesses,
  type ServiceProcess,
} from './helpers/service-process.js';

const work = mkdtempSync(join(tmpdir(), 'loupe-structured-'));
const modelDir = join(work, 'tiny-seed0');
let decoder: ServiceProcess;
let gateway: ServiceProcess;
let openai: OpenAI;

beforeAll(async () => {
  writeTinyModel({ out: modelDir, seed: 0 });
  decoder = await startServiceProcess(builtService('decoder'), {
    ...ephemeralPorts('DECODER'),
    LOUPE_MODEL_DIR: modelDir,
    LOUPE_DECODER_THREADS: '1',
  });
  // Text only: the preprocessor and encoder are never called.
  gateway = await startGateway(modelDir, {
    preprocessor: '127.0.0.1:1',
    encoder: '127.0.0.1:1',
    decoder: decoder.grpcAddress,
  });
  openai = new OpenAI({
    baseURL: `${gateway.httpBase}/v1`,
    apiKey: 'unused',
    maxRetries: 0,
  });
}, 120_000);

afterAll(async () => {
  for (const p of [gateway, decoder]) if (p) expect(await p.stop()).toBe(0);
  await stopServiceProcesses(); // any a failed start left behind
  rmSync(work, { recursive: true, force: true });
});

const ask = (extra: Record<string, unknown>, content = 'Describe a pet as JSON.') =>
  openai.chat.completions.create({
    model: 'tiny-seed0',
    messages: [{ role: 'user', content }],
    max_tokens: 400,
    ...extra,
  } as never) as Promise<OpenAI.Chat.Completions.ChatCompletion>;

const PET = {
  type: 'object',
  properties: {
    name: { type: 'string', maxLength: 8 },
    kind: { enum: ['cat', 'dog', 'bird'] },
    age: { type: 'integer', minimum: 0, maximum: 30 },
    weight: { type: 'number', minimum: 0.5, maximum: 80 },
    tags: { type: 'array', items: { type: 'string', maxLength: 5 }, minItems: 1, maxItems: 3 },
    owner: { $ref: '#/$defs/person' },
    vaccinated: { type: 'boolean' },
    microchip: { anyOf: [{ type: 'null' }, { type: 'string', maxLength: 6 }] },
  },
  required: ['name', 'kind', 'age', 'weight', 'tags', 'owner', 'vaccinated', 'microchip'],
  additionalProperties: false,
  $defs: {
    person: {
      type: 'object',
      properties: { first: { type: 'string', maxLength: 6 }, adult: { type: 'boolean' } },
      required: ['first', 'adult'],
      additionalProperties: false,
    },
  },
};

describe('structured output', () => {
  it('answers json_schema with JSON that validates: nested objects, bounded arrays, enums, ranges, $ref', async () => {
    for (const seed of [1, 2, 3]) {
      const r = await ask({
        seed,
        temperature: 1,
        response_format: { type: 'json_schema', json_schema: { name: 'pet', schema: PET } },
      });
      const choice = r.choices[0]!;
      expect(choice.finish_reason, choice.message.content ?? '').toBe('stop');
      const value = JSON.parse(choice.message.content!) as unknown;
      expect(validate(value, PET as never), choice.message.content!).toEqual([]);
    }
  });

  it('answers json_object with a JSON object, streamed too, with logit_bias inside the grammar', async () => {
    // A random model's strings never end by themselves (json_object bounds no length): a bias
    // toward the closing quote and brace makes them short. The bias only reorders what the
    // grammar allows, so the answer is still an object.
    const t = loadTokenizer(modelDir);
    const closers = new Set(['a"', 'a}', '"', '}'].map((s) => t.encode(s).at(-1)!));
    const stream = await openai.chat.completions.create({
      model: 'tiny-seed0',
      messages: [{ role: 'user', content: 'Any JSON object.' }],
      max_tokens: 400,
      seed: 4,
      temperature: 0.7,
      stream: true,
      response_format: { type: 'json_object' },
      logit_bias: Object.fromEntries([...closers].map((id) => [id, 8])),
    });
    let text = '';
    let finish: string | null = null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
    }
    expect(finish, text).toBe('stop');
    const value = JSON.parse(text) as unknown;
    expect(typeof value === 'object' && value !== null && !Array.isArray(value), text).toBe(true);
  });

  it('gives the logprobs of the masked distribution', async () => {
    const r = await ask({
      seed: 6,
      temperature: 1,
      max_tokens: 12,
      logprobs: true,
      top_logprobs: 5,
      response_format: { type: 'json_schema', json_schema: { name: 'pet', schema: PET } },
    });
    const first = r.choices[0]!.logprobs!.content![0]!;
    // An object must open first: every alternative the distribution holds opens it too.
    expect(first.token.trim().startsWith('{')).toBe(true);
    for (const alt of first.top_logprobs) {
      expect(Number.isFinite(alt.logprob)).toBe(true);
      expect(alt.token.trim().startsWith('{'), JSON.stringify(first.top_logprobs)).toBe(true);
    }
    const total = first.top_logprobs.reduce((p, t) => p + Math.exp(t.logprob), 0);
    expect(total).toBeLessThanOrEqual(1.0001);
  });

  it("works with the SDK's zod helper, unchanged", async () => {
    const Answer = z.object({
      colour: z.enum(['red', 'green', 'blue']),
      count: z.number().int().min(1).max(9),
      sure: z.boolean(),
    });
    const r = await openai.chat.completions.parse({
      model: 'tiny-seed0',
      messages: [{ role: 'user', content: 'Pick a colour.' }],
      max_tokens: 200,
      seed: 5,
      response_format: zodResponseFormat(Answer, 'answer'),
    });
    const parsed = r.choices[0]!.message.parsed;
    expect(Answer.safeParse(parsed).success, JSON.stringify(parsed)).toBe(true);
  });

  it('refuses schemas outside the subset with 400 naming the keyword', async () => {
    const bad = ask({
      response_format: {
        type: 'json_schema',
        json_schema: { name: 'x', schema: { type: 'object', oneOf: [{ type: 'object' }] } },
      },
    });
    await expect(bad).rejects.toMatchObject({
      status: 400,
      code: 'unsupported_schema',
      param: 'response_format.json_schema.schema.oneOf',
    });
  });
});

describe('logit_bias', () => {
  const tokenizer = () => loadTokenizer(modelDir);

  it('-100 bans a token; +100 forces it', async () => {
    const greedy = await ask({ temperature: 0, max_tokens: 8, logprobs: true }, 'Hello there');
    const first = greedy.choices[0]!.logprobs!.content![0]!.token;
    const id = tokenizer().encode(first).at(-1)!;
    const banned = await ask(
      { temperature: 0, max_tokens: 8, logprobs: true, logit_bias: { [id]: -100 } },
      'Hello there',
    );
    const tokens = banned.choices[0]!.logprobs!.content!.map((t) => t.token);
    expect(tokens[0]).not.toBe(first);
    expect(tokens).not.toContain(first);

    const forcedId = tokenizer().encode('apple').at(-1)!;
    const forced = await ask(
      { temperature: 1, seed: 3, max_tokens: 6, logprobs: true, logit_bias: { [forcedId]: 100 } },
      'Hello there',
    );
    const piece = tokenizer().decode([forcedId]);
    expect(forced.choices[0]!.logprobs!.content!.map((t) => t.token)).toEqual(
      Array.from({ length: 6 }, () => piece),
    );
  });

  it("never generates the checkpoint's bad_words_ids, whatever the bias", async () => {
    // The tiny checkpoint bans <fake_token_around_image> and <image>, as idefics2-8b does.
    const image = openCheckpoint(modelDir).config.imageTokenId;
    const piece = tokenizer().decode([image]);
    const r = await ask(
      { temperature: 1, seed: 9, max_tokens: 6, logprobs: true, logit_bias: { [image]: 100 } },
      'Hello there',
    );
    const tokens = r.choices[0]!.logprobs!.content!.map((t) => t.token);
    expect(tokens.length).toBeGreaterThan(0);
    expect(tokens).not.toContain(piece);
  });
});
