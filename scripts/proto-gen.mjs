#!/usr/bin/env node
// Generates the TypeScript for proto/ with ts-proto (for @grpc/grpc-js) through buf, which
// compiles the .proto files itself, so no protoc download is needed.
//   node scripts/proto-gen.mjs              writes proto/gen/
//   node scripts/proto-gen.mjs --out DIR    writes DIR (the freshness test compares the two)
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const outFlag = process.argv.indexOf('--out');
const out = outFlag > 0 ? resolve(process.argv[outFlag + 1]) : join(root, 'proto', 'gen');

export const TS_PROTO_OPTIONS = [
  'outputServices=grpc-js',
  'esModuleInterop=true',
  'importSuffix=.js',
  'env=node',
  'forceLong=number',
  // Fields marked [jstype = JS_STRING] (the decoder's seed) are decimal strings: all of uint64.
  'useJsTypeOverride=true',
  'oneof=unions-value',
  'useOptionals=none',
];

const template = {
  version: 'v2',
  plugins: [
    {
      local: join(root, 'node_modules', '.bin', 'protoc-gen-ts_proto'),
      out,
      opt: TS_PROTO_OPTIONS,
    },
  ],
};

rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
execFileSync(
  join(root, 'node_modules', '.bin', 'buf'),
  ['generate', '--template', JSON.stringify(template)],
  { cwd: root, stdio: 'inherit' },
);
