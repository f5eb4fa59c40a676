// Constrained decoding for one decoder: a GrammarCompilerCache per tokenizer (built once from
// the checkpoint's tokenizer.json) that compiles response formats to token-level grammars and
// keeps them (LRU, by SHA-256 of kind and schema), a Constraint per sequence that gives the
// bitmask of the tokens allowed next and follows the tokens chosen, and applyMask, which puts
// a bitmask on a row of logits. How the engine uses them: docs/structured-output.md.
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { assembleGrammar, lowerSchema } from './lower.js';
import { checkSchema, parseSchemaText, SchemaError } from './schema-subset.js';
import {
  fillNextTokenBitmask,
  loadXGrammar,
  type CompiledGrammar,
  type GrammarCompiler,
  type GrammarMatcher,
  type TokenizerInfo,
  type XGrammar,
} from './xgrammar.js';

/** What a sequence's text must be; `schema` is JSON text (request-format.ts makes it canonical). */
export type ResponseFormatSpec = { kind: 'json_object' } | { kind: 'json_schema'; schema: string };

/**
 * The grammar options, the same for every format (docs/structured-output.md, "Whitespace"):
 * no free whitespace at all (`anyWhitespace` false), one line (no indent), and the separators
 * `", "` and `": "`. A model can then never loop on whitespace, and there is exactly one way to
 * write each value's punctuation, which is also the way models write JSON inline. (xgrammar's
 * `maxWhitespaceCnt` would not do: it bounds the gaps of the schema's own objects but leaves
 * `[ \n\t]*` in the rules for free-form values, such as those of `json_object`.)
 */
const SEPARATORS: [string, string] = [', ', ': '];

/**
 * The EBNF grammar of a format, before it meets a vocabulary (so also usable where there is no
 * tokenizer: request-format.ts checks with it that a schema converts). Throws SchemaError for a
 * schema outside the subset (checked again: xgrammar aborts on some of what is outside).
 */
export async function formatGrammar(xg: XGrammar, format: ResponseFormatSpec): Promise<string> {
  if (format.kind === 'json_object') {
    // Any object: xgrammar's free-form JSON values, strict mode off.
    return xg.Testings._jsonSchemaToEBNF('{"type":"object"}', false, -1, SEPARATORS, false);
  }
  const schema = parseSchemaText(format.schema);
  checkSchema(schema);
  const tag = randomBytes(6).toString('hex');
  const lowered = lowerSchema(schema, tag);
  const ebnf = await xg.Testings._jsonSchemaToEBNF(
    JSON.stringify(lowered.schema),
    false,
    -1,
    SEPARATORS,
    true,
  );
  return assembleGrammar(ebnf, lowered.leaves);
}

/** The Hugging Face tokenizer.json fields read here. */
export interface TokenizerJsonLike {
  model: { type?: string; vocab: Record<string, number> | Array<[string, number]> };
  added_tokens?: Array<{ id: number; content: string; special?: boolean }>;
  normalizer?: unknown;
  pre_tokenizer?: unknown;
  decoder?: unknown;
}

/** A tokenizer's vocabulary as xgrammar takes it. */
export interface TokenizerVocabulary {
  /** Each id's piece as stored ('' for special tokens and ids no piece has: never allowed). */
  encoded: string[];
  /** How pieces map to bytes: `<0x0A>` pieces and `▁` for a space (byte_fallback), GPT-2 bytes (byte_level), or as is. */
  vocabType: 'byte_fallback' | 'byte_level' | 'raw';
  /** Whether the tokenizer puts a space before the text (a `▁` Prepend normalizer or a Metaspace pre-tokenizer). */
  addPrefixSpace: boolean;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The component and, for a Sequence, its parts. */
function parts(component: unknown, list: string): Record<string, unknown>[] {
  if (!isObject(component)) return [];
  if (component.type === 'Sequence' && Array.isArray(component[list])) {
    return (component[list] as unknown[]).filter(isObject);
  }
  return [component];
}

/**
 * The vocabulary and its type from tokenizer.json, detected as xgrammar's own Hugging Face
 * loader does: a ByteFallback decoder makes `byte_fallback` (Llama, Mistral, Idefics2), a
 * ByteLevel one `byte_level`; a Prepend-`▁` normalizer or a Metaspace pre-tokenizer that
 * prepends makes `addPrefixSpace`. Special added tokens (`<s>`, `<image>`, ...) become '' so
 * that no grammar ever allows them (stop tokens are named separately).
 */
export function tokenizerVocabulary(tokenizer: TokenizerJsonLike): TokenizerVocabulary {
  const entries = Array.isArray(tokenizer.model.vocab)
    ? tokenizer.model.vocab
    : Object.entries(tokenizer.model.vocab);
  const added = tokenizer.added_tokens ?? [];
  const size = Math.max(0, ...entries.map(([, id]) => id + 1), ...added.map((t) => t.id + 1));
  const encoded = new Array<string>(size).fill('');
  for (const [piece, id] of entries) encoded[id] = piece;
  for (const token of added) encoded[token.id] = token.special === false ? token.content : '';

  const decoders = parts(tokenizer.decoder, 'decoders').map((d) => d.type);
  const vocabType = decoders.includes('ByteLevel')
    ? 'byte_level'
    : decoders.includes('ByteFallback')
      ? 'byte_fallback'
      : 'raw';
  const prepends = parts(tokenizer.normalizer, 'normalizers').some(
    (n) => n.type === 'Prepend' && n.prepend === '▁',
  );
  const metaspace = parts(tokenizer.pre_tokenizer, 'pretokenizers').some(
    (p) =>
      p.type === 'Metaspace' &&
      (p.prepend_scheme === 'always' ||
        p.prepend_scheme === 'first' ||
        p.add_prefix_space === true),
  );
  if (vocabType === 'byte_fallback') {
    // Bytes that never occur in UTF-8 (overlong leads, past U+10FFFF): never allowed.
    for (let id = 0; id < encoded.length; id++) {
      const byte = byteOf(encoded[id]!);
      if (byte !== undefined && (byte === 0xc0 || byte === 0xc1 || byte >= 0xf5)) encoded[id] = '';
    }
  }
  return { encoded, vocabType, addPrefixSpace: prepends || metaspace };
}

/** The byte of a byte-fallback piece (`<0x0A>`), else undefined. */
function byteOf(piece: string): number | undefined {
  const m = /^<0x([0-9A-F]{2})>$/.exec(piece);
  return m ? parseInt(m[1]!, 16) : undefined;
}

/**
 * For byte-fallback vocabularies: after each lead byte whose next byte is restricted by UTF-8
 * (E0, ED, F0, F4: no overlong forms, no surrogates, nothing past U+10FFFF), the byte tokens
 * that would break that rule. xgrammar checks UTF-8's shape only (a lead and its continuation
 * count), so Constraint.mask clears these itself. Text pieces are valid UTF-8 and never start
 * with a continuation byte, so only byte tokens need it.
 */
export function utf8Guards(encoded: readonly string[]): Map<number, number[]> {
  const ids = new Map<number, number>();
  encoded.forEach((piece, id) => {
    const byte = byteOf(piece);
    if (byte !== undefined) ids.set(byte, id);
  });
  const banned: Array<[number, number, number]> = [
    [0xe0, 0x80, 0x9f],
    [0xed, 0xa0, 0xbf],
    [0xf0, 0x80, 0x8f],
    [0xf4, 0x90, 0xbf],
  ];
  const guards = new Map<number, number[]>();
  for (const [lead, from, to] of banned) {
    const leadId = ids.get(lead);
    if (leadId === undefined) continue;
    const next: number[] = [];
    for (let b = from; b <= to; b++) {
      const id = ids.get(b);
      if (id !== undefined) next.push(id);
    }
    guards.set(leadId, next);
  }
  return guards;
}

/** A format that xgrammar could not compile (after the subset check passed): a bug to report. */
export class GrammarCompileError extends Error {
  override readonly name = 'GrammarCompileError';
}

/** The cache key of a format: SHA-256 of its kind and its schema text. */
export function grammarKey(format: ResponseFormatSpec): string {
  const schema = format.kind === 'json_schema' ? format.schema : '';
  return createHash('sha256').update(`${format.kind}\n${schema}`).digest('hex');
}

export interface GrammarCacheOptions {
  /**
   * The model's vocabulary size (the logits' width, config.json's `vocab_size`). It may exceed
   * the tokenizer's: the ids past it are padding and never allowed.
   */
  vocabSize: number;
  /** Ids that end a sequence (the checkpoint's EOS ids): allowed only once the answer is complete. */
  stopTokenIds: readonly number[];
  /** Compiled grammars kept, least recently used dropped first (default 64). */
  maxGrammars?: number;
}

/** A compiled format, shared by the sequences that use it. */
interface Entry {
  compiled: CompiledGrammar;
  compileMs: number;
  /** Matchers being made from it; an entry dropped meanwhile is freed by the last of them. */
  users: number;
  dropped: boolean;
}

/**
 * Compiles response formats for one tokenizer and keeps the results. Build one per decoder
 * (per engine thread: xgrammar's objects live in that thread's WebAssembly memory).
 */
export class GrammarCompilerCache {
  readonly vocabSize: number;
  /** Words of a bitmask: ceil(vocabSize / 32). */
  readonly words: number;
  readonly stopTokenIds: readonly number[];
  readonly maxGrammars: number;
  readonly #xg: XGrammar;
  readonly #info: TokenizerInfo;
  readonly #compiler: GrammarCompiler;
  readonly #guards: ReadonlyMap<number, number[]>;
  readonly #entries = new Map<string, Entry>();
  readonly #pending = new Map<string, Promise<Entry>>();
  hits = 0;
  misses = 0;

  private constructor(
    xg: XGrammar,
    info: TokenizerInfo,
    compiler: GrammarCompiler,
    readonly vocabulary: Omit<TokenizerVocabulary, 'encoded'> & { tokenizerSize: number },
    options: GrammarCacheOptions,
    guards: ReadonlyMap<number, number[]>,
  ) {
    this.#xg = xg;
    this.#guards = guards;
    this.#info = info;
    this.#compiler = compiler;
    this.vocabSize = options.vocabSize;
    this.words = Math.ceil(options.vocabSize / 32);
    this.stopTokenIds = [...options.stopTokenIds];
    this.maxGrammars = options.maxGrammars ?? 64;
  }

  /** From a parsed tokenizer.json. */
  static async create(
    tokenizer: TokenizerJsonLike,
    options: GrammarCacheOptions,
  ): Promise<GrammarCompilerCache> {
    const vocabulary = tokenizerVocabulary(tokenizer);
    const { encoded, vocabType, addPrefixSpace } = vocabulary;
    if (options.vocabSize < encoded.length) {
      // Tokens past the model's vocabulary cannot be sampled: drop them.
      encoded.length = options.vocabSize;
    }
    if (options.stopTokenIds.length === 0) throw new Error('grammars need at least one stop token');
    for (const id of options.stopTokenIds) {
      if (!Number.isInteger(id) || id < 0 || id >= options.vocabSize) {
        throw new Error(`stop token ${id} is outside the vocabulary of ${options.vocabSize}`);
      }
    }
    const xg = await loadXGrammar();
    const info = await xg.TokenizerInfo.createTokenizerInfo(
      encoded,
      vocabType,
      addPrefixSpace,
      options.vocabSize,
      [...options.stopTokenIds],
    );
    // xgrammar's own cache is off: this class keeps (and frees) compiled grammars itself.
    const compiler = await xg.GrammarCompiler.createGrammarCompiler(info, false);
    return new GrammarCompilerCache(
      xg,
      info,
      compiler,
      { vocabType, addPrefixSpace, tokenizerSize: encoded.length },
      options,
      vocabType === 'byte_fallback' ? utf8Guards(encoded) : new Map(),
    );
  }

  /** From a checkpoint directory's tokenizer.json. */
  static fromModelDir(
    modelDir: string,
    options: GrammarCacheOptions,
  ): Promise<GrammarCompilerCache> {
    const tokenizer = JSON.parse(
      readFileSync(join(modelDir, 'tokenizer.json'), 'utf8'),
    ) as TokenizerJsonLike;
    return GrammarCompilerCache.create(tokenizer, options);
  }

  /** Compiled grammars held. */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * The compiled grammar of `format`, from the cache or compiled now (a schema is checked
   * again first: xgrammar aborts on some inputs outside the subset). Throws SchemaError for a
   * schema outside the subset, GrammarCompileError if xgrammar fails anyway.
   */
  async compile(
    format: ResponseFormatSpec,
  ): Promise<{ key: string; cached: boolean; compileMs: number }> {
    const { key, entry, cached } = await this.#entry(format);
    return { key, cached, compileMs: entry.compileMs };
  }

  /** A new Constraint for one sequence (compiling the format first if it is not cached). */
  async constraint(format: ResponseFormatSpec): Promise<Constraint> {
    const { entry } = await this.#entry(format);
    entry.users++;
    try {
      const matcher = await this.#xg.GrammarMatcher.createGrammarMatcher(entry.compiled);
      return new Constraint(matcher, this.vocabSize, this.stopTokenIds, this.#guards);
    } finally {
      if (--entry.users === 0 && entry.dropped) entry.compiled.dispose();
    }
  }

  async #entry(
    format: ResponseFormatSpec,
  ): Promise<{ key: string; entry: Entry; cached: boolean }> {
    const key = grammarKey(format);
    const entry = this.#entries.get(key);
    if (entry) {
      this.hits++;
      this.#entries.delete(key);
      this.#entries.set(key, entry);
      return { key, entry, cached: true };
    }
    const pending = this.#pending.get(key);
    if (pending) {
      this.hits++;
      return { key, entry: await pending, cached: true };
    }
    this.misses++;
    const compiling = this.#compileNow(format)
      .then((compiled) => {
        this.#entries.set(key, compiled);
        while (this.#entries.size > this.maxGrammars) {
          const [oldest, old] = this.#entries.entries().next().value!;
          this.#entries.delete(oldest);
          // Matchers made from it keep their own reference inside xgrammar.
          old.dropped = true;
          if (old.users === 0) old.compiled.dispose();
        }
        return compiled;
      })
      .finally(() => this.#pending.delete(key));
    this.#pending.set(key, compiling);
    return { key, entry: await compiling, cached: false };
  }

  /** The EBNF grammar a format compiles to (for tests and debugging). */
  grammarText(format: ResponseFormatSpec): Promise<string> {
    return formatGrammar(this.#xg, format);
  }

  async #compileNow(format: ResponseFormatSpec): Promise<Entry> {
    const text = await this.#grammarTextChecked(format);
    const started = performance.now();
    let grammar;
    try {
      grammar = await this.#xg.Grammar.fromEBNF(text);
    } catch (error) {
      throw new GrammarCompileError(`xgrammar could not parse the grammar: ${String(error)}`);
    }
    try {
      const compiled = await this.#compiler.compileGrammar(grammar);
      return { compiled, compileMs: performance.now() - started, users: 0, dropped: false };
    } catch (error) {
      throw new GrammarCompileError(`xgrammar could not compile the grammar: ${String(error)}`);
    } finally {
      grammar.dispose();
    }
  }

  async #grammarTextChecked(format: ResponseFormatSpec): Promise<string> {
    try {
      return await this.grammarText(format);
    } catch (error) {
      if (error instanceof SchemaError || error instanceof GrammarCompileError) throw error;
      throw new GrammarCompileError(`xgrammar could not convert the schema: ${String(error)}`);
    }
  }

  /** Frees every compiled grammar and the compiler (Constraints made keep working). */
  dispose(): void {
    for (const entry of this.#entries.values()) entry.compiled.dispose();
    this.#entries.clear();
    this.#compiler.dispose();
    this.#info.dispose();
  }
}

/** A token the grammar did not allow was accepted: the mask was not applied. */
export class ConstraintViolation extends Error {
  override readonly name = 'ConstraintViolation';
}

/**
 * The grammar state of one sequence. Each step: `mask(bits)`; if `isDone`, the answer is
 * complete and only a stop token may follow (the engine ends the sequence with EOS, without
 * sampling); else `applyMask(logits, ..., bits)`, sample, `accept(token)`. `dispose()` when the
 * sequence ends.
 */
export class Constraint {
  /** Words of a bitmask: ceil(vocabSize / 32). */
  readonly words: number;
  readonly #matcher: GrammarMatcher;
  readonly #vocabSize: number;
  /** Stop tokens' bits, by word. */
  readonly #stopBits: Map<number, number>;
  readonly #guards: ReadonlyMap<number, number[]>;
  /** Byte tokens the last token (a UTF-8 lead byte) rules out next (utf8Guards). */
  #guard: number[] | undefined;
  #onlyStop = false;
  #disposed = false;
  /** Tokens accepted. */
  accepted = 0;

  constructor(
    matcher: GrammarMatcher,
    vocabSize: number,
    stopTokenIds: readonly number[],
    guards: ReadonlyMap<number, number[]> = new Map(),
  ) {
    this.#matcher = matcher;
    this.#guards = guards;
    this.#vocabSize = vocabSize;
    this.words = Math.ceil(vocabSize / 32);
    this.#stopBits = new Map();
    for (const id of stopTokenIds) {
      const w = id >>> 5;
      this.#stopBits.set(w, (this.#stopBits.get(w) ?? 0) | (1 << (id & 31)));
    }
  }

  /**
   * Writes the bitmask of the tokens allowed next into `into` (`words` words; bit i of word w
   * set: token 32w + i allowed; padding ids and special tokens never are). Sets `isDone` when
   * only stop tokens are allowed.
   */
  async mask(into: Int32Array | Uint32Array): Promise<void> {
    if (into.length !== this.words) {
      throw new Error(`the bitmask must have ${this.words} words, got ${into.length}`);
    }
    if (this.#matcher.isTerminated()) {
      // A stop token was accepted. (xgrammar aborts if asked for this mask.)
      into.fill(0);
      for (const [w, bits] of this.#stopBits) into[w] = bits;
      this.#onlyStop = true;
      return;
    }
    await fillNextTokenBitmask(this.#matcher, into);
    const tail = this.#vocabSize & 31;
    if (tail !== 0) into[this.words - 1]! &= (1 << tail) - 1;
    for (const id of this.#guard ?? []) into[id >>> 5]! &= ~(1 << (id & 31));
    let open = false;
    for (let w = 0; w < this.words && !open; w++) {
      const bits = into[w]! & ~(this.#stopBits.get(w) ?? 0);
      if (bits !== 0) open = true;
    }
    if (!open) {
      // Complete (or, which should not happen, stuck): only a stop token may follow.
      for (const [w, bits] of this.#stopBits) into[w] = into[w]! | bits | 0;
    }
    this.#onlyStop = !open;
  }

  /** Follows a chosen token; throws ConstraintViolation for one the mask did not allow. */
  accept(token: number): void {
    if (
      this.#matcher.isTerminated() ||
      this.#guard?.includes(token) ||
      !this.#matcher.acceptToken(token)
    ) {
      throw new ConstraintViolation(`token ${token} is not allowed by the grammar here`);
    }
    this.accepted++;
    this.#onlyStop = false;
    this.#guard = this.#guards.get(token);
  }

  /**
   * Whether the answer is complete: a stop token was accepted, or the last mask allowed only
   * stop tokens (read it after `mask`).
   */
  get isDone(): boolean {
    return this.#onlyStop || this.#matcher.isTerminated();
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#matcher.dispose();
  }
}

/**
 * Sets to -Infinity the logits of the tokens `bitmask` does not allow, in one pass over
 * `logits[offset .. offset + vocab)` (a row of a batch, or a whole row). Words with every bit
 * set are skipped, runs of words with none set are filled at once, and in the others only the
 * cleared bits are visited.
 */
export function applyMask(
  logits: Float32Array,
  offset: number,
  vocab: number,
  bitmask: Int32Array | Uint32Array,
): void {
  const words = Math.ceil(vocab / 32);
  if (bitmask.length < words) {
    throw new Error(`the bitmask has ${bitmask.length} words; ${words} needed`);
  }
  if (offset < 0 || offset + vocab > logits.length)
    throw new Error('the row is outside the logits');
  const full = vocab >>> 5;
  let zeroFrom = -1;
  for (let w = 0; w < full; w++) {
    const bits = bitmask[w]! | 0;
    if (bits === 0) {
      if (zeroFrom < 0) zeroFrom = w;
      continue;
    }
    if (zeroFrom >= 0) {
      logits.fill(-Infinity, offset + (zeroFrom << 5), offset + (w << 5));
      zeroFrom = -1;
    }
    if (bits === -1) continue;
    const base = offset + (w << 5);
    let off = ~bits;
    while (off !== 0) {
      const low = off & -off;
      logits[base + 31 - Math.clz32(low)] = -Infinity;
      off ^= low;
    }
  }
  if (zeroFrom >= 0) logits.fill(-Infinity, offset + (zeroFrom << 5), offset + (full << 5));
  const tail = vocab & 31;
  if (tail !== 0) {
    const bits = bitmask[full]! | 0;
    const base = offset + (full << 5);
    for (let b = 0; b < tail; b++) if (((bits >>> b) & 1) === 0) logits[base + b] = -Infinity;
  }
}
