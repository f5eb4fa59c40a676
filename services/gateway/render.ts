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

  /** Reads the whole generation into one chat.completion. */
  async completion(
    generation: Generation<TokenLogprob>,
    withLogprobs: boolean,
    usage: () => Usage,
  ) {
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
      id: this.id,
      object: 'chat.completion',
      created: this.created,
      model: this.modelId,
      choices: [
        {
          index: 0,
          message: { role: 'assistant', content },
          logprobs: withLogprobs ? { content: logprobs } : null,
          finish_reason: finish,
        },
      ],
      usage: usage(),
    };
  }

  /**
   * The SSE events of a generation, as JSON strings: the role chunk, one chunk per text delta,
   * the finish chunk, then the usage chunk when asked for. (`[DONE]` is the caller's.) The
   * role chunk waits for the first token, so that a stream's first byte is its first token.
   */
  async *chunks(
    generation: Generation<TokenLogprob>,
    usage: (() => Usage) | undefined,
  ): AsyncGenerator<string> {
    let started = false;
    for await (const d of generation.deltas()) {
      if (!started) {
        started = true;
        yield JSON.stringify(this.#chunk({ role: 'assistant', content: '' }, null));
      }
      if (d.kind === 'finish') yield JSON.stringify(this.#chunk({}, d.finish));
      else if (d.text || d.logprobs)
        yield JSON.stringify(this.#chunk({ content: d.text }, null, d.logprobs));
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

  #chunk(delta: object, finish: string | null, logprobs?: TokenLogprob[]) {
    return {
      id: this.id,
      object: 'chat.completion.chunk',
      created: this.created,
      model: this.modelId,
      choices: [
        {
          index: 0,
          delta,
          logprobs: logprobs ? { content: logprobs } : null,
          finish_reason: finish,
        },
      ],
    };
  }
}
