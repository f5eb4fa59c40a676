// `loupe encode`: one image's embeddings (vision tower + connector), in-process.
import { writeSafetensors } from '../model/index.js';
import { parseCommandArgs, parseSplit, required } from './args.js';
import { encodeSubImages, loadImages, openModel } from './model-inputs.js';

export async function runEncode(args: string[]): Promise<number> {
  const { values } = parseCommandArgs(args, {
    model: { type: 'string' },
    image: { type: 'string' },
    split: { type: 'string' },
    out: { type: 'string' },
  });
  const dir = required(values.model, '--model');
  const image = required(values.image, '--image');
  const out = required(values.out, '--out');
  const { checkpoint, processor } = openModel(dir);
  const [loaded] = await loadImages([image], processor, parseSplit(values.split));
  const encoded = await encodeSubImages(checkpoint, loaded!.subImages);
  writeSafetensors(out, {
    image_hidden_states: { dtype: 'F32', shape: encoded.dims, data: encoded.data },
  });
  process.stdout.write(
    JSON.stringify({
      split: loaded!.split,
      sub_images: loaded!.subImages.map(({ height, width }) => ({ height, width })),
      image_hidden_states_shape: encoded.dims,
      out,
    }) + '\n',
  );
  return 0;
}
