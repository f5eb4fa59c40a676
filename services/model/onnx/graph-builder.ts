import { writeFileSync } from 'node:fs';
import {
  GraphProto,
  ModelProto,
  NodeProto,
  OperatorSetIdProto,
  TensorProto,
  TensorShapeProto_Dimension,
  TypeProto,
  ValueInfoProto,
} from '../../../proto/gen/onnx/onnx.js';
import { type AttributeValue, attributeProto } from './attribute.js';
import { type ElementType, onnxDataType } from './element-type.js';
import { type ExternalLocation, externalTensor, inlineTensor } from './tensor-proto.js';

/** A dimension: a fixed size, or a symbolic name such as `'batch'` (same name, same size). */
export type Dim = number | string;

/** Operator-set domains Loupe graphs use: the ONNX standard set and ONNX Runtime's contrib ops. */
export type Domain = '' | 'com.microsoft';

export interface GraphBuilderOptions {
  /** Graph name, stored in the model. */
  name?: string;
  /** Opset version per domain; `''` is required by ONNX. */
  opsets?: Partial<Record<Domain, number>>;
  /** ONNX IR version of the model file (10 = ONNX 1.16, read by ONNX Runtime >= 1.17). */
  irVersion?: number;
}

export interface NodeSpec {
  opType: string;
  /** Input value names; `''` marks an omitted optional input. */
  inputs: readonly string[];
  /** Output names, or how many fresh names to make (default 1). */
  outputs?: readonly string[] | number;
  domain?: Domain;
  attributes?: Readonly<Record<string, AttributeValue>>;
  /** Node name (made unique); defaults to the op type. */
  name?: string;
}

/** Default opsets: ONNX 1.17's standard set (opset 21 for `''`) and ORT contrib ops v1. */
export const DEFAULT_OPSETS: Readonly<Record<Domain, number>> = { '': 21, 'com.microsoft': 1 };

/**
 * Builds an ONNX model in memory: inputs and outputs with types and shapes, initializers
 * (inline bytes or external byte ranges of another file), nodes in topological order.
 *
 *   const g = new GraphBuilder({ name: 'linear' });
 *   const x = g.input('x', 'float32', ['batch', 4]);
 *   const w = g.externalInitializer('w', 'float32', [3, 4], { location, offset, length });
 *   const [y] = g.node({ opType: 'FusedMatMul', domain: 'com.microsoft', inputs: [x, w],
 *                        attributes: { transB: attr.int(1) } });
 *   g.output(y, 'float32', ['batch', 3]);
 *   g.writeModel('model.onnx');
 *
 * Names are unique per graph: `uniqueName` hands out `prefix`, `prefix_1`, ...; explicit
 * names that collide with one already used throw.
 */
export class GraphBuilder {
  readonly #name: string;
  readonly #opsets: Record<string, number>;
  readonly #irVersion: number;
  /** The graph whose values this subgraph may read (ONNX outer scope); none for a model. */
  readonly #outer: GraphBuilder | undefined;
  readonly #inputs: ValueInfoProto[] = [];
  readonly #outputs: ValueInfoProto[] = [];
  readonly #initializers: TensorProto[] = [];
  readonly #nodes: NodeProto[] = [];
  /** value names defined so far (inputs, initializers, node outputs) */
  readonly #values = new Set<string>();
  /** value names handed out by uniqueName, defined or not (one set with all subgraphs) */
  readonly #taken: Set<string>;
  /** node names (one set with all subgraphs) */
  readonly #nodeNames: Set<string>;

  /** `outer` is for `subgraph`; make subgraphs with that method. */
  constructor(
    { name = 'loupe', opsets = {}, irVersion = 10 }: GraphBuilderOptions = {},
    outer?: GraphBuilder,
  ) {
    this.#name = name;
    this.#outer = outer;
    // A subgraph imports no opsets of its own: its nodes use (and register in) the model's.
    this.#opsets = outer ? outer.#opsets : { '': DEFAULT_OPSETS[''], ...opsets };
    this.#irVersion = irVersion;
    this.#taken = outer ? outer.#taken : new Set();
    this.#nodeNames = outer ? outer.#nodeNames : new Set();
  }

  /**
   * A subgraph for a control-flow attribute (the branches of `If`): its nodes may read the
   * values this graph has defined so far (ONNX outer scope), and value and node names stay
   * unique across both. Declare its results with `output` and pass
   * `attr.graph(sub.toGraph())` to the node.
   */
  subgraph(name: string): GraphBuilder {
    return new GraphBuilder({ name, irVersion: this.#irVersion }, this);
  }

  /**
   * A value name not used or handed out yet: `prefix` itself if free, else `prefix_1`,
   * `prefix_2`, ... It is reserved for the caller, who defines it later (e.g. as an output).
   */
  uniqueName(prefix: string): string {
    return uniqueIn(this.#taken, prefix);
  }

  /** Declares a graph input and returns its name. */
  input(name: string, type: ElementType, dims: readonly Dim[]): string {
    this.#claim(name);
    this.#inputs.push(valueInfo(name, type, dims));
    return name;
  }

  /** Declares an existing value as a graph output (by the same name). */
  output(name: string, type: ElementType, dims: readonly Dim[]): string {
    if (!this.#values.has(name))
      throw new Error(`graph output \`${name}\` is not a value of the graph`);
    this.#outputs.push(valueInfo(name, type, dims));
    return name;
  }

  /** A constant stored in the model; see `inlineTensor` for the data layout. */
  initializer(
    name: string,
    type: ElementType,
    dims: readonly number[],
    data: ArrayBufferView,
  ): string {
    const proto = inlineTensor(name, type, dims, data); // validates before the name is taken
    this.#claim(name);
    this.#initializers.push(proto);
    return name;
  }

  /** A constant read in place from a byte range of another file (ONNX external data). */
  externalInitializer(
    name: string,
    type: ElementType,
    dims: readonly number[],
    where: ExternalLocation,
  ): string {
    const proto = externalTensor(name, type, dims, where);
    this.#claim(name);
    this.#initializers.push(proto);
    return name;
  }

  /** Adds a node after the ones already added and returns its output names. */
  node({ opType, inputs, outputs = 1, domain = '', attributes = {}, name }: NodeSpec): string[] {
    if (!(domain in this.#opsets)) {
      if (domain === 'com.microsoft') this.#opsets[domain] = DEFAULT_OPSETS[domain];
      else throw new Error(`node ${opType}: no opset imported for domain \`${domain}\``);
    }
    for (const input of inputs) {
      if (input !== '' && !this.#defines(input)) {
        throw new Error(`node ${opType}: input \`${input}\` is not a value of the graph yet`);
      }
    }
    const base = name ?? opType;
    const outputNames =
      typeof outputs === 'number'
        ? Array.from({ length: outputs }, () => this.uniqueName(`${base}_out`))
        : [...outputs];
    for (const out of outputNames) this.#claim(out);
    this.#nodes.push(
      NodeProto.fromPartial({
        name: uniqueIn(this.#nodeNames, base),
        opType,
        domain,
        input: [...inputs],
        output: outputNames,
        attribute: Object.entries(attributes).map(([key, value]) => attributeProto(key, value)),
      }),
    );
    return outputNames;
  }

  /** The single-output form of `node`. */
  node1(spec: Omit<NodeSpec, 'outputs'> & { output?: string }): string {
    const { output, ...rest } = spec;
    return this.node({ ...rest, outputs: output === undefined ? 1 : [output] })[0]!;
  }

  /** The graph as a message (a snapshot; later additions do not change it). */
  toGraph(): GraphProto {
    if (this.#outputs.length === 0) throw new Error(`graph \`${this.#name}\` has no outputs`);
    return GraphProto.fromPartial({
      name: this.#name,
      input: [...this.#inputs],
      output: [...this.#outputs],
      initializer: [...this.#initializers],
      node: [...this.#nodes],
    });
  }

  /** The model as a message (a snapshot; later additions do not change it). */
  toModel(): ModelProto {
    if (this.#outer) throw new Error(`\`${this.#name}\` is a subgraph; use toGraph`);
    return ModelProto.fromPartial({
      irVersion: this.#irVersion,
      producerName: 'loupe',
      opsetImport: Object.entries(this.#opsets).map(([domain, version]) =>
        OperatorSetIdProto.fromPartial({ domain, version }),
      ),
      graph: this.toGraph(),
    });
  }

  /** The serialized model (the bytes of a `.onnx` file). */
  toBytes(): Uint8Array {
    return ModelProto.encode(this.toModel()).finish();
  }

  /**
   * Writes the model to `path`. External initializers' locations are resolved by the
   * runtime relative to `path`'s directory, so write it beside the files they name.
   */
  writeModel(path: string): void {
    writeFileSync(path, this.toBytes());
  }

  /** Whether `name` is a value here or in an enclosing graph. */
  #defines(name: string): boolean {
    return this.#values.has(name) || (this.#outer !== undefined && this.#outer.#defines(name));
  }

  #claim(name: string): void {
    if (name === '') throw new Error('value names must not be empty');
    if (this.#defines(name)) throw new Error(`value \`${name}\` is already defined in the graph`);
    this.#values.add(name);
    this.#taken.add(name);
  }
}

function uniqueIn(used: Set<string>, prefix: string): string {
  let name = prefix;
  for (let i = 1; used.has(name); i++) name = `${prefix}_${i}`;
  used.add(name);
  return name;
}

function valueInfo(name: string, type: ElementType, dims: readonly Dim[]): ValueInfoProto {
  return ValueInfoProto.fromPartial({
    name,
    type: TypeProto.fromPartial({
      value: {
        $case: 'tensorType',
        value: {
          elemType: onnxDataType(type),
          shape: {
            dim: dims.map((d) =>
              TensorShapeProto_Dimension.fromPartial({
                value:
                  typeof d === 'number'
                    ? { $case: 'dimValue', value: d }
                    : { $case: 'dimParam', value: d },
              }),
            ),
          },
        },
      },
    }),
  });
}
