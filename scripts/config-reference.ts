// Writes docs/configuration.md from the services' configuration schemas: each variable's
// default comes from parsing an empty environment with the schema itself, its description
// from the comment above it in the source, its bounds from its builder's arguments. A test
// (test/config-reference.test.ts) fails when the committed file differs from what this
// generates, so the reference cannot drift from the code.
//
//   npm run docs:config
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import ts from 'typescript';
import type { z } from 'zod';
import { decoderEnvSchema } from '../services/decoder/config.js';
import { encoderEnvSchema } from '../services/encoder/config.js';
import { gatewayEnvSchema } from '../services/gateway/config.js';
import { preprocessorEnvSchema } from '../services/preprocessor/config.js';
import { commonEnvSchema } from '../services/runtime/config.js';
import { packageRoot } from '../services/runtime/paths.js';

const root = packageRoot();

interface Variable {
  name: string;
  description: string;
  /** The builder call's bounds or choices, as written (`1 to 1024`, `info, warn, ...`). */
  values: string;
}

/** The object literal's properties in `file`'s schema `name`, with their comments. */
function documented(file: string, name: string): Variable[] {
  const text = readFileSync(join(root, file), 'utf8');
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.ES2022, true);
  let literal: ts.ObjectLiteralExpression | undefined;
  const visit = (node: ts.Node) => {
    if (ts.isVariableDeclaration(node) && node.name.getText() === name && node.initializer) {
      const find = (n: ts.Node): void => {
        if (!literal && ts.isObjectLiteralExpression(n)) literal = n;
        else n.forEachChild(find);
      };
      find(node.initializer);
    }
    node.forEachChild(visit);
  };
  visit(source);
  if (!literal) throw new Error(`${file}: no object literal for ${name}`);
  return literal.properties.flatMap((p) => {
    if (!ts.isPropertyAssignment(p)) return [];
    const comments = ts.getLeadingCommentRanges(text, p.getFullStart()) ?? [];
    const description = comments
      .map((c) => text.slice(c.pos, c.end))
      .join(' ')
      .replace(/^\/\*\*|\*\/$/g, '')
      .split('\n')
      .map((l) => l.replace(/^\s*(\*|\/\/)\s?/, '').trim())
      .join(' ')
      .replace(/\s+/g, ' ')
      .trim();
    return [{ name: p.name.getText(), description, values: bounds(p.initializer.getText()) }];
  });
}

/** `intVar(16, { min: 1, max: 1024 })` → `1 to 1024`; `enumVar([...])` → its choices. */
function bounds(initializer: string): string {
  const min = /min:\s*([^,}]+)/.exec(initializer)?.[1]?.trim();
  const max = /max:\s*([^,}]+)/.exec(initializer)?.[1]?.trim();
  if (min !== undefined || max !== undefined)
    return `${number(min) ?? '…'} to ${number(max) ?? '…'}`;
  if (/^portVar|^optionalPortVar/.test(initializer)) return 'a port (0: any free one)';
  if (/^boolVar/.test(initializer)) return 'true / false';
  return '';
}

/** A bound written as arithmetic (`1024 * 1024`, `2 ** 31 - 1`, `86_400_000`), evaluated. */
function number(expression: string | undefined): string | undefined {
  if (expression === undefined) return undefined;
  if (!/^[\d_\s*+\-.]+$/.test(expression)) return expression;
  return String(Function(`"use strict"; return (${expression});`)() as number);
}

/**
 * Defaults computed from the machine the schema loads on (cgroup CPU limit or cores): the
 * reference says where they come from, not what this machine's are, so it reads the same
 * wherever it is generated.
 */
const MACHINE_DEFAULTS: Record<string, string> = {
  LOUPE_PREPROCESSOR_WORKERS: 'one per core',
};

/** The default a schema gives a variable left unset. */
function defaultOf(schema: z.ZodObject, name: string): string {
  const machine = MACHINE_DEFAULTS[name];
  if (machine !== undefined) return machine;
  const field = (schema.shape as Record<string, z.ZodType>)[name]!;
  const parsed = field.safeParse(undefined);
  if (!parsed.success) return 'required';
  const v = parsed.data;
  if (v === undefined || v === '' || (Array.isArray(v) && v.length === 0)) return 'unset';
  return `\`${Array.isArray(v) ? v.join(',') : String(v)}\``;
}

function table(schema: z.ZodObject, variables: Variable[]): string {
  const cell = (s: string) => s.replace(/\|/g, '\\|');
  return [
    '| Variable | Default | Values | Meaning |',
    '|---|---|---|---|',
    ...variables.map(
      (v) =>
        `| \`${v.name}\` | ${defaultOf(schema, v.name)} | ${cell(v.values)} | ${cell(v.description)} |`,
    ),
  ].join('\n');
}

export function configurationReference(): string {
  const common = documented('services/runtime/config.ts', 'commonEnvSchema');
  const commonNames = new Set(Object.keys(commonEnvSchema));
  const services: Array<[string, string, string, z.ZodObject]> = [
    ['gateway', 'services/gateway/config.ts', 'gatewayEnvSchema', gatewayEnvSchema],
    [
      'preprocessor',
      'services/preprocessor/config.ts',
      'preprocessorEnvSchema',
      preprocessorEnvSchema,
    ],
    ['encoder', 'services/encoder/config.ts', 'encoderEnvSchema', encoderEnvSchema],
    ['decoder', 'services/decoder/config.ts', 'decoderEnvSchema', decoderEnvSchema],
  ];
  const sections = services.map(([title, file, name, schema]) => {
    const own = documented(file, name).filter((v) => !commonNames.has(v.name));
    return `## ${title}\n\n${table(schema, own)}\n`;
  });
  return [
    '# Configuration reference',
    '',
    'Every service reads its configuration from environment variables once, at start, and',
    'refuses to start with a message naming the variable when a value is invalid. This file is',
    'generated from the configuration schemas (`services/*/config.ts`) by `npm run docs:config`;',
    'a test fails when it is out of date.',
    '',
    '## Every service',
    '',
    table(gatewayEnvSchema, common),
    '',
    ...sections,
  ].join('\n');
}

if (process.argv.includes('--write')) {
  writeFileSync(join(root, 'docs', 'configuration.md'), configurationReference());
  process.stdout.write('wrote docs/configuration.md\n');
}
