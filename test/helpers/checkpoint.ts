// Writes the processor side of an Idefics2 checkpoint directory (what the preprocessor reads).
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export function writeProcessorConfigs({
  split = true,
  imageSeqLen = 64,
}: { split?: boolean; imageSeqLen?: number } = {}): string {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-ckpt-'));
  writeFileSync(
    join(dir, 'preprocessor_config.json'),
    JSON.stringify({
      do_convert_rgb: true,
      do_image_splitting: split,
      do_normalize: true,
      do_pad: true,
      do_rescale: true,
      do_resize: true,
      image_mean: [0.5, 0.5, 0.5],
      image_processor_type: 'Idefics2ImageProcessor',
      image_std: [0.5, 0.5, 0.5],
      processor_class: 'Idefics2Processor',
      resample: 2,
      rescale_factor: 0.00392156862745098,
      size: { longest_edge: 980, shortest_edge: 378 },
    }),
  );
  writeFileSync(
    join(dir, 'processor_config.json'),
    JSON.stringify({ image_seq_len: imageSeqLen, processor_class: 'Idefics2Processor' }),
  );
  return dir;
}
