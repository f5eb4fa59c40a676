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

const layout = {
  workers: 'WORKERS',
  split: 'SPLIT',
  level: 'LEVEL',
  listen: { host: 'HOST', port: 'PORT' },
} as const;

describe('loadConfig', () => {
  it('applies defaults, arranges the values by the layout and freezes the result', () => {
    const config = loadConfig(schema, layout, {});
    expect(config).toEqual({
      workers: 4,
      split: false,
      level: 'info',
      listen: { host: '127.0.0.1', port: 50051 },
    });
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.listen)).toBe(true);
  });

  it('parses values', () => {
    const config = loadConfig(schema, layout, {
      PORT: '0',
      WORKERS: ' 8 ',
      SPLIT: 'on',
      HOST: '::1',
      LEVEL: 'debug',
    });
    expect(config).toEqual({
      workers: 8,
      split: true,
      level: 'debug',
      listen: { host: '::1', port: 0 },
    });
  });

  it('names every invalid variable, its problem and its value', () => {
    let error: unknown;
    try {
      loadConfig(schema, layout, {
        PORT: '70000',
        WORKERS: 'many',
        SPLIT: 'maybe',
        LEVEL: 'loud',
      });
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
    expect(() => loadConfig(schema, layout, { WORKERS: '0' })).toThrow(/WORKERS/);
  });

  it('takes only a layout that reads every variable, and only those (checked by tsc)', () => {
    const { listen: _, ...withoutListen } = layout;
    // @ts-expect-error HOST and PORT have no setting
    expect(() => loadConfig(schema, withoutListen, {})).not.toThrow();
    // @ts-expect-error THREADS is no variable of the schema
    expect(() => loadConfig(schema, { ...layout, threads: 'THREADS' } as const, {})).not.toThrow();
  });
});
