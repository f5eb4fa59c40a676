// Checks a Generate request's `logit_bias` and `response_format` (decoder.proto) and turns them
// into what the engine needs, with INVALID_ARGUMENT naming the field otherwise (reasons
// `bad_logit_bias` and `bad_response_format`), as request-validation.ts does for the other
// fields. Runs on the gRPC thread; the engine thread compiles the format for its vocabulary
// (constraint.ts). See docs/structured-output.md.
import type { GenerateRequest } from '../../../proto/gen/loupe/v1/decoder.js';
import { invalidArgument } from '../../runtime/index.js';
import type { ResponseFormatSpec } from './constraint.js';
import { checkSchema, parseSchemaText, SchemaError } from './schema-subset.js';

/** Where a schema's errors point (the field of decoder.proto). */
const FIELD = 'response_format.json_schema';

/** Most `logit_bias` entries a request may have. */
export const MAX_LOGIT_BIAS = 1024;
/** OpenAI's range for a bias. */
export const LOGIT_BIAS_LIMIT = 100;

/** `logit_bias` for the engine: ids ascending, each with its bias (added to its logit). */
export interface EngineLogitBias {
  ids: number[];
  bias: number[];
}

/** `logit_bias` checked: ids in the vocabulary, values finite in [-100, 100]. */
export function engineLogitBias(
  logitBias: GenerateRequest['logitBias'] | undefined,
  vocabSize: number,
): EngineLogitBias | undefined {
  const entries = Object.entries(logitBias ?? {});
  if (entries.length === 0) return undefined;
  if (entries.length > MAX_LOGIT_BIAS) {
    throw invalidArgument(
      `\`logit_bias\` has ${entries.length} entries; at most ${MAX_LOGIT_BIAS}`,
      'bad_logit_bias',
    );
  }
  const pairs = entries.map(([key, value]) => {
    const id = Number(key);
    if (!Number.isInteger(id) || id < 0 || id >= vocabSize) {
      throw invalidArgument(
        `\`logit_bias\` names token ${key}, outside the vocabulary of ${vocabSize}`,
        'bad_logit_bias',
      );
    }
    if (!Number.isFinite(value) || Math.abs(value) > LOGIT_BIAS_LIMIT) {
      throw invalidArgument(
        `\`logit_bias[${id}]\` must be in [-${LOGIT_BIAS_LIMIT}, ${LOGIT_BIAS_LIMIT}], got ${value}`,
        'bad_logit_bias',
      );
    }
    return [id, value] as const;
  });
  pairs.sort((a, b) => a[0] - b[0]);
  return { ids: pairs.map((p) => p[0]), bias: pairs.map((p) => p[1]) };
}

/**
 * `response_format` checked against the subset (schema-subset.ts), its schema re-serialized
 * without whitespace (key order kept: properties are written in schema order). Synchronous
 * and without xgrammar; engineFormat also checks that the grammar converts.
 */
export function engineResponseFormat(
  format: GenerateRequest['responseFormat'] | undefined,
): ResponseFormatSpec | undefined {
  const f = format?.format;
  if (f === undefined) return undefined;
  if (f.$case === 'jsonObject') return { kind: 'json_object' };
  try {
    const schema = parseSchemaText(f.value, FIELD);
    checkSchema(schema, FIELD);
    return { kind: 'json_schema', schema: JSON.stringify(schema) };
  } catch (error) {
    if (error instanceof SchemaError) throw invalidArgument(error.message, 'bad_response_format');
    throw error;
  }
}

/** Schemas whose grammar converted lately (their canonical text), least recent first. */
