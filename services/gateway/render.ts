// Render: a generation as OpenAI's answer — one chat.completion JSON, or chat.completion.chunk
// events over SSE ending in `[DONE]` (docs/gateway.md).
import type { TextTokenizer } from '../model/index.js';
import type { Generation } from './execute.js';

export interface TokenLogprob {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: Array<{ token: string; logprob: number; bytes: number[] }>;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** The shapes of one completion's answer; `id` and `created` are fixed at construction. */
export class Renderer {
  readonly id: string;
  readonly created = Math.floor(Date.now() / 1000);

  constructor(
    requestId: string,
    private readonly modelId: string,
    private readonly tokenizer: TextTokenizer,
  ) {
    this.id = `chatcmpl-${requestId}`;
  }

  /** A token and its alternatives as OpenAI's logprobs entry. */
  logprob = (token: {
    id: number;
    logprob: number;
    topLogprobs: Array<{ id: number; logprob: number }>;
  }): TokenLogprob => {
    const entry = (id: number, logprob: number) => {
      const text = this.tokenizer.decode([id]);
      return { token: text, logprob, bytes: [...Buffer.from(text, 'utf8')] };
    };
    return {
      ...entry(token.id, token.logprob),
      top_logprobs: token.topLogprobs.map((t) => entry(t.id, t.logprob)),
    };
  };

  /** Reads every choice's generation whole into one chat.completion. */
  async completion(
    generations: ReadonlyArray<Generation<TokenLogprob>>,
    withLogprobs: boolean,
    usage: () => Usage,
  ) {
    const choices = await Promise.all(
      generations.map(async (generation, index) => {
        let content = '';
        const logprobs: TokenLogprob[] = [];
        let finish = 'stop';
        for await (const d of generation.deltas()) {
          if (d.kind === 'finish') finish = d.finish;
          else {
            content += d.text;
            if (d.logprobs) logprobs.push(...d.logprobs);
          }
        }
        return {
          index,
          message: { role: 'assistant', content },
          logprobs: withLogprobs ? { content: logprobs } : null,
          finish_reason: finish,
        };
      }),
    );
    return {
      id: this.id,
      object: 'chat.completion',
      created: this.created,
      model: this.modelId,
      choices,
      usage: usage(),
    };
  }

  /**
   * The SSE events of the choices' generations, as JSON strings, in the order their tokens
   * come: per choice, its role chunk, one chunk per text delta and its finish chunk; then the
   * usage chunk when asked for. (`[DONE]` is the caller's.) A choice's role chunk waits for its
   * first token, so that a stream's first byte is its first token.
   */
  async *chunks(
    generations: ReadonlyArray<Generation<TokenLogprob>>,
    usage: (() => Usage) | undefined,
  ): AsyncGenerator<string> {
    const started = new Set<number>();
    for await (const { index, delta: d } of merge(generations.map((g) => g.deltas()))) {
      if (!started.has(index)) {
        started.add(index);
        yield JSON.stringify(this.#chunk(index, { role: 'assistant', content: '' }, null));
      }
      if (d.kind === 'finish') yield JSON.stringify(this.#chunk(index, {}, d.finish));
      else if (d.text || d.logprobs)
        yield JSON.stringify(this.#chunk(index, { content: d.text }, null, d.logprobs));
    }
    if (usage) {
      yield JSON.stringify({
        id: this.id,
        object: 'chat.completion.chunk',
        created: this.created,
        model: this.modelId,
        choices: [],
        usage: usage(),
      });
    }
  }

  #chunk(index: number, delta: object, finish: string | null, logprobs?: TokenLogprob[]) {
    return {
      id: this.id,
      object: 'chat.completion.chunk',
      created: this.created,
      model: this.modelId,
      choices: [
        {
          index,
          delta,
          logprobs: logprobs ? { content: logprobs } : null,
          finish_reason: finish,
        },
      ],
    };
  }
}

/**
 * Several async iterators as one, each value tagged with its iterator's index, in the order
 * they come; the first error ends it, and ending it early ends them all.
 */
export async function* merge<T>(
  iterators: ReadonlyArray<AsyncIterator<T>>,
): AsyncGenerator<{ index: number; delta: T }> {
  const next = (index: number) => iterators[index]!.next().then((result) => ({ index, result }));
  const pending = new Map(iterators.map((_, index) => [index, next(index)]));
  try {
    while (pending.size > 0) {
      const { index, result } = await Promise.race(pending.values());
      if (result.done) {
        pending.delete(index);
        continue;
      }
      pending.set(index, next(index));
      yield { index, delta: result.value };
    }
  } finally {
    // Ended early (a failure, a client gone): the others are asked to stop, without waiting
    // (a pending next() may wait on a stream that only the request's abort ends), and what
    // they still settle with is dropped, so a late failure is no unhandled rejection.
    for (const [index, promise] of pending) {
      promise.catch(() => {});
      void iterators[index]!.return?.(undefined)?.catch(() => {});
    }
  }
}
