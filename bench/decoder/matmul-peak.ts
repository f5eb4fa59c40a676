// The machine's arithmetic rate as ONNX Runtime reaches it: the best GFLOP/s of a MatMul with
// a constant (prepacked) right side, over bench:model's three shapes (a large square-ish one
// and the text and vision models' own), best of 10 runs each — what bench:model calls the
// MatMul peak, measured again here so that bench:decoder's "arithmetic share" divides by a
// rate of the same machine, same threads, same minute.
import { join } from 'node:path';
import { createSession, GraphBuilder, makeTensor } from '../../services/model/index.js';

const SHAPES: ReadonlyArray<readonly [number, number, number]> = [
  [512, 2048, 2048],
  [512, 512, 1536],
  [1024, 384, 1536],
];
const ITERATIONS = 10;

export interface MatMulPeak {
  gflops: number;
  /** The shape that reached it, and every shape's GFLOP/s. */
  shape: string;
  all: string;
}

async function gflops(
  dir: string,
  threads: number,
  [m, k, n]: readonly [number, number, number],
): Promise<number> {
  const g = new GraphBuilder({ name: 'matmul_peak' });
  const a = g.input('a', 'float32', [m, k]);
  const weights = Float32Array.from({ length: k * n }, (_, i) => ((i % 97) - 48) / 1000);
  const b = g.initializer('b', 'float32', [k, n], weights);
  g.output(g.node1({ opType: 'MatMul', inputs: [a, b], output: 'y' }), 'float32', [m, n]);
  const path = join(dir, `matmul-${m}x${k}x${n}.onnx`);
  g.writeModel(path);
  const session = await createSession(path, { intraOpThreads: threads });
  try {
    const input = makeTensor(
      'float32',
      Float32Array.from({ length: m * k }, (_, i) => ((i % 89) - 44) / 1000),
      [m, k],
    );
    await session.run({ a: input });
    let best = Infinity;
    for (let i = 0; i < ITERATIONS; i++) {
      const started = performance.now();
      await session.run({ a: input });
      best = Math.min(best, performance.now() - started);
    }
    return (2 * m * k * n) / (best * 1e6);
  } finally {
    await session.release();
  }
}

/** Writes its small models into `dir`. */
export async function matmulPeak(dir: string, threads: number): Promise<MatMulPeak> {
  let peak = { gflops: 0, shape: '' };
  const all: string[] = [];
  for (const shape of SHAPES) {
    const rate = await gflops(dir, threads, shape);
    const name = `[${shape[0]},${shape[1]}]×[${shape[1]},${shape[2]}]`;
    all.push(`${name} ${rate.toFixed(0)}`);
    if (rate > peak.gflops) peak = { gflops: rate, shape: name };
  }
  return { ...peak, all: all.join(', ') };
}
