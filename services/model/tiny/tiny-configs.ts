// The sizes of Loupe's random checkpoints. `tiny` keeps tests fast; `small` is for benchmarks.
// Both read real images: patch 14 and a 980-pixel position table, like idefics2-8b, and 64
// image tokens per sub-image.

export type TinySize = 'tiny' | 'small';

interface Sizes {
  vision: { hidden: number; layers: number; heads: number; intermediate: number };
  perceiver: { depth: number; heads: number; kvHeads: number; headDim: number };
  text: { hidden: number; layers: number; heads: number; kvHeads: number; intermediate: number };
}

const SIZES: Record<TinySize, Sizes> = {
  tiny: {
    vision: { hidden: 32, layers: 2, heads: 4, intermediate: 64 },
    perceiver: { depth: 2, heads: 4, kvHeads: 2, headDim: 8 },
    text: { hidden: 64, layers: 2, heads: 4, kvHeads: 2, intermediate: 128 },
  },
  small: {
    vision: { hidden: 384, layers: 6, heads: 6, intermediate: 1536 },
    perceiver: { depth: 3, heads: 8, kvHeads: 2, headDim: 64 },
    text: { hidden: 512, layers: 8, heads: 8, kvHeads: 2, intermediate: 1536 },
  },
};

/** config.json for a random checkpoint whose tokenizer has `vocabSize` entries. */
export function tinyModelConfig(
  size: TinySize,
  { vocabSize, imageTokenId }: { vocabSize: number; imageTokenId: number },
) {
  const s = SIZES[size];
  return {
    architectures: ['Idefics2ForConditionalGeneration'],
    model_type: 'idefics2',
    image_token_id: imageTokenId,
    tie_word_embeddings: false,
    use_cache: true,
    torch_dtype: 'float32',
    vision_config: {
      model_type: 'idefics2_vision',
      hidden_size: s.vision.hidden,
      intermediate_size: s.vision.intermediate,
      num_hidden_layers: s.vision.layers,
      num_attention_heads: s.vision.heads,
      num_channels: 3,
      image_size: 980,
      patch_size: 14,
      hidden_act: 'gelu_pytorch_tanh',
      layer_norm_eps: 1e-6,
    },
    perceiver_config: {
      model_type: 'idefics2_perceiver',
      hidden_act: 'silu',
      hidden_size: s.text.hidden,
      rms_norm_eps: 1e-5,
      resampler_n_latents: 64,
      resampler_depth: s.perceiver.depth,
      resampler_n_heads: s.perceiver.heads,
      resampler_head_dim: s.perceiver.headDim,
      num_key_value_heads: s.perceiver.kvHeads,
    },
    text_config: {
      model_type: 'mistral',
      vocab_size: vocabSize,
      hidden_size: s.text.hidden,
      intermediate_size: s.text.intermediate,
      num_hidden_layers: s.text.layers,
      num_attention_heads: s.text.heads,
      num_key_value_heads: s.text.kvHeads,
      hidden_act: 'silu',
      max_position_embeddings: 4096,
      rms_norm_eps: 1e-5,
      rope_theta: 10000.0,
      sliding_window: 4096,
      tie_word_embeddings: false,
      bos_token_id: 1,
      eos_token_id: 2,
      pad_token_id: 0,
    },
  };
}
