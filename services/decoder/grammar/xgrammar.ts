// Loads xgrammar (@mlc-ai/web-xgrammar: the xgrammar engine compiled to WebAssembly) once per
// thread, lazily, and gives the rest of grammar/ the few typed calls it makes. See
// docs/structured-output.md.
//
// Why the shim: the package is a UMD bundle inside a `"type": "module"` package. Loaded as ESM
// in Node it finds no `exports`/`module`, so it puts its API on `globalThis.xgrammar` (the
// module's own exports are empty), and its Emscripten glue reads the CommonJS globals
// `require` and `__filename` (to build a `require` for fs/path/url and find its directory),
// which an ES module does not have. So before importing it we define those globals for the
// package's own file, and we leave them in place until the WebAssembly module has been
// instantiated (its first API call, made here), after which the glue holds its own `require`
// and never reads them again; then we put the globals back as they were, so that no other
// code in the process sees a CommonJS `require` appear. Every wrapper in this file depends on
// the exact version pinned in package.json (0.1.27); xgrammar.test.ts and constraint.test.ts
// check each one.
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import type * as XGrammarModule from '@mlc-ai/web-xgrammar';

/** The classes xgrammar exports (types from the package's own declarations). */
export interface XGrammar {
  Grammar: typeof XGrammarModule.Grammar;
  GrammarCompiler: typeof XGrammarModule.GrammarCompiler;
  CompiledGrammar: typeof XGrammarModule.CompiledGrammar;
  GrammarMatcher: typeof XGrammarModule.GrammarMatcher;
  TokenizerInfo: typeof XGrammarModule.TokenizerInfo;
  Testings: typeof XGrammarModule.Testings;
}

export type Grammar = XGrammarModule.Grammar;
export type GrammarCompiler = XGrammarModule.GrammarCompiler;
export type CompiledGrammar = XGrammarModule.CompiledGrammar;
export type GrammarMatcher = XGrammarModule.GrammarMatcher;
export type TokenizerInfo = XGrammarModule.TokenizerInfo;

const SHIMMED = ['require', '__filename', '__dirname'] as const;

let loading: Promise<XGrammar> | undefined;

/** xgrammar, loaded and instantiated on the first call (in this thread); later calls share it. */
export function loadXGrammar(): Promise<XGrammar> {
  loading ??= load();
  return loading;
}

async function load(): Promise<XGrammar> {
  const entry = createRequire(import.meta.url).resolve('@mlc-ai/web-xgrammar');
  const global = globalThis as Record<string, unknown>;
  const saved = SHIMMED.map((name) => Object.getOwnPropertyDescriptor(global, name));
  const hadApi = Object.getOwnPropertyDescriptor(global, 'xgrammar');
  global.require = createRequire(entry);
  global.__filename = entry;
  global.__dirname = dirname(entry);
  try {
    await import('@mlc-ai/web-xgrammar');
    const api = global.xgrammar as XGrammar | undefined;
    if (!api?.GrammarCompiler || !api.GrammarMatcher || !api.TokenizerInfo) {
      throw new Error('@mlc-ai/web-xgrammar did not define globalThis.xgrammar');
    }
    // The first call instantiates the WebAssembly module, while the shim is still there.
    (await api.Grammar.builtinJSONGrammar()).dispose();
    return api;
  } finally {
    SHIMMED.forEach((name, i) => {
      const descriptor = saved[i];
      if (descriptor) Object.defineProperty(global, name, descriptor);
      else delete global[name];
    });
    if (!hadApi) delete global.xgrammar;
  }
}

/**
 * The token bitmask of the matcher's next step, written into `into` (ceil(vocab / 32) words;
 * bit i of word w set: token 32w + i allowed).
 *
 * Async because the package's `getNextTokenBitmask()` is: it first awaits its own (already
 * finished) initialization, then makes one synchronous WebAssembly call and copies the result
 * out through a typed-array view of the module's memory. That costs a few microseconds at a
 * 32k vocabulary. The synchronous way in (the matcher's embind handle, whose vector result
 * can only be read back one `get(i)` call per word) costs over 500 µs, so it is not used.
 */
export async function fillNextTokenBitmask(
  matcher: GrammarMatcher,
  into: Int32Array | Uint32Array,
): Promise<void> {
  const bitmask = await matcher.getNextTokenBitmask();
  if (bitmask.length !== into.length) {
    throw new Error(
      `xgrammar returned a bitmask of ${bitmask.length} words; expected ${into.length}`,
    );
  }
  into.set(bitmask);
}
