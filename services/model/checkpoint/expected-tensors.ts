// Every tensor an Idefics2ForConditionalGeneration checkpoint stores, with its shape, from
// the config (docs/model.md §9). Linear weights are [out, in].
import type { Idefics2Config } from '../config/index.js';

export function expectedTensors(config: Idefics2Config): Map<string, number[]> {
  const { vision: v, perceiver: p, text: t } = config;
  const out = new Map<string, number[]>();
  const add = (name: string, shape: number[]) => out.set(name, shape);

  const vm = 'model.vision_model.';
  add(`${vm}embeddings.patch_embedding.weight`, [
    v.hiddenSize,
    v.numChannels,
    v.patchSize,
    v.patchSize,
  ]);
  add(`${vm}embeddings.patch_embedding.bias`, [v.hiddenSize]);
  add(`${vm}embeddings.position_embedding.weight`, [v.numPatchesPerSide ** 2, v.hiddenSize]);
  for (let l = 0; l < v.numHiddenLayers; l++) {
    const layer = `${vm}encoder.layers.${l}.`;
    for (const proj of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) {
      add(`${layer}self_attn.${proj}.weight`, [v.hiddenSize, v.hiddenSize]);
      add(`${layer}self_attn.${proj}.bias`, [v.hiddenSize]);
    }
    for (const norm of ['layer_norm1', 'layer_norm2']) {
      add(`${layer}${norm}.weight`, [v.hiddenSize]);
      add(`${layer}${norm}.bias`, [v.hiddenSize]);
    }
    add(`${layer}mlp.fc1.weight`, [v.intermediateSize, v.hiddenSize]);
    add(`${layer}mlp.fc1.bias`, [v.intermediateSize]);
    add(`${layer}mlp.fc2.weight`, [v.hiddenSize, v.intermediateSize]);
    add(`${layer}mlp.fc2.bias`, [v.hiddenSize]);
  }
  add(`${vm}post_layernorm.weight`, [v.hiddenSize]);
  add(`${vm}post_layernorm.bias`, [v.hiddenSize]);

  // The modality projection maps vision width to text width through the text MLP width.
  const c = 'model.connector.';
  add(`${c}modality_projection.gate_proj.weight`, [t.intermediateSize, v.hiddenSize]);
  add(`${c}modality_projection.up_proj.weight`, [t.intermediateSize, v.hiddenSize]);
  add(`${c}modality_projection.down_proj.weight`, [t.hiddenSize, t.intermediateSize]);
  const pr = `${c}perceiver_resampler.`;
  add(`${pr}latents`, [p.nLatents, p.hiddenSize]);
  for (let l = 0; l < p.depth; l++) {
    const layer = `${pr}layers.${l}.`;
    add(`${layer}input_latents_norm.weight`, [p.hiddenSize]);
    add(`${layer}input_context_norm.weight`, [p.hiddenSize]);
    add(`${layer}self_attn.q_proj.weight`, [p.nHeads * p.headDim, p.hiddenSize]);
    add(`${layer}self_attn.k_proj.weight`, [p.numKeyValueHeads * p.headDim, p.hiddenSize]);
    add(`${layer}self_attn.v_proj.weight`, [p.numKeyValueHeads * p.headDim, p.hiddenSize]);
    add(`${layer}self_attn.o_proj.weight`, [p.hiddenSize, p.nHeads * p.headDim]);
    add(`${layer}post_attention_layernorm.weight`, [p.hiddenSize]);
    add(`${layer}mlp.gate_proj.weight`, [p.intermediateSize, p.hiddenSize]);
    add(`${layer}mlp.up_proj.weight`, [p.intermediateSize, p.hiddenSize]);
    add(`${layer}mlp.down_proj.weight`, [p.hiddenSize, p.intermediateSize]);
  }
  add(`${pr}norm.weight`, [p.hiddenSize]);

  const tm = 'model.text_model.';
  add(`${tm}embed_tokens.weight`, [t.vocabSize, t.hiddenSize]);
  for (let l = 0; l < t.numHiddenLayers; l++) {
    const layer = `${tm}layers.${l}.`;
    add(`${layer}self_attn.q_proj.weight`, [t.numAttentionHeads * t.headDim, t.hiddenSize]);
    add(`${layer}self_attn.k_proj.weight`, [t.numKeyValueHeads * t.headDim, t.hiddenSize]);
    add(`${layer}self_attn.v_proj.weight`, [t.numKeyValueHeads * t.headDim, t.hiddenSize]);
    add(`${layer}self_attn.o_proj.weight`, [t.hiddenSize, t.numAttentionHeads * t.headDim]);
    add(`${layer}mlp.gate_proj.weight`, [t.intermediateSize, t.hiddenSize]);
    add(`${layer}mlp.up_proj.weight`, [t.intermediateSize, t.hiddenSize]);
    add(`${layer}mlp.down_proj.weight`, [t.hiddenSize, t.intermediateSize]);
    add(`${layer}input_layernorm.weight`, [t.hiddenSize]);
    add(`${layer}post_attention_layernorm.weight`, [t.hiddenSize]);
  }
  add(`${tm}norm.weight`, [t.hiddenSize]);
  // A tied lm_head reuses embed_tokens and is not stored.
  if (!(config.tieWordEmbeddings || t.tieWordEmbeddings))
    add('lm_head.weight', [t.vocabSize, t.hiddenSize]);
  return out;
}
