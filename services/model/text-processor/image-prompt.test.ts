// Prompt expansion against Idefics2Processor (transformers 4.54.1): the `expanded` strings
// of test/fixtures/text/expected.json, whose token ids the reference processor produced.
import { readFileSync } from 'node:fs';

import { describe, expect, it } from 'vitest';

import {
  FAKE_IMAGE_TOKEN as F,
  IMAGE_TOKEN as I,
  countImagePlaceholders,
  expandImagePrompt,
  imageTokenCount,
} from './image-prompt.js';
import { ImagePromptError } from './text-error.js';
import { fixtureCases } from '../../../test/helpers/fixtures.js';

interface PromptCase {
  name: string;
  text: string;
  numImages: number;
  imageSeqLen: number;
  split: boolean;
  expanded: string;
}
const expected = JSON.parse(
  readFileSync(new URL('../../../test/fixtures/text/expected.json', import.meta.url), 'utf8'),
) as {
  processor: PromptCase[];
  chat: (PromptCase & { rendered: string; addGenerationPrompt: boolean })[];
};

describe('expandImagePrompt matches Idefics2Processor', () => {
  const processor = fixtureCases(
    'processor cases of test/fixtures/text/expected.json',
    expected.processor,
    32,
  );
  const chat = fixtureCases('chat cases of test/fixtures/text/expected.json', expected.chat, 8);
  it.each(processor.map((c) => [`${c.name} n=${c.imageSeqLen} split=${c.split}`, c]))(
    '%s',
    (_name, c) => {
      const options = {
        imageSeqLen: c.imageSeqLen,
        splits: Array<boolean>(c.numImages).fill(c.split),
      };
      expect(expandImagePrompt(c.text, options)).toBe(c.expanded);
      expect(countImagePlaceholders(c.expanded)).toBe(imageTokenCount(options));
    },
  );

  it.each(chat.map((c) => [`${c.name} generation=${String(c.addGenerationPrompt)}`, c]))(
    'chat %s',
    (_name, c) => {
      const splits = Array<boolean>(c.numImages).fill(c.split);
      expect(expandImagePrompt(c.rendered, { imageSeqLen: c.imageSeqLen, splits })).toBe(
        c.expanded,
      );
    },
  );
});

describe('expandImagePrompt', () => {
  const run = (n: number) => I.repeat(n);

  it('gives the token runs of docs/model.md §5 for 64 latents', () => {
    expect(expandImagePrompt(I, { imageSeqLen: 64, splits: [false] })).toBe(F + run(64) + F);
    expect(expandImagePrompt(I, { imageSeqLen: 64, splits: [true] })).toBe(
      F + (run(64) + F).repeat(5),
    );
    expect(expandImagePrompt(I + I, { imageSeqLen: 64, splits: [false, false] })).toBe(
      F + run(64) + F + run(64) + F,
    );
  });

  it('expands each image by its own split flag', () => {
    expect(expandImagePrompt(`a${I}${I}b`, { imageSeqLen: 1, splits: [true, false] })).toBe(
      `a${F}${(run(1) + F).repeat(5)}${run(1)}${F}b`,
    );
    expect(imageTokenCount({ imageSeqLen: 64, splits: [true, false] })).toBe(384);
  });

  it('collapses FF in one left-to-right pass, user text included, like str.replace', () => {
    // F F F + image: "FFF" + "F I F" -> pairs (FF)(FF) collapse -> "FF I F".
    expect(expandImagePrompt(`${F}${F}${F}${I}`, { imageSeqLen: 1, splits: [false] })).toBe(
      `${F}${F}${I}${F}`,
    );
  });

  it('leaves text without placeholders alone', () => {
    expect(expandImagePrompt('no images', { imageSeqLen: 64, splits: [] })).toBe('no images');
  });

  it('refuses a placeholder count that differs from the image count, naming both', () => {
    expect(() => expandImagePrompt(`${I} and ${I}`, { imageSeqLen: 64, splits: [true] })).toThrow(
      new ImagePromptError(
        'the prompt has 2 <image> placeholder(s) but 1 image(s) were given; they must be equal',
      ),
    );
    expect(() => expandImagePrompt('text', { imageSeqLen: 64, splits: [false] })).toThrow(
      'the prompt has 0 <image> placeholder(s) but 1 image(s) were given',
    );
  });

  it('refuses a bad imageSeqLen', () => {
    expect(() => expandImagePrompt(I, { imageSeqLen: 0, splits: [false] })).toThrow(
      '`imageSeqLen` must be an integer >= 1, got 0',
    );
    expect(() => expandImagePrompt(I, { imageSeqLen: 2.5, splits: [false] })).toThrow(
      ImagePromptError,
    );
  });
});
