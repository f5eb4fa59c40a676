// Chat template renders against processor.apply_chat_template (transformers 4.54.1):
// test/fixtures/text/expected.json `chat`, made by test/fixtures/text/make_text_fixtures.py.
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { afterAll, describe, expect, it } from 'vitest';

import {
  type ChatMessage,
  ChatTemplate,
  loadChatTemplate,
  renderChatTemplate,
} from './chat-template.js';
import { ChatTemplateError, TextFileError } from './text-error.js';
import { fixtureCases } from '../../../test/helpers/fixtures.js';

const FIXTURES = fileURLToPath(new URL('../../../test/fixtures/text/', import.meta.url));
const TOKENIZER_DIR = join(FIXTURES, 'tokenizer');
const expected = JSON.parse(readFileSync(join(FIXTURES, 'expected.json'), 'utf8')) as {
  chat: { name: string; messages: ChatMessage[]; addGenerationPrompt: boolean; rendered: string }[];
};
const template = loadChatTemplate(TOKENIZER_DIR);

const temps: string[] = [];
afterAll(() => {
  for (const dir of temps) rmSync(dir, { recursive: true, force: true });
});
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'loupe-chat-'));
  temps.push(dir);
  return dir;
}

describe('chat template matches the reference', () => {
  const chat = fixtureCases('chat cases of test/fixtures/text/expected.json', expected.chat, 8);
  it.each(chat.map((c) => [`${c.name} generation=${String(c.addGenerationPrompt)}`, c]))(
    '%s',
    (_name, c) => {
      const options = { addGenerationPrompt: c.addGenerationPrompt };
      expect(template.render(c.messages, options)).toBe(c.rendered);
      expect(renderChatTemplate(template.source, c.messages, options)).toBe(c.rendered);
    },
  );

  it('defaults to no generation prompt', () => {
    const c = expected.chat.find((x) => !x.addGenerationPrompt);
    expect(c).toBeDefined();
    expect(template.render(c!.messages)).toBe(c!.rendered);
  });
});

describe('loadChatTemplate', () => {
  const messages: ChatMessage[] = [{ role: 'user', content: [{ type: 'text', text: 'hi' }] }];

  it('prefers chat_template.jinja, then chat_template.json, then tokenizer_config.json', () => {
    const dir = tempDir();
    copyFileSync(join(TOKENIZER_DIR, 'tokenizer_config.json'), join(dir, 'tokenizer_config.json'));
    expect(loadChatTemplate(dir).render(messages)).toBe('User: hi<end_of_utterance>\n');
    writeFileSync(
      join(dir, 'chat_template.json'),
      JSON.stringify({ chat_template: 'json {{ bos_token }}{{ messages[0].role }}' }),
    );
    expect(loadChatTemplate(dir).render(messages)).toBe('json <s>user');
    writeFileSync(join(dir, 'chat_template.jinja'), 'jinja {{ messages | length }}');
    expect(loadChatTemplate(dir).render(messages)).toBe('jinja 1');
  });

  it('takes the `default` entry of a list of named templates', () => {
    const dir = tempDir();
    writeFileSync(
      join(dir, 'tokenizer_config.json'),
      JSON.stringify({
        chat_template: [
          { name: 'tool_use', template: 'tools' },
          { name: 'default', template: 'default' },
        ],
      }),
    );
    expect(loadChatTemplate(dir).render(messages)).toBe('default');
  });

  it('names the files when there is no template', () => {
    const dir = tempDir();
    expect(() => loadChatTemplate(dir)).toThrow(TextFileError);
    expect(() => loadChatTemplate(dir)).toThrow(`${dir} has no chat template`);
    writeFileSync(join(dir, 'chat_template.json'), JSON.stringify({ chat_template: 3 }));
    expect(() => loadChatTemplate(dir)).toThrow(
      `${join(dir, 'chat_template.json')}: \`chat_template\` must be a string`,
    );
  });

  it('refuses messages the Idefics2 template cannot read', () => {
    expect(() => template.render([{ role: 'user', content: [] }])).toThrow(
      new ChatTemplateError('messages[0].content must be a non-empty list'),
    );
    const bad = [{ role: 'user', content: [{ type: 'video' }] }] as unknown as ChatMessage[];
    expect(() => template.render(bad)).toThrow(/messages\[0\]\.content\[0\] must be/);
    expect(() => template.render([{ role: '', content: messages[0]!.content }])).toThrow(
      'messages[0].role must be a non-empty string',
    );
  });

  it('reports a template that does not parse', () => {
    expect(() => new ChatTemplate('{% for %}')).toThrow(ChatTemplateError);
  });
});
