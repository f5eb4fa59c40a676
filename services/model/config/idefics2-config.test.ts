// Resolution of config.json against what the reference makes of the same dicts
// (test/fixtures/config/resolved.json, made by test/fixtures/make_config_fixtures.py).
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { ConfigFileError, parseIdefics2Config, type Idefics2Config } from './idefics2-config.js';

interface Resolved {
  image_token_id: number;
  tie_word_embeddings: boolean;
  vision: Record<string, unknown>;
  perceiver: Record<string, unknown>;
  text: Record<string, unknown>;
}
const fixtures = JSON.parse(
  readFileSync(new URL('../../../test/fixtures/config/resolved.json', import.meta.url), 'utf8'),
) as { cases: Record<string, { config: unknown; resolved: Resolved }> };

/** Loupe's config in the reference's names, for comparison. */
function asReference(c: Idefics2Config): Resolved {
  return {
    image_token_id: c.imageTokenId,
    tie_word_embeddings: c.tieWordEmbeddings,
    vision: {
      hidden_size: c.vision.hiddenSize,
      intermediate_size: c.vision.intermediateSize,
      num_hidden_layers: c.vision.numHiddenLayers,
      num_attention_heads: c.vision.numAttentionHeads,
      num_channels: c.vision.numChannels,
      image_size: c.vision.imageSize,
      patch_size: c.vision.patchSize,
      hidden_act: c.vision.hiddenAct,
      layer_norm_eps: c.vision.layerNormEps,
    },
    perceiver: {
      hidden_act: c.perceiver.hiddenAct,
      hidden_size: c.perceiver.hiddenSize,
      rms_norm_eps: c.perceiver.rmsNormEps,
      resampler_n_latents: c.perceiver.nLatents,
      resampler_depth: c.perceiver.depth,
      resampler_n_heads: c.perceiver.nHeads,
      resampler_head_dim: c.perceiver.headDim,
      num_key_value_heads: c.perceiver.numKeyValueHeads,
    },
    text: {
      vocab_size: c.text.vocabSize,
      hidden_size: c.text.hiddenSize,
      intermediate_size: c.text.intermediateSize,
      num_hidden_layers: c.text.numHiddenLayers,
      num_attention_heads: c.text.numAttentionHeads,
      num_key_value_heads: c.text.numKeyValueHeads,
      hidden_act: c.text.hiddenAct,
      max_position_embeddings: c.text.maxPositionEmbeddings,
      rms_norm_eps: c.text.rmsNormEps,
      rope_theta: c.text.ropeTheta,
      sliding_window: c.text.slidingWindow,
      tie_word_embeddings: c.text.tieWordEmbeddings,
      bos_token_id: c.text.bosTokenId,
      eos_token_id: c.text.eosTokenId,
      pad_token_id: c.text.padTokenId,
    },
  };
}

describe('parseIdefics2Config', () => {
  it.each(Object.entries(fixtures.cases))(
    'resolves %s as the reference does',
    (_name, { config, resolved }) => {
      const ours = parseIdefics2Config(config);
      const { head_dim: headDim, ...text } = resolved.text;
      expect(asReference(ours)).toEqual({ ...resolved, text });
      expect(ours.text.headDim).toBe(
        (headDim as number | null) ?? ours.text.hiddenSize / ours.text.numAttentionHeads,
      );
    },
  );

  it('derives the shapes the graphs need (idefics2-8b)', () => {
    const c = parseIdefics2Config(fixtures.cases['idefics2-8b']!.config);
    expect(c.vision.headDim).toBe(72);
    expect(c.vision.numPatchesPerSide).toBe(70);
    expect(c.perceiver.intermediateSize).toBe(16384);
    expect(c.text.headDim).toBe(128);
  });

  it.each([
    [
      { text_config: { hidden_size: 'big' } },
      /config\.json: `text_config\.hidden_size` must be an integer >= 1, got "big"/,
    ],
    [
      { vision_config: { hidden_act: 'relu' } },
      /`vision_config\.hidden_act` must be one of "gelu_pytorch_tanh", got "relu"/,
    ],
    [
      { text_config: { num_attention_heads: 32, num_key_value_heads: 5 } },
      /num_attention_heads` 32 is not divisible by `num_key_value_heads` 5/,
    ],
    [{ model_type: 'llava' }, /`model_type` must be one of "idefics2", got "llava"/],
    [{ perceiver_config: [] }, /`perceiver_config` must be an object/],
  ])('refuses %j naming the key and the value', (raw, message) => {
    expect(() => parseIdefics2Config(raw)).toThrow(ConfigFileError);
    expect(() => parseIdefics2Config(raw)).toThrow(message);
  });
});
