// The floor ONNX Runtime's CPU kernels set under a decode step: the step's linear layers and
// LM head alone — the text model's q, k, v, o, gate, up and down projections of every layer
// and the head, at the checkpoint's shapes, in one bare graph with nothing else (no attention,
// norms, rotary, residuals, KV writes, sampling or engine) — timed at 1 and at 16 rows. No
// engine built on these kernels runs a step faster than this, so its FLOPs over this time is
// the highest arithmetic share a step can have on this machine, and 16 × (1-stream step) over
// this time the highest 16-vs-1 ratio the decode steps can reach (docs/decoder-engine.md,
// "Benchmark"). Each projection is timed in both layouts — the checkpoint's [out, in] with
// transB, as the engine's graph has it, and [in, out] — and the faster graph counts.
// Weights are uniform in ±√(3/in), so every activation stays near unit scale (denormals,
// which a chain of unnormalised random layers drifts into, would make the floor a slow path).
import type { Checkpoint } from '../../services/model/index.js';
import {
  attr,
  createSession,
  GraphBuilder,
  makeTensor,
  seededUniform,
} from '../../services/model/index.js';

const ITERATIONS = 60;
const WARM = 10;

/**
 * FLOPs (multiply-add = 2) of one token through the text model's linear projections: every
 * layer's q, k, v, o, gate, up and down (`layers`), and the LM head (`head`).
 */
export function linearFlops(text: Checkpoint['config']['text']): { layers: number; head: number } {
  const width = text.numAttentionHeads * text.headDim;
  const kvWidth = text.numKeyValueHeads * text.headDim;
  const perLayer =
    2 * text.hiddenSize * width +
    2 * text.hiddenSize * kvWidth +
    3 * text.hiddenSize * text.intermediateSize;
  return {
    layers: 2 * text.numHiddenLayers * perLayer,
    head: 2 * text.vocabSize * text.hiddenSize,
  };
}

export interface LinearFloor {
  /** Median ms of a run at 1 row and at 16 rows, of the faster layout. */
  oneRowMs: number;
  sixteenRowsMs: number;
  /** FLOPs of one row (multiply-add = 2). */
  rowFlops: number;
  /** The faster layout at 16 rows. */
  layout: 'transB' | 'plain';
}

function floorGraph(text: Checkpoint['config']['text'], layout: 'transB' | 'plain'): Uint8Array {
  const next = seededUniform(5);
  const g = new GraphBuilder({ name: `linear_floor_${layout}` });
  const width = text.numAttentionHeads * text.headDim;
  const kvWidth = text.numKeyValueHeads * text.headDim;
  const linear = (x: string, inputs: number, outputs: number) => {
    const bound = Math.sqrt(3 / inputs);
    const weights = Float32Array.from({ length: inputs * outputs }, () => (2 * next() - 1) * bound);
    const w = g.initializer(
      g.uniqueName('w'),
      'float32',
      layout === 'transB' ? [outputs, inputs] : [inputs, outputs],
      weights,
    );
    return layout === 'transB'
      ? g.node1({
          opType: 'FusedMatMul',
          domain: 'com.microsoft',
          inputs: [x, w],
          attributes: { transB: attr.int(1) },
        })
      : g.node1({ opType: 'MatMul', inputs: [x, w] });
  };
  let h = g.input('x', 'float32', ['rows', text.hiddenSize]);
  const side: string[] = [];
  for (let l = 0; l < text.numHiddenLayers; l++) {
    const q = linear(h, text.hiddenSize, width);
    side.push(linear(h, text.hiddenSize, kvWidth), linear(h, text.hiddenSize, kvWidth));
    const o = linear(q, width, text.hiddenSize);
    const product = g.node1({
      opType: 'Mul',
      inputs: [
        linear(o, text.hiddenSize, text.intermediateSize),
        linear(o, text.hiddenSize, text.intermediateSize),
      ],
    });
    h = linear(product, text.intermediateSize, text.hiddenSize);
  }
  g.output(
    g.node1({
      opType: 'Identity',
      inputs: [linear(h, text.hiddenSize, text.vocabSize)],
      output: 'logits',
    }),
    'float32',
    ['rows', text.vocabSize],
  );
  // The k and v projections lead nowhere here; as outputs they are not pruned.
  side.forEach((x, i) =>
    g.output(g.node1({ opType: 'Identity', inputs: [x], output: `kv_${i}` }), 'float32', [
      'rows',
      kvWidth,
    ]),
  );
  return g.toBytes();
}

async function medianMs(
  session: Awaited<ReturnType<typeof createSession>>,
  rows: number,
  hidden: number,
): Promise<number> {
  const next = seededUniform(rows);
  const x = makeTensor(
    'float32',
    Float32Array.from({ length: rows * hidden }, () => 2 * next() - 1),
    [rows, hidden],
  );
  for (let i = 0; i < WARM; i++) await session.run({ x });
  const times: number[] = [];
  for (let i = 0; i < ITERATIONS; i++) {
    const started = performance.now();
    await session.run({ x });
    times.push(performance.now() - started);
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]!;
}

export async function linearFloor(checkpoint: Checkpoint, threads: number): Promise<LinearFloor> {
  const text = checkpoint.config.text;
  const flops = linearFlops(text);
  const rowFlops = flops.layers + flops.head;
  let best: LinearFloor | undefined;
  for (const layout of ['transB', 'plain'] as const) {
    const session = await createSession(
      { name: `linear floor (${layout})`, bytes: floorGraph(text, layout), externalDataDir: '.' },
      { intraOpThreads: threads },
    );
    try {
      const sixteenRowsMs = await medianMs(session, 16, text.hiddenSize);
      const oneRowMs = await medianMs(session, 1, text.hiddenSize);
      if (!best || sixteenRowsMs < best.sixteenRowsMs)
        best = { oneRowMs, sixteenRowsMs, rowFlops, layout };
    } finally {
      await session.release();
    }
  }
  return best!;
}
