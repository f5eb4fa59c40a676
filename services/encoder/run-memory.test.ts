// The run memory estimate: its shape rules, its stages by hand, and against the resident memory
// real runs add (tiny checkpoints on ONNX Runtime, each measured in a child process of its own).
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../../test/helpers/service-process.js';
import { writeTinyCheckpoint } from '../../test/helpers/tiny-checkpoint.js';
import {
  openCheckpoint,
  parseIdefics2Config,
  tinyModelConfig,
  writeTinyModel,
} from '../model/index.js';
import {
  estimateRun,
  estimateRunBytes,
  FIXED_BYTES,
  largestRunBytes,
  runMemoryModel,
  runShape,
  SLACK,
  type RunMemoryModel,
  type Size,
} from './run-memory.js';

const MiB = 2 ** 20;
const sizes = (...list: Array<[number, number]>): Size[] =>
  list.map(([height, width]) => ({ height, width }));

const fixtures = JSON.parse(
  readFileSync(join(repoRoot, 'test', 'fixtures', 'config', 'resolved.json'), 'utf8'),
) as { cases: Record<string, { config: unknown }> };
const idefics2 = runMemoryModel(parseIdefics2Config(fixtures.cases['idefics2-8b']!.config));
const tiny = runMemoryModel(
  parseIdefics2Config(tinyModelConfig('tiny', { vocabSize: 256, imageTokenId: 255 })),
);

describe('runShape', () => {
  it('pads to the largest sides, and is padded when some sub-image leaves canvas patches empty', () => {
    expect(runShape(sizes([980, 980]), 14)).toEqual({
      count: 1,
      height: 980,
      width: 980,
      padded: false,
    });
    expect(runShape(sizes([980, 980], [980, 980]), 14).padded).toBe(false);
    expect(runShape(sizes([980, 980], [980, 653]), 14)).toEqual({
      count: 2,
      height: 980,
      width: 980,
      padded: true,
    });
    // 41 rows hold 2 whole patches, the 43-row canvas 3: padded. 42 and 43 rows both hold 3.
    expect(runShape(sizes([43, 42], [41, 42]), 14).padded).toBe(true);
    expect(runShape(sizes([43, 42], [42, 42]), 14).padded).toBe(false);
  });
});

describe('estimateRun', () => {
  it('adds up the stages as run-memory.ts documents them (tiny model, one 980×980)', () => {
    const { bytes, stages } = estimateRun(tiny, runShape(sizes([980, 980]), 14));
    const values = 3 * 980 * 980;
    const tokens = 70 * 70;
    expect(stages.inputs).toBe(values + 9 * tokens + 8 * 64 * 64);
    expect(stages.pixels).toBe(16 * values);
    expect(stages.tower).toBe(4 * tokens * 10 * 32); // unpadded: the flash kernel, no scores
    expect(stages.mlp).toBe(4 * tokens * (2 * 64 + 2 * 32));
    expect(stages.connector).toBe(4 * tokens * (3 * 128 + 2 * 32));
    expect(stages.perceiver).toBe(
      4 * tokens * 4 * 64 + 4 * (tokens + 64) * (64 + 4 * 2 * 8) + 2 * 4 * 4 * 64 * (tokens + 64),
    );
    const peak = Math.max(stages.tower, stages.mlp, stages.connector, stages.perceiver);
    expect(bytes).toBe(Math.ceil(SLACK * (stages.inputs + stages.pixels + peak)) + FIXED_BYTES);
  });

  it('charges a padded batch the [n, heads, P, P] float32 scores of the masked attention', () => {
    const even = estimateRun(idefics2, runShape(sizes([980, 980], [980, 980]), 14));
    const padded = estimateRun(idefics2, runShape(sizes([980, 980], [980, 653]), 14));
    expect(padded.stages.tower - even.stages.tower).toBe(4 * 2 * 16 * 4900 ** 2);
    // About 1.4 GiB of scores per 980×980 sub-image on idefics2-8b (vision-graph.ts).
    expect((padded.stages.tower - even.stages.tower) / 2 / 2 ** 30).toBeCloseTo(1.43, 2);
    expect(padded.bytes).toBeGreaterThan(even.bytes);
  });

  it('grows linearly with unpadded sub-images and quadratically with padded patches', () => {
    const one = estimateRunBytes(idefics2, sizes([980, 980])) - FIXED_BYTES;
    const four = estimateRunBytes(idefics2, sizes(...Array(4).fill([980, 980]))) - FIXED_BYTES;
    expect(four / one).toBeCloseTo(4, 1);
    const tower = (...list: Array<[number, number]>) =>
      estimateRun(idefics2, runShape(sizes(...list), 14)).stages.tower;
    const scores = (side: number) =>
      tower([side, side], [side - 14, side]) - tower([side, side], [side, side]);
    // Twice the side: 4× the patches, 16× the scores.
    expect(scores(980) / scores(490)).toBe(16);
  });

  it('puts one idefics2-8b 980×980 sub-image near 1 GiB, most of it the connector', () => {
    const { bytes, stages } = estimateRun(idefics2, runShape(sizes([980, 980]), 14));
    expect(bytes / 2 ** 30).toBeGreaterThan(0.9);
    expect(bytes / 2 ** 30).toBeLessThan(1.2);
    expect(Math.max(stages.tower, stages.mlp, stages.perceiver)).toBeLessThan(stages.connector);
    expect(largestRunBytes(idefics2, 980)).toBe(bytes);
  });

  it('is 0 for no sub-images, and never falls when a sub-image grows', () => {
    expect(estimateRunBytes(tiny, [])).toBe(0);
    let last = 0;
    for (let side = 14; side <= 980; side += 14) {
      const bytes = estimateRunBytes(tiny, sizes([side, side]));
      expect(bytes).toBeGreaterThanOrEqual(last);
      last = bytes;
    }
  });
});

// Against reality: a child process loads the checkpoint, runs one small warm-up batch, resets
// its peak resident memory (VmHWM, clear_refs 5), runs the batch and reports how far the peak
// rose above the resident memory before it. The estimate must be above that, and within 3×.
const PROBE = `
import { readFileSync, writeFileSync } from 'node:fs';
const [modelUrl, dir, spec] = process.argv.slice(1);
const M = await import(modelUrl);
const field = (name) =>
  Number(new RegExp('^' + name + ':\\\\s+(\\\\d+) kB', 'm').exec(readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;
const checkpoint = M.openCheckpoint(dir);
const session = await M.createSession(M.buildVisionGraph(checkpoint), { intraOpThreads: 1 });
const subImage = ({ height, width }) => ({ height, width, pixels: new Uint8Array(3 * height * width).fill(77) });
await M.encodeImages(session, [subImage({ height: 14, width: 14 })], checkpoint.config.vision);
const batch = JSON.parse(spec).map(subImage);
const before = field('VmRSS');
writeFileSync('/proc/self/clear_refs', '5');
await M.encodeImages(session, batch, checkpoint.config.vision);
process.stdout.write(JSON.stringify({ growth: field('VmHWM') - before }));
`;

async function measuredGrowth(dir: string, batch: Size[]): Promise<number> {
  const modelUrl = new URL('../../dist/services/model/index.js', import.meta.url).href;
  const { stdout } = await promisify(execFile)(
    process.execPath,
    ['--input-type=module', '-e', PROBE, modelUrl, dir, JSON.stringify(batch)],
    { timeout: 60_000 },
  );
  return (JSON.parse(stdout) as { growth: number }).growth;
}

describe('the estimate against measured runs', () => {
  const work = mkdtempSync(join(tmpdir(), 'loupe-run-memory-'));
  const tinyDir = join(work, 'tiny');
  let wideDir: string;
  beforeAll(() => {
    writeTinyModel({ out: tinyDir, seed: 0 });
    // Wider than tiny where the linear stages live: the vision MLP, the connector's SwiGLU
    // (text intermediate 1024), the perceiver.
    const config = tinyModelConfig('tiny', { vocabSize: 256, imageTokenId: 255 });
    Object.assign(config.vision_config, {
      hidden_size: 192,
      intermediate_size: 768,
      num_hidden_layers: 1,
      num_attention_heads: 3,
    });
    Object.assign(config.perceiver_config, {
      hidden_size: 128,
      resampler_depth: 1,
      resampler_n_heads: 4,
      resampler_head_dim: 32,
      num_key_value_heads: 2,
    });
    Object.assign(config.text_config, {
      hidden_size: 128,
      intermediate_size: 1024,
      num_hidden_layers: 1,
      num_attention_heads: 4,
      num_key_value_heads: 2,
    });
    wideDir = writeTinyCheckpoint(config);
  });
  afterAll(() => {
    rmSync(work, { recursive: true, force: true });
    if (wideDir) rmSync(wideDir, { recursive: true, force: true });
  });

  it('is above the resident memory a run adds, and within 3× of it', async () => {
    const cases: Array<[string, () => string, Size[]]> = [
      // Unpadded (flash attention): the pixel normalization's int64 tensors dominate.
      ['tiny, one 980×980', () => tinyDir, sizes([980, 980])],
      // Padded: the [2, 4, 2500, 2500] attention scores dominate.
      ['tiny, 700×700 + 700×690', () => tinyDir, sizes([700, 700], [700, 690])],
      // Unpadded, the connector's [4900, 1024] SwiGLU tensors dominate.
      ['wide, one 980×980', () => wideDir, sizes([980, 980])],
      ['wide, 490×490 + 490×480', () => wideDir, sizes([490, 490], [490, 480])],
    ];
    const results = [];
    for (const [name, dir, batch] of cases) {
      const model: RunMemoryModel = runMemoryModel(openCheckpoint(dir()).config);
      const estimate = estimateRunBytes(model, batch);
      const measured = await measuredGrowth(dir(), batch);
      results.push({ name, measuredMiB: measured / MiB, estimateMiB: estimate / MiB });
    }
    console.log(
      results
        .map(
          (r) =>
            `${r.name}: measured ${r.measuredMiB.toFixed(1)} MiB, estimate ${r.estimateMiB.toFixed(1)} MiB (${(r.estimateMiB / r.measuredMiB).toFixed(2)}×)`,
        )
        .join('\n'),
    );
    for (const r of results) {
      expect(r.estimateMiB, r.name).toBeGreaterThan(r.measuredMiB);
      expect(r.estimateMiB, r.name).toBeLessThan(3 * r.measuredMiB);
    }
  }, 60_000);
});
