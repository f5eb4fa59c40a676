import { describe, expect, it } from 'vitest';
import {
  AttributeProto_AttributeType,
  ModelProto,
  TensorProto_DataLocation,
  TensorProto_DataType,
} from '../../../proto/gen/onnx/onnx.js';
import { float, floats, int, ints, str, tensor } from './attribute.js';
import { GraphBuilder } from './graph-builder.js';
import { inlineTensor } from './tensor-proto.js';

describe('GraphBuilder', () => {
  it('serializes inputs, outputs, initializers, nodes and opsets', () => {
    const g = new GraphBuilder({ name: 'g', opsets: { '': 20 } });
    const x = g.input('x', 'float32', ['batch', 4]);
    const w = g.externalInitializer('w', 'float16', [3, 4], {
      location: 'model.safetensors',
      offset: 136,
      length: 24,
    });
    const b = g.initializer('b', 'float32', [3], new Float32Array([1, 2, 3]));
    const wf = g.node1({ opType: 'Cast', inputs: [w], attributes: { to: int(1) } });
    const y = g.node1({
      opType: 'FusedMatMul',
      domain: 'com.microsoft',
      inputs: [x, wf],
      attributes: { transB: int(1), alpha: float(1) },
    });
    g.node1({ opType: 'Add', inputs: [y, b], output: 'y' });
    g.output('y', 'float32', ['batch', 3]);

    const model = ModelProto.decode(g.toBytes());
    expect(model.irVersion).toBe(10);
    expect(model.opsetImport.map((o) => [o.domain, o.version])).toEqual([
      ['', 20],
      ['com.microsoft', 1],
    ]);
    const graph = model.graph!;
    expect(graph.name).toBe('g');
    const xType = graph.input[0]!.type!.value;
    expect(xType?.$case === 'tensorType' && xType.value.elemType).toBe(TensorProto_DataType.FLOAT);
    expect(
      xType?.$case === 'tensorType' && xType.value.shape!.dim.map((d) => d.value?.value),
    ).toEqual(['batch', 4]);

    const [wProto, bProto] = graph.initializer;
    expect(wProto!.dataType).toBe(TensorProto_DataType.FLOAT16);
    expect(wProto!.dataLocation).toBe(TensorProto_DataLocation.EXTERNAL);
    expect(wProto!.rawData.length).toBe(0);
    expect(Object.fromEntries(wProto!.externalData.map((e) => [e.key, e.value]))).toEqual({
      location: 'model.safetensors',
      offset: '136',
      length: '24',
    });
    expect(new Float32Array(new Uint8Array(bProto!.rawData).buffer)).toEqual(
      new Float32Array([1, 2, 3]),
    );

    expect(graph.node.map((n) => [n.opType, n.domain, n.input, n.output])).toEqual([
      ['Cast', '', ['w'], ['Cast_out']],
      ['FusedMatMul', 'com.microsoft', ['x', 'Cast_out'], ['FusedMatMul_out']],
      ['Add', '', ['FusedMatMul_out', 'b'], ['y']],
    ]);
    const attrs = graph.node[1]!.attribute;
    expect(attrs.map((a) => [a.name, a.type, a.i, a.f])).toEqual([
      ['transB', AttributeProto_AttributeType.INT, 1, 0],
      ['alpha', AttributeProto_AttributeType.FLOAT, 0, 1],
    ]);
  });

  it('encodes every attribute kind with its type', () => {
    const g = new GraphBuilder();
    const x = g.input('x', 'float32', [2]);
    const t = inlineTensor('', 'int64', [2], new BigInt64Array([5n, 6n]));
    g.node1({
      opType: 'Custom',
      inputs: [x, ''],
      output: 'y',
      attributes: {
        a: ints([1, -2]),
        b: floats([0.5]),
        c: str('tanh'),
        d: tensor(t),
      },
    });
    g.output('y', 'float32', [2]);
    const [a, b, c, d] = ModelProto.decode(g.toBytes()).graph!.node[0]!.attribute;
    const T = AttributeProto_AttributeType;
    expect([a!.type, a!.ints]).toEqual([T.INTS, [1, -2]]);
    expect([b!.type, b!.floats]).toEqual([T.FLOATS, [0.5]]);
    expect([c!.type, Buffer.from(c!.s).toString()]).toEqual([T.STRING, 'tanh']);
    expect([d!.type, d!.t!.dataType, d!.t!.dims]).toEqual([
      T.TENSOR,
      TensorProto_DataType.INT64,
      [2],
    ]);
    expect(ModelProto.decode(g.toBytes()).graph!.node[0]!.input).toEqual(['x', '']);
  });

  it('hands out unique value and node names', () => {
    const g = new GraphBuilder();
    const x = g.input('x', 'float32', [1]);
    expect(g.uniqueName('x')).toBe('x_1');
    expect(g.uniqueName('x')).toBe('x_2');
    const a = g.node1({ opType: 'Relu', inputs: [x] });
    const b = g.node1({ opType: 'Relu', inputs: [a] });
    expect([a, b]).toEqual(['Relu_out', 'Relu_out_1']);
    g.output(b, 'float32', [1]);
    expect(ModelProto.decode(g.toBytes()).graph!.node.map((n) => n.name)).toEqual([
      'Relu',
      'Relu_1',
    ]);
    const reserved = g.uniqueName('y');
    expect(g.node1({ opType: 'Relu', inputs: [b], output: reserved })).toBe('y');
  });

  it('rejects mistakes when the graph is built, naming the value', () => {
    const g = new GraphBuilder();
    const x = g.input('x', 'float32', [2]);
    expect(() => g.input('x', 'float32', [2])).toThrow('value `x` is already defined');
    expect(() => g.node({ opType: 'Add', inputs: [x, 'nope'] })).toThrow('input `nope`');
    expect(() => g.output('nope', 'float32', [2])).toThrow('`nope` is not a value');
    expect(() => g.initializer('w', 'float32', [2], new Float32Array(3))).toThrow(
      'float32 [2] needs 8 bytes, got 12',
    );
    const ext = { location: 'w.safetensors', offset: 0, length: 8 };
    expect(() => g.externalInitializer('e', 'float16', [2], ext)).toThrow(
      'needs 4 bytes, external length is 8',
    );
    for (const location of ['/abs/w.bin', '../w.bin', '']) {
      expect(() => g.externalInitializer('e', 'float32', [2], { ...ext, location })).toThrow(
        "inside the model's directory",
      );
    }
    expect(() => int(0.5)).toThrow('int attribute must be an integer, got 0.5');
    expect(() => g.node({ opType: 'X', inputs: [x], domain: 'ai.other' as '' })).toThrow(
      'no opset imported for domain `ai.other`',
    );
    expect(() => new GraphBuilder().toBytes()).toThrow('has no outputs');
  });
});
