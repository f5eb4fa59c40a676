#!/usr/bin/env node
// The `loupe` command. The TypeScript is compiled to dist/ by `npm ci` (the prepare script)
// or `npm run build`.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const entry = new URL('../dist/services/cli/main.js', import.meta.url);
if (!existsSync(fileURLToPath(entry))) {
  process.stderr.write(
    'loupe: not built yet; run `npm run build` (npm ci does it) and try again\n',
  );
  process.exit(1);
}
const { main } = await import(entry.href);
const code = await main(process.argv.slice(2));
process.exitCode = code;
