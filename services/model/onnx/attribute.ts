import { AttributeProto, AttributeProto_AttributeType } from '../../../proto/gen/onnx/onnx.js';
import type { GraphProto, TensorProto } from '../../../proto/gen/onnx/onnx.js';

/**
 * A node attribute with its ONNX type stated: JavaScript numbers cannot tell `1` (INT) from
 * `1.0` (FLOAT), and operators reject the wrong one, so values are built with the helpers
 * below (`int(1)`, `float(1)`), never inferred.
 */
export type AttributeValue =
  | { kind: 'int'; value: number }
  | { kind: 'float'; value: number }
  | { kind: 'ints'; value: readonly number[] }
  | { kind: 'floats'; value: readonly number[] }
  | { kind: 'string'; value: string }
  | { kind: 'tensor'; value: TensorProto }
  | { kind: 'graph'; value: GraphProto };

export const int = (value: number): AttributeValue => {
  if (!Number.isSafeInteger(value))
    throw new TypeError(`int attribute must be an integer, got ${value}`);
  return { kind: 'int', value };
};
export const float = (value: number): AttributeValue => ({ kind: 'float', value });
export const ints = (value: readonly number[]): AttributeValue => {
  const bad = value.find((v) => !Number.isSafeInteger(v));
  if (bad !== undefined) throw new TypeError(`ints attribute must hold integers, got ${bad}`);
  return { kind: 'ints', value: [...value] };
};
export const floats = (value: readonly number[]): AttributeValue => ({
  kind: 'floats',
  value: [...value],
});
export const str = (value: string): AttributeValue => ({ kind: 'string', value });
export const tensor = (value: TensorProto): AttributeValue => ({ kind: 'tensor', value });
/** A subgraph (GraphBuilder.subgraph(...).toGraph()), e.g. a branch of `If`. */
export const graph = (value: GraphProto): AttributeValue => ({ kind: 'graph', value });

/** The AttributeProto for `name` = `attr`, with its `type` discriminator set. */
export function attributeProto(name: string, attr: AttributeValue): AttributeProto {
  const T = AttributeProto_AttributeType;
  switch (attr.kind) {
    case 'int':
      return AttributeProto.fromPartial({ name, type: T.INT, i: attr.value });
    case 'float':
      return AttributeProto.fromPartial({ name, type: T.FLOAT, f: attr.value });
    case 'ints':
      return AttributeProto.fromPartial({ name, type: T.INTS, ints: [...attr.value] });
    case 'floats':
      return AttributeProto.fromPartial({ name, type: T.FLOATS, floats: [...attr.value] });
    case 'string':
      return AttributeProto.fromPartial({
        name,
        type: T.STRING,
        s: Buffer.from(attr.value, 'utf8'),
      });
    case 'tensor':
      return AttributeProto.fromPartial({ name, type: T.TENSOR, t: attr.value });
    case 'graph':
      return AttributeProto.fromPartial({ name, type: T.GRAPH, g: attr.value });
  }
}
