import { status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { GenerateRequest, ResponseFormat } from '../../../proto/gen/loupe/v1/decoder.js';
import { ServiceError } from '../../runtime/index.js';
import {
  engineLogitBias,
  engineResponseFormat,
  LOGIT_BIAS_LIMIT,
  MAX_LOGIT_BIAS,
} from './request-format.js';

/** The ServiceError `f` throws (status and `loupe-reason`), or undefined. */
async function failure(f: () => unknown): Promise<ServiceError | undefined> {
  try {
    await f();
    return undefined;
  } catch (error) {
    if (error instanceof ServiceError) return error;
    throw error;
  }
}

const schemaFormat = (schema: unknown): ResponseFormat => ({
  format: {
    $case: 'jsonSchema',
    value: typeof schema === 'string' ? schema : JSON.stringify(schema),
  },
});

describe('logit_bias', () => {
  it('is ids ascending with their values, or undefined when empty', () => {
    expect(engineLogitBias({}, 100)).toBeUndefined();
    expect(engineLogitBias(undefined, 100)).toBeUndefined();
    expect(engineLogitBias({ 7: -100, 2: 100, 50: 0.5 }, 100)).toEqual({
      ids: [2, 7, 50],
      bias: [100, -100, 0.5],
    });
  });

  it('refuses ids outside the vocabulary and values outside [-100, 100]', async () => {
    const biases: Array<Record<number, number>> = [
      { 100: 1 },
      { 3: 100.5 },
      { 3: -101 },
      { 3: Number.NaN },
      { 3: Infinity },
    ];
    for (const bias of biases) {
      const error = await failure(() => engineLogitBias(bias, 100));
      expect(error?.code, JSON.stringify(bias)).toBe(status.INVALID_ARGUMENT);
      expect(error?.reason).toBe('bad_logit_bias');
      expect(error?.message).toMatch(/logit_bias/);
    }
    const many = Object.fromEntries(Array.from({ length: MAX_LOGIT_BIAS + 1 }, (_, i) => [i, 1]));
    expect((await failure(() => engineLogitBias(many, 10_000)))?.message).toMatch(/entries/);
    expect(LOGIT_BIAS_LIMIT).toBe(100);
  });

  it('survives the wire: a map<uint32, float> in decoder.proto', () => {
    const request = GenerateRequest.fromPartial({
      promptTokenIds: [1],
      logitBias: { 5: -100, 9: 2.5 },
      responseFormat: schemaFormat({ type: 'object' }),
    });
    const decoded = GenerateRequest.decode(GenerateRequest.encode(request).finish());
    expect(decoded.logitBias).toEqual({ 5: -100, 9: 2.5 });
    expect(decoded.responseFormat?.format).toEqual({
      $case: 'jsonSchema',
      value: '{"type":"object"}',
    });
    const object = GenerateRequest.decode(
      GenerateRequest.encode(
        GenerateRequest.fromPartial({
          responseFormat: { format: { $case: 'jsonObject', value: {} } },
        }),
      ).finish(),
    );
    expect(object.responseFormat?.format?.$case).toBe('jsonObject');
    expect(
      GenerateRequest.decode(GenerateRequest.encode(GenerateRequest.fromPartial({})).finish())
        .responseFormat,
    ).toBeUndefined();
  });
});

describe('response_format', () => {
  it('json_object, json_schema (canonical: no whitespace, key order kept), or nothing', () => {
    expect(engineResponseFormat(undefined)).toBeUndefined();
    expect(engineResponseFormat({ format: undefined })).toBeUndefined();
    expect(engineResponseFormat({ format: { $case: 'jsonObject', value: {} } })).toEqual({
      kind: 'json_object',
    });
    const text =
      '{ "type": "object",\n "properties": { "b": {"type": "string"}, "a": {"type": "integer"} } }';
    expect(engineResponseFormat(schemaFormat(text))).toEqual({
      kind: 'json_schema',
      schema: '{"type":"object","properties":{"b":{"type":"string"},"a":{"type":"integer"}}}',
    });
  });

  it('refuses a schema outside the subset with INVALID_ARGUMENT naming the keyword and its path', async () => {
    const cases: Array<[unknown, RegExp]> = [
      [
        { type: 'object', properties: { date: { type: 'string', format: 'ipv5' } } },
        /`response_format\.json_schema\.properties\.date\.format`: format "ipv5"/,
      ],
      ['{"type": ', /not valid JSON/],
      [{ oneOf: [] }, /`response_format\.json_schema\.oneOf`/],
    ];
    for (const [schema, message] of cases) {
      const error = await failure(() => engineResponseFormat(schemaFormat(schema)));
      expect(error?.code).toBe(status.INVALID_ARGUMENT);
      expect(error?.reason).toBe('bad_response_format');
      expect(error?.message).toMatch(message);
    }
  });
});
