// The scheduler alone, with hand-built runner results: no model, no threads.
import { describe, expect, it } from 'vitest';
import { SlotKvCache } from './kv-cache.js';
import { QueueFullError, Scheduler, type SequenceSpec, type StepPlan } from './scheduler.js';

function createScheduler({ slots = 2, context = 64, maxPrefillTokens = 8, maxWaiting = 10 } = {}) {
  const kv = new SlotKvCache(slots, context);
  return { kv, scheduler: new Scheduler(kv, { maxPrefillTokens, maxWaiting }) };
}

function createRequests(
  n: number,
  { promptTokens = 4, maxNewTokens = 3, stop = [] as number[] } = {},
): SequenceSpec[] {
  return Array.from({ length: n }, (_, i) => ({
    id: `r${i}`,
    promptTokens,
    maxNewTokens,
    stopTokenIds: new Set(stop),
  }));
}

/** Answers every sampled row of `plan` with `token`. */
function tokens(plan: StepPlan, token = 7): Map<string, number> {
  if (plan.kind === 'prefill') return new Map(plan.last ? [[plan.id, token]] : []);
  return new Map(plan.rows.map((r) => [r.id, token]));
}

describe('Scheduler', () => {
  it('prefills then decodes, reusing slots first come first served', () => {
    const { kv, scheduler } = createScheduler({ slots: 2 });
    for (const r of createRequests(3, { maxNewTokens: 2 })) scheduler.addRequest(r);
    const plans: string[] = [];
    const ended: string[] = [];
    for (let guard = 0; scheduler.hasWork && guard < 100; guard++) {
      const plan = scheduler.schedule()!;
      plans.push(
        plan.kind === 'prefill'
          ? `prefill ${plan.id}@${plan.slot} ${plan.start}+${plan.length}`
          : `decode ${plan.rows.map((r) => `${r.id}@${r.slot}:${r.position}`).join(' ')} (${plan.slots})`,
      );
      for (const e of scheduler.update(plan, tokens(plan)))
        if (e.finished) ended.push(`${e.id} ${e.finished}`);
    }
    expect(plans.slice(0, 3)).toEqual([
      'prefill r0@0 0+4',
      'decode r0@0:4 (1)',
      'prefill r1@1 0+4',
    ]);
    expect(ended).toEqual(['r0 length', 'r1 length', 'r2 length']);
    // r2 waited for a slot and got slot 0 back from r0.
    expect(plans.some((p) => p === 'prefill r2@0 0+4')).toBe(true);
    expect([kv.usedSlots, kv.usage]).toEqual([0, 0]);
  });

  it('splits a long prompt into chunks of the token budget, alternating with decode steps', () => {
    const { scheduler } = createScheduler({ slots: 2, maxPrefillTokens: 8 });
    const [short, long] = [
      createRequests(1, { promptTokens: 3, maxNewTokens: 10 })[0]!,
      { ...createRequests(1, { promptTokens: 20, maxNewTokens: 2 })[0]!, id: 'long' },
    ];
    scheduler.addRequest(short);
    let plan = scheduler.schedule()!;
    scheduler.update(plan, tokens(plan)); // short prefilled: decoding now
    scheduler.addRequest(long);
    const kinds: string[] = [];
    for (let i = 0; i < 6; i++) {
      plan = scheduler.schedule()!;
      kinds.push(
        plan.kind === 'prefill'
          ? `prefill ${plan.start}+${plan.length}${plan.last ? ' last' : ''}`
          : `decode ${plan.rows.length}`,
      );
      scheduler.update(plan, tokens(plan));
    }
    // The last step was short's prefill, so a decode step comes first.
    expect(kinds).toEqual([
      'decode 1',
      'prefill 0+8',
      'decode 1',
      'prefill 8+8',
      'decode 1',
      'prefill 16+4 last',
    ]);
    plan = scheduler.schedule()!;
    expect(plan.kind === 'decode' && plan.rows.map((r) => r.id)).toEqual(['r0', 'long']);
  });

  it('stops on a stop token, and frees the slot of an aborted sequence at once', () => {
    const { kv, scheduler } = createScheduler({ slots: 1 });
    const [a, b] = createRequests(2, { maxNewTokens: 10, stop: [2] });
    scheduler.addRequest(a!);
    scheduler.addRequest(b!);
    let plan = scheduler.schedule()!;
    expect(scheduler.update(plan, tokens(plan, 5))).toEqual([{ id: 'r0', token: 5 }]);
    plan = scheduler.schedule()!;
    expect(scheduler.update(plan, tokens(plan, 2))).toEqual([
      { id: 'r0', token: 2, finished: 'stop' },
    ]);
    plan = scheduler.schedule()!; // r1 admitted into the freed slot
    expect(plan).toMatchObject({ kind: 'prefill', id: 'r1', slot: 0 });
    expect(kv.usage).toBe(1);
    expect(scheduler.abort('r1')).toBe(true);
    expect([kv.usage, scheduler.running, scheduler.hasWork]).toEqual([0, 0, false]);
    // The in-flight step's result for r1 is ignored.
    expect(scheduler.update(plan, tokens(plan))).toEqual([]);
    expect(scheduler.abort('r1')).toBe(false);
  });

  it("starts a sequence's first chunk after what the prefix cache holds, asking once", () => {
    const kv = new SlotKvCache(2, 64);
    const asked: Array<[string, number]> = [];
    const scheduler = new Scheduler(kv, {
      maxPrefillTokens: 8,
      maxWaiting: 10,
      prefix: {
        cachedPrefix: (id, limit) => {
          asked.push([id, limit]);
          return 16;
        },
      },
    });
    scheduler.addRequest(createRequests(1, { promptTokens: 20 })[0]!);
    const chunks: string[] = [];
    for (let plan = scheduler.schedule(); plan?.kind === 'prefill'; plan = scheduler.schedule()) {
      chunks.push(`${plan.start}+${plan.length} cached ${plan.cached}`);
      scheduler.update(plan, tokens(plan));
    }
    // The limit keeps the prompt's last token computed.
    expect(asked).toEqual([['r0', 19]]);
    expect(chunks).toEqual(['16+4 cached 16']);
    expect(kv.length(0)).toBe(20);
  });

  it('refuses work beyond the queue and requests beyond the context', () => {
    const { scheduler } = createScheduler({ slots: 1, context: 16, maxWaiting: 1 });
    const [a, b, c] = createRequests(3);
    scheduler.addRequest(a!); // gets the slot
    scheduler.addRequest(b!); // waits
    expect(() => scheduler.addRequest(c!)).toThrow(
      new QueueFullError('decoder queue is full: 1 requests waiting for a slot, limit 1'),
    );
    expect(() =>
      scheduler.addRequest({ ...c!, id: 'big', promptTokens: 10, maxNewTokens: 7 }),
    ).toThrow('exceed the context of 16');

    // No waiting allowed: only what finds a free slot.
    const strict = createScheduler({ slots: 2, maxWaiting: 0 }).scheduler;
    const [x, y, z] = createRequests(3);
    strict.addRequest(x!);
    strict.addRequest(y!);
    expect(() => strict.addRequest(z!)).toThrow('0 requests waiting for a slot, limit 0');
  });
});
