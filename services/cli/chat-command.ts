// `loupe chat`: a small client of the gateway that streams one answer to stdout.
import { readFileSync } from 'node:fs';
import { sniffImageFormat } from '../model/index.js';
import { parseCommandArgs } from './args.js';
import { CliError } from './cli-error.js';

async function apiError(response: Response): Promise<CliError> {
  const text = await response.text();
  try {
    const body = JSON.parse(text) as { error?: { message?: string } };
    return new CliError(`the gateway answered ${response.status}: ${body.error?.message ?? text}`);
  } catch {
    return new CliError(`the gateway answered ${response.status}: ${text.slice(0, 200)}`);
  }
}

export async function runChat(args: string[]): Promise<number> {
  const { values, positionals } = parseCommandArgs(args, {
    url: { type: 'string' },
    model: { type: 'string' },
    image: { type: 'string', multiple: true },
    'max-tokens': { type: 'string' },
    temperature: { type: 'string' },
  });
  const question = positionals.join(' ').trim();
  if (!question) throw new CliError('say what to ask: loupe chat [--image FILE]... "question"');
  const base = (values.url ?? process.env.LOUPE_GATEWAY_URL ?? 'http://127.0.0.1:8080').replace(
    /\/$/,
    '',
  );
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (process.env.LOUPE_API_KEY) headers.authorization = `Bearer ${process.env.LOUPE_API_KEY}`;
  const request = async (path: string, init?: RequestInit) => {
    try {
      return await fetch(`${base}${path}`, { ...init, headers });
    } catch (error) {
      throw new CliError(
        `cannot reach the gateway at ${base}: ${(error as Error).message} (is \`npm start\` running?)`,
      );
    }
  };

  let model = values.model;
  if (!model) {
    const r = await request('/v1/models');
    if (!r.ok) throw await apiError(r);
    model = ((await r.json()) as { data: Array<{ id: string }> }).data[0]?.id;
    if (!model) throw new CliError('the gateway serves no model');
  }
  const images = (values.image ?? []).map((path) => {
    let bytes: Buffer;
    try {
      bytes = readFileSync(path);
    } catch (error) {
      throw new CliError(`cannot read --image ${path}: ${(error as Error).message}`);
    }
    const format = sniffImageFormat(bytes).format;
    if (!format) throw new CliError(`--image ${path} is not an image Loupe accepts`);
    return {
      type: 'image_url',
      image_url: { url: `data:image/${format};base64,${bytes.toString('base64')}` },
    };
  });
  const maxTokens = Number(values['max-tokens'] ?? 256);
  const response = await request('/v1/chat/completions', {
    method: 'POST',
    body: JSON.stringify({
      model,
      stream: true,
      max_tokens: maxTokens,
      temperature: Number(values.temperature ?? 0),
      messages: [{ role: 'user', content: [...images, { type: 'text', text: question }] }],
    }),
  });
  if (!response.ok || !response.body) throw await apiError(response);

  // Server-sent events: "data: {json}" lines, ending with "data: [DONE]".
  const decoder = new TextDecoder();
  let buffered = '';
  for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
    buffered += decoder.decode(chunk, { stream: true });
    let newline;
    while ((newline = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, newline).trim();
      buffered = buffered.slice(newline + 1);
      if (!line.startsWith('data:')) continue;
      const data = line.slice(5).trim();
      if (data === '[DONE]') {
        process.stdout.write('\n');
        return 0;
      }
      const event = JSON.parse(data) as {
        error?: { message: string };
        choices?: Array<{ delta?: { content?: string } }>;
      };
      if (event.error) throw new CliError(`the gateway failed mid-answer: ${event.error.message}`);
      process.stdout.write(event.choices?.[0]?.delta?.content ?? '');
    }
  }
  throw new CliError('the answer ended without [DONE]');
}
