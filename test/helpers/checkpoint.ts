// Writes the processor side of an Idefics2 checkpoint directory (what the preprocessor reads).
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  DEFAULT_IMAGE_PROCESSOR_CONFIG,
  processorConfigFiles,
} from '../../services/model/index.js';

export function writeProcessorConfigs({
  split = true,
  imageSeqLen = 64,
}: { split?: boolean; imageSeqLen?: number } = {}): string {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-ckpt-'));
  const files = processorConfigFiles({
    ...DEFAULT_IMAGE_PROCESSOR_CONFIG,
    doImageSplitting: split,
    imageSeqLen,
  });
  for (const [name, value] of Object.entries(files))
    writeFileSync(join(dir, name), JSON.stringify(value));
  return dir;
}
