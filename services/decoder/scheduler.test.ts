// The scheduler alone, with hand-built runner results: no model, no threads.
import { describe, expect, it } from 'vitest';
import { QueueFullError } from '../runtime/index.js';
import { SlotKvCache } from './kv-cache.js';
import {
  MIN_PREFILL_TOKENS,
  Scheduler,
  type SchedulerOptions,
  type SequenceSpec,
  type StepPlan,
} from './scheduler.js';

function createScheduler({
  slots = 2,
  context = 64,
  maxPrefillTokens = 8,
  maxWaiting = 10,
  ...rest
}: { slots?: number; context?: number } & Partial<SchedulerOptions> = {}) {
  const kv = new SlotKvCache(slots, context);
  return { kv, scheduler: new Scheduler(kv, { maxPrefillTokens, maxWaiting, ...rest }) };
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
  return new Map([
    ...plan.prefill.filter((c) => c.last).map((c): [string, number] => [c.id, token]),
    ...plan.decode.map((r): [string, number] => [r.id, token]),
  ]);
}

/** A plan in one line: `prefill id@slot start+length[ last]; decode id@slot:position`. */
function describe_(plan: StepPlan): string {
  return [
    ...plan.prefill.map(
      (c) => `prefill ${c.id}@${c.slot} ${c.start}+${c.length}${c.last ? ' last' : ''}`,
    ),
    ...plan.decode.map((r) => `decode ${r.id}@${r.slot}:${r.position}`),
  ].join('; ');
}

describe('Scheduler', () => {
  it('prefills then decodes, reusing slots first come first served', () => {
    const { kv, scheduler } = createScheduler({ slots: 2 });
    for (const r of createRequests(3, { maxNewTokens: 2 })) scheduler.addRequest(r);
    const plans: string[] = [];
    const ended: string[] = [];
    for (let guard = 0; scheduler.hasWork && guard < 100; guard++) {
      const plan = scheduler.schedule()!;
      plans.push(describe_(plan));
      for (const e of scheduler.update(plan, tokens(plan)))
        if (e.finished) ended.push(`${e.id} ${e.finished}`);
    }
    expect(plans).toEqual([
      // Two prompts in one step (8 tokens of budget); r2 waits for a slot.
      'prefill r0@0 0+4 last; prefill r1@1 0+4 last',
      'decode r0@0:4; decode r1@1:4',
      // Both ended with their second token; r2 got slot 0.
      'prefill r2@0 0+4 last',
      'decode r2@0:4',
    ]);
    expect(ended).toEqual(['r0 length', 'r1 length', 'r2 length']);
    expect([kv.usedSlots, kv.usage]).toEqual([0, 0]);
  });

  it('runs prompt chunks beside the decode rows, within the token budget', () => {
    const { scheduler } = createScheduler({ slots: 3, maxPrefillTokens: 8 });
    const [short, long, other] = [
      createRequests(1, { promptTokens: 3, maxNewTokens: 10 })[0]!,
      { ...createRequests(1, { promptTokens: 13, maxNewTokens: 2 })[0]!, id: 'long' },
      { ...createRequests(1, { promptTokens: 5, maxNewTokens: 2 })[0]!, id: 'other' },
    ];
    scheduler.addRequest(short);
    let plan = scheduler.schedule()!;
    scheduler.update(plan, tokens(plan)); // short prefilled: decoding now
    scheduler.addRequest(long);
    scheduler.addRequest(other);
    const plans: string[] = [];
    for (let i = 0; i < 4; i++) {
      plan = scheduler.schedule()!;
      plans.push(describe_(plan));
      scheduler.update(plan, tokens(plan));
    }
    expect(plans).toEqual([
      // long's first chunk takes the whole budget; other waits for the next step.
      'prefill long@1 0+8; decode r0@0:3',
      'prefill long@1 8+5 last; prefill other@2 0+3; decode r0@0:4',
      'prefill other@2 3+2 last; decode r0@0:5; decode long@1:13',
      // long generated its 2 tokens (one from its prompt, one decoded) and ended.
      'decode r0@0:6; decode other@2:5',
    ]);
  });

  it('fits prompt chunks into the time budget beside decode rows, at least the minimum', () => {
    let allowed = 20;
    const asked: number[] = [];
    const { scheduler } = createScheduler({
      slots: 2,
      context: 256,
      maxPrefillTokens: 64,
      prefillBudget: (rows) => {
        asked.push(rows);
        return allowed;
      },
    });
    scheduler.addRequest(createRequests(1, { promptTokens: 100, maxNewTokens: 50 })[0]!);
    let plan = scheduler.schedule()!;
    // Nobody decodes: the token budget alone.
    expect(describe_(plan)).toBe('prefill r0@0 0+64');
    scheduler.update(plan, tokens(plan));
    plan = scheduler.schedule()!;
    scheduler.update(plan, tokens(plan)); // r0's last 36 tokens
    scheduler.addRequest({ ...createRequests(1, { promptTokens: 100 })[0]!, id: 'late' });
    plan = scheduler.schedule()!;
    expect(describe_(plan)).toBe('prefill late@1 0+20; decode r0@0:100');
    scheduler.update(plan, tokens(plan));
    allowed = 3; // the decode rows alone take the budget: prompts still advance
    plan = scheduler.schedule()!;
    expect(describe_(plan)).toBe(`prefill late@1 20+${MIN_PREFILL_TOKENS}; decode r0@0:101`);
    expect(asked).toEqual([1, 1]);
  });

  it('never leaves a one-token tail of a prompt for a later chunk', () => {
    const { scheduler } = createScheduler({ slots: 1, maxPrefillTokens: 8 });
    scheduler.addRequest(createRequests(1, { promptTokens: 17 })[0]!);
    const chunks: string[] = [];
    for (let plan = scheduler.schedule(); plan?.prefill.length; plan = scheduler.schedule()) {
      chunks.push(describe_(plan));
      scheduler.update(plan, tokens(plan));
    }
    expect(chunks).toEqual(['prefill r0@0 0+8', 'prefill r0@0 8+7', 'prefill r0@0 15+2 last']);
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
    expect(describe_(plan)).toBe('prefill r1@0 0+4 last');
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
    let defer = true;
    const scheduler = new Scheduler(kv, {
      maxPrefillTokens: 8,
      maxWaiting: 10,
      prefix: {
        cachedPrefix: (id, limit) => {
          asked.push([id, limit]);
          if (id === 'r1' && defer) return null;
          return 16;
        },
      },
    });
    const [a, b] = createRequests(2, { promptTokens: 20 });
    scheduler.addRequest(a!);
    scheduler.addRequest(b!);
    const plans: string[] = [];
    for (let plan = scheduler.schedule(); plan?.prefill.length; plan = scheduler.schedule()) {
      plans.push(describe_(plan));
      scheduler.update(plan, tokens(plan));
      defer = false;
    }
    // The limit keeps the prompt's last token computed; r1, deferred once (it shares what r0
    // computes), is asked again in the next step.
    expect(asked).toEqual([
      ['r0', 19],
      ['r1', 19],
      ['r1', 19],
    ]);
    expect(plans[0]).toBe('prefill r0@0 16+4 last');
    expect(plans[1]).toMatch(/^prefill r1@1 16\+4 last; decode r0@0:20/);
    expect([kv.length(0), kv.length(1)]).toEqual([21, 20]);
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
