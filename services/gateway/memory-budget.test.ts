import { totalmem } from 'node:os';
import { describe, expect, it } from 'vitest';
import { containerMemoryLimit, defaultMemoryBudget, MemoryBudget } from './memory-budget.js';

describe('MemoryBudget', () => {
  it('admits reservations that fit, refuses the rest, and releases each once', () => {
    const budget = new MemoryBudget(100);
    const a = budget.reserve(60)!;
    expect(budget.reserve(50)).toBeUndefined();
    const b = budget.reserve(40)!;
    expect(budget.used).toBe(100);
    a();
    a(); // twice is once
    expect(budget.used).toBe(40);
    b();
    expect(budget.used).toBe(0);
    expect(budget.reserve(101)).toBeUndefined();
  });

  it('defaults to half the container limit, or a quarter of the machine', () => {
    const limit = containerMemoryLimit();
    expect(defaultMemoryBudget()).toBe(
      Math.floor(limit !== undefined ? limit / 2 : totalmem() / 4),
    );
  });
});
