// Admit: whether a chat completion may start, decided before a byte of its body is read —
// rates per client, requests in flight (the gateway's and the client's), and the memory its
// body may take. An admitted request holds a Ticket until it ends; releasing the ticket frees
// every reservation and refunds the tokens it did not use (docs/gateway.md).
import { ApiError, limited } from './api-error.js';
import { ApiKeys, MinuteRate } from './limits.js';
import { BODY_COST_FACTOR, MemoryBudget } from './memory-budget.js';

export interface AdmissionLimits {
  keys: readonly string[];
  /** Per client and minute; 0 = unlimited. */
  requestsPerMinute: number;
  tokensPerMinute: number;
  authFailuresPerMinute: number;
  maxInFlight: number;
  /** 0 = no limit per client. */
  maxInFlightPerClient: number;
  maxBodyBytes: number;
  maxImageBytes: number;
  memoryBudgetBytes: number;
}

export class Admission {
  readonly keys: ApiKeys;
  readonly memory: MemoryBudget;
  readonly #requestRate: MinuteRate;
  readonly #tokenRate: MinuteRate;
  readonly #authFailures: MinuteRate;
  /** Requests in flight per client (key, or address without keys). */
  readonly #inFlightOf = new Map<string, number>();
  #inFlight = 0;

  constructor(private readonly limits: AdmissionLimits) {
    this.keys = new ApiKeys(limits.keys);
    this.memory = new MemoryBudget(limits.memoryBudgetBytes);
    this.#requestRate = new MinuteRate(limits.requestsPerMinute);
    this.#tokenRate = new MinuteRate(limits.tokensPerMinute);
    this.#authFailures = new MinuteRate(limits.authFailuresPerMinute);
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  /**
   * Checks an API key when keys are configured: undefined when it may pass, else the error.
   * Guessing keys costs: an address with too many failures waits, before its key is checked.
   */
  authenticate(key: string | undefined, address: string): ApiError | undefined {
    if (!this.keys.enabled) return undefined;
    const wait = this.#authFailures.retryAfter(address);
    if (wait) {
      return limited(
        'too many failed authentications from this address; retry later',
        'auth_rate_limited',
        wait,
      );
    }
    if (this.keys.check(key)) return undefined;
    this.#authFailures.add(address, 1);
    return new ApiError({
      status: 401,
      message: 'Incorrect or missing API key: send `Authorization: Bearer <key>`',
      code: 'invalid_api_key',
    });
  }

  /**
   * Admits a request of `client` whose body is `bodyBytes` at most (its declared length, or
   * the body limit when it comes chunked), or throws the 413/429 that says why not. The
   * request is charged to its rate in the same turn as the check, so N requests at once
   * against a limit of M admit exactly M; failures and disconnects count too.
   */
  admit(client: string, bodyBytes: number): Ticket {
    const waitRequests = this.#requestRate.retryAfter(client);
    const waitTokens = this.#tokenRate.retryAfter(client);
    if (waitRequests || waitTokens) {
      throw limited(
        `rate limit reached: ${waitRequests ? `${this.#requestRate.limit} requests` : `${this.#tokenRate.limit} tokens`} per minute`,
        'rate_limit_exceeded',
        Math.max(waitRequests, waitTokens),
      );
    }
    if (this.#inFlight >= this.limits.maxInFlight) {
      throw limited(
        `the gateway is handling ${this.#inFlight} requests, its limit`,
        'overloaded',
        1,
      );
    }
    const cost = BODY_COST_FACTOR * bodyBytes;
    if (cost > this.memory.limit) {
      throw new ApiError({
        status: 413,
        message: `a body of ${bodyBytes} bytes needs ${cost} bytes of the gateway's memory budget of ${this.memory.limit}`,
        code: 'body_too_large',
      });
    }
    const mine = this.#inFlightOf.get(client) ?? 0;
    const perClient = this.limits.maxInFlightPerClient;
    if (perClient > 0 && mine >= perClient) {
      throw limited(
        `this key has ${mine} requests in flight, its limit`,
        'too_many_concurrent_requests',
        1,
      );
    }
    const releaseBody = this.memory.reserve(cost);
    if (!releaseBody) {
      throw limited(
        `the gateway's memory budget is in use by requests in flight (${this.memory.used} of ${this.memory.limit} bytes); retry shortly`,
        'memory_budget',
        1,
      );
    }
    this.#inFlight++;
    this.#inFlightOf.set(client, mine + 1);
    this.#requestRate.add(client, 1);
    return new Ticket(this, client, releaseBody);
  }

  /** @internal Ticket's way back: frees one request's place. */
  leave(client: string): void {
    this.#inFlight--;
    const left = (this.#inFlightOf.get(client) ?? 1) - 1;
    if (left > 0) this.#inFlightOf.set(client, left);
    else this.#inFlightOf.delete(client);
  }

  /** @internal Charges (or, negative, refunds) tokens to a client's rate. */
  chargeTokens(client: string, tokens: number): void {
    this.#tokenRate.add(client, tokens);
  }

  get maxImageBytes(): number {
    return this.limits.maxImageBytes;
  }
}

/** One admitted request's reservations; `release` (idempotent) gives them all back. */
export class Ticket {
  readonly #releases: Array<() => void> = [];
  #reservedTokens = 0;
  #usedTokens = 0;
  #released = false;

  constructor(
    private readonly admission: Admission,
    readonly client: string,
    releaseBody: () => void,
  ) {
    this.#releases.push(releaseBody);
  }

  /** Images fetched over HTTP take up to their byte cap each: reserved before any fetch. */
  reserveImages(count: number): void {
    if (count === 0) return;
    const release = this.admission.memory.reserve(count * this.admission.maxImageBytes);
    if (!release) {
      throw limited(
        `the gateway's memory budget cannot hold ${count} more fetched images now; retry shortly`,
        'memory_budget',
        1,
      );
    }
    this.#releases.push(release);
  }

  /**
   * The completion budget, charged to the token rate with the request and settled at the
   * end, so concurrent requests cannot overspend the rate between them.
   */
  reserveTokens(tokens: number): void {
    this.#reservedTokens += tokens;
    this.admission.chargeTokens(this.client, tokens);
  }

  /** Tokens the request has used so far (prompt, then prompt + completion). */
  useTokens(tokens: number): void {
    this.#usedTokens = tokens;
  }

  release(): void {
    if (this.#released) return;
    this.#released = true;
    for (const release of this.#releases) release();
    this.admission.leave(this.client);
    // The reservation becomes what was used, for failures and disconnects too.
    this.admission.chargeTokens(this.client, this.#usedTokens - this.#reservedTokens);
  }
}
