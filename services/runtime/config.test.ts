import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { boolVar, ConfigError, enumVar, intVar, loadConfig, portVar, stringVar } from './config.js';

const schema = z.object({
  PORT: portVar(50051),
  WORKERS: intVar(4, { min: 1, max: 64 }),
  SPLIT: boolVar(false),
  HOST: stringVar('127.0.0.1'),
  LEVEL: enumVar(['info', 'debug'] as const, 'info'),
});

describe('loadConfig', () => {
  it('applies defaults and freezes the result', () => {
    const config = loadConfig(schema, {});
    expect(config).toEqual({
      PORT: 50051,
      WORKERS: 4,
      SPLIT: false,
      HOST: '127.0.0.1',
      LEVEL: 'info',
    });
    expect(Object.isFrozen(config)).toBe(true);
  });

  it('parses values', () => {
    const config = loadConfig(schema, {
      PORT: '0',
      WORKERS: ' 8 ',
      SPLIT: 'on',
      HOST: '::1',
      LEVEL: 'debug',
    });
    expect(config).toEqual({ PORT: 0, WORKERS: 8, SPLIT: true, HOST: '::1', LEVEL: 'debug' });
  });

  it('names every invalid variable, its problem and its value', () => {
    let error: unknown;
    try {
      loadConfig(schema, { PORT: '70000', WORKERS: 'many', SPLIT: 'maybe', LEVEL: 'loud' });
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as Error).message;
    expect(message).toMatch(/PORT: .*65535.*"70000"/);
    expect(message).toMatch(/WORKERS: must be an integer \(got "many"\)/);
    expect(message).toMatch(/SPLIT: must be true or false \(got "maybe"\)/);
    expect(message).toMatch(/LEVEL: .*\(got "loud"\)/);
  });

  it('enforces bounds', () => {
    expect(() => loadConfig(schema, { WORKERS: '0' })).toThrow(/WORKERS/);
  });
});
