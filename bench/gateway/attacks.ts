// The attacks of `npm run bench:gateway` (issue 18's drills, run as load): each sends one kind of
// hostile traffic to the stack on loopback, continuously, from one or a few clients, until it is
// stopped; meanwhile the bench times another client's small request. startAttack runs one in a
// worker thread of its own, so that its work neither waits on nor delays the event loop of the
// measuring client, at nice 19 (see the end of the file). Its HTTP clients connect from 127.0.0.2 (loopback too): the gateway, keyless
// here, keys its per-client limits by address, so the attacker is another client than the one
// measured at 127.0.0.1. stop() ends every request, stream and connection the attack opened and
// resolves with what it sent; then the thread exits, or stop() says that something was left.
import { request as httpRequest, Agent, type ClientRequest, type IncomingMessage } from 'node:http';
import { connect, constants as h2, type ClientHttp2Session } from 'node:http2';
import { setPriority } from 'node:os';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import { Client, credentials, Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { costlyImages, declaredImageFrameHead, patternJpeg } from '../lib/images.js';
import { GenerateRequest } from '../../proto/gen/loupe/v1/decoder.js';
import {
  EncodeRequest,
  EncoderClient,
  type EncoderInfo,
} from '../../proto/gen/loupe/v1/encoder.js';
import { Dtype } from '../../proto/gen/loupe/v1/tensor.js';
import { subImagesHash } from '../../services/runtime/sub-images-hash.js';

/** Where the stack listens, and the limits the attacks aim at. */
export interface Target {
  /** The gateway's API, host:port. */
  gateway: string;
  /** host:port of each service's /metrics. */
  metrics: { gateway: string; preprocessor: string; encoder: string; decoder: string };
  /** gRPC host:port of each stage. */
  preprocessor: string;
  encoder: string;
  decoder: string;
  /** The `model` of chat requests. */
  model: string;
  /** The checkpoint's <image> token id, for prompts sent to the decoder directly. */
  imageTokenId: number;
  /** The gateway's body limit, bytes (LOUPE_GATEWAY_MAX_BODY_BYTES). */
  maxBodyBytes: number;
  /** Requests one client may have in flight at the gateway; 0 = no limit. */
  maxInFlightPerClient: number;
  /** The gateway's per-stream write timeout, ms (LOUPE_GATEWAY_STREAM_WRITE_TIMEOUT_MS). */
  streamWriteTimeoutMs: number;
  /** The preprocessor's pixel limit (LOUPE_PREPROCESSOR_MAX_IMAGE_PIXELS). */
  maxImagePixels: number;
}

/** What an attack sent, once stopped. */
export interface AttackReport {
  /** The attack, in words. */
  what: string;
  /** Requests, calls or streams sent (begun). */
  sent: number;
  /** Bytes of request bodies and messages written. */
  bytes: number;
  /** How they ended (an HTTP status, a gRPC code and reason, ...) → how many. */
  outcomes: Record<string, number>;
  /** stop() found work of the attack still alive after it (its thread was terminated). */
  leftBehind?: boolean;
}

export interface RunningAttack {
  /** Ends all of the attack's work; resolves once every request and connection is closed. */
  stop(): Promise<AttackReport>;
}

/** The address attacking HTTP clients connect from. */
const ATTACKER = '127.0.0.2';
const MiB = 2 ** 20;
const mb = (bytes: number) =>
  bytes < 1e6 ? `${(bytes / 1e3).toFixed(1)} kB` : `${(bytes / 1e6).toFixed(1)} MB`;
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** The bookkeeping every attack shares: its loops, what they sent, how it ended, its stop. */
class Run {
  stopping = false;
  sent = 0;
  bytes = 0;
  readonly outcomes: Record<string, number> = {};
  readonly #aborts = new Set<() => void>();
  readonly #loops: Array<Promise<void>> = [];

  count(outcome: string): void {
    this.outcomes[outcome] = (this.outcomes[outcome] ?? 0) + 1;
  }

  /** Calls `abort` at stop (at once if stopping already); returns its removal. */
  onStop(abort: () => void): () => void {
    if (this.stopping) abort();
    this.#aborts.add(abort);
    return () => this.#aborts.delete(abort);
  }

  /** Runs `step` back to back in each of `clients` loops until stop. */
  loop(clients: number, step: (client: number) => Promise<void>): void {
    for (let client = 0; client < clients; client++) {
      this.#loops.push(
        (async () => {
          while (!this.stopping) {
            try {
              await step(client);
            } catch (error) {
              // A failure of the attacker's own (a refused connection): counted, and no spin.
              this.count(`error ${(error as NodeJS.ErrnoException).code ?? String(error)}`);
              await sleep(50);
            }
          }
        })(),
      );
    }
  }

  /** Stops: aborts what is in flight, waits for every loop, then `close`s what they shared. */
  async stop(what: string, close?: () => void | Promise<void>): Promise<AttackReport> {
    this.stopping = true;
    for (const abort of this.#aborts) abort();
    await Promise.all(this.#loops);
    await close?.();
    return { what, sent: this.sent, bytes: this.bytes, outcomes: this.outcomes };
  }
}

/** A request to the gateway from the attacker's address, on its own connection unless `agent`. */
function post(
  target: Target,
  headers: Record<string, string | number>,
  { agent, path = '/v1/chat/completions' }: { agent?: Agent; path?: string } = {},
): ClientRequest {
  const [host, port] = target.gateway.split(':') as [string, string];
  const req = httpRequest({
    host,
    port: Number(port),
    path,
    method: 'POST',
    headers,
    localAddress: ATTACKER,
    agent: agent ?? false,
  });
  req.on('error', () => {}); // a destroyed or refused request ends in 'close', counted there
  return req;
}

/** Sends `req` with `body`; resolves once it is over, with its status (undefined: none came). */
function exchange(
  run: Run,
  req: ClientRequest,
  body: Buffer,
  { cancelAfterMs }: { cancelAfterMs?: number } = {},
): Promise<{ status?: number; complete: boolean }> {
  return new Promise((resolve) => {
    let status: number | undefined;
    let complete = false;
    const untrack = run.onStop(() => req.destroy());
    const timer =
      cancelAfterMs === undefined ? undefined : setTimeout(() => req.destroy(), cancelAfterMs);
    req.on('response', (res: IncomingMessage) => {
      status = res.statusCode;
      res.on('end', () => (complete = true));
      res.on('error', () => {});
      res.resume();
    });
    req.on('close', () => {
      clearTimeout(timer);
      untrack();
      resolve({ status, complete });
    });
    run.sent++;
    run.bytes += body.length;
    req.end(body);
  });
}

/** Writes `total` bytes of `chunk` to `stream` until it is answered, closed, or the run stops. */
async function pump(
  run: Run,
  stream: NodeJS.WritableStream & { destroyed: boolean },
  chunk: Buffer,
  total: number,
  answered: () => boolean,
  settled: Promise<unknown>,
): Promise<void> {
  for (let sent = 0; sent < total && !answered() && !stream.destroyed && !run.stopping;) {
    const piece = chunk.subarray(0, Math.min(chunk.length, total - sent));
    sent += piece.length;
    run.bytes += piece.length;
    if (!stream.write(piece))
      await Promise.race([new Promise((resolve) => stream.once('drain', resolve)), settled]);
  }
}

const chatBody = (target: Target, content: unknown, extra: object = {}) =>
  Buffer.from(
    JSON.stringify({
      model: target.model,
      max_tokens: 1,
      messages: [{ role: 'user', content }],
      ...extra,
    }),
  );

const imageContent = (mime: string, image: Buffer, text = 'What is in this picture?') => [
  { type: 'image_url', image_url: { url: `data:${mime};base64,${image.toString('base64')}` } },
  { type: 'text', text },
];

/** The value of a metric at `address` (every series of it summed); NaN if absent. */
export async function metricValue(address: string, name: string): Promise<number> {
  const text = await (await fetch(`http://${address}/metrics`)).text();
  let sum = NaN;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name) || !/[ {]/.test(line[name.length] ?? '')) continue;
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    sum = (Number.isNaN(sum) ? 0 : sum) + value;
  }
  return sum;
}

/**
 * Waits until no stage has work in flight or queued (the gateway's requests, the
 * preprocessor's and the encoder's queues, the decoder's sequences), for up to `timeoutMs`;
 * resolves with whether it got there.
 */
export async function untilIdle(target: Target, timeoutMs = 60_000): Promise<boolean> {
  const { metrics } = target;
  const busy: Array<[string, string]> = [
    [metrics.gateway, 'loupe_gateway_requests_in_flight'],
    [metrics.preprocessor, 'loupe_preprocessor_requests_in_flight'],
    [metrics.preprocessor, 'loupe_preprocessor_queue_depth'],
    [metrics.encoder, 'loupe_encoder_queue_depth'],
    [metrics.decoder, 'loupe_decoder_num_requests_running'],
    [metrics.decoder, 'loupe_decoder_num_requests_waiting'],
  ];
  const until = Date.now() + timeoutMs;
  for (;;) {
    const values = await Promise.all(busy.map(([at, name]) => metricValue(at, name)));
    // A metric a stage does not have counts as idle; one at 0 is idle.
    if (values.every((v) => !(v > 0))) return true;
    if (Date.now() > until) return false;
    await sleep(200);
  }
}

// The attacks, one per drill of issue 18.

/** (1) Clients that disconnect about 0.3 s into an image request, back to back. */
async function cancelStorm(target: Target): Promise<RunningAttack> {
  const clients = 2;
  const [width, height] = [3000, 2000];
  const image = await patternJpeg(width, height);
  const body = chatBody(target, imageContent('image/jpeg', image), { max_tokens: 64 });
  const run = new Run();
  let k = 0;
  run.loop(clients, async () => {
    const cancelAfterMs = 250 + ((k++ * 37) % 101); // 250-350 ms
    const req = post(target, { 'content-type': 'application/json', 'content-length': body.length });
    const { status, complete } = await exchange(run, req, body, { cancelAfterMs });
    run.count(complete ? `answered ${status}` : 'disconnected');
  });
  return {
    stop: () =>
      run.stop(
        `${clients} clients each send a ${width}×${height} JPEG (${mb(image.length)}) for 64 tokens and disconnect 250-350 ms in, back to back`,
      ),
  };
}

/** What an HTTP/2 gRPC stream was answered with: `grpc <code>/<reason>`. */
const grpcAnswer = (headers: Record<string, unknown>) => {
  const code = Number(headers['grpc-status']);
  const reason = headers['loupe-reason'];
  return `gRPC ${status[code] ?? String(headers[':status'])}${reason ? `/${String(reason)}` : ''}`;
};

/**
 * (2) Oversized messages: gRPC Preprocess calls declaring a 60 MB image, written 1 MiB at a time
 * until answered (two clients, on a connection each); and HTTP bodies over the gateway's limit,
 * one with a Content-Length over it, the next chunked past it (one client).
 */
async function oversized(target: Target): Promise<RunningAttack> {
  const run = new Run();
  const chunk = Buffer.alloc(MiB, 0x41);
  const declared = 60 * 1000 * 1000;
  const sessions: Array<ClientHttp2Session | undefined> = [];
  const session = (client: number) => {
    let s = sessions[client];
    if (!s || s.closed || s.destroyed) {
      // (The client's own session memory allows the writes it queues.)
      s = connect(`http://${target.preprocessor}`, { maxSessionMemory: 256 });
      s.on('error', () => {});
      sessions[client] = s;
    }
    return s;
  };
  run.loop(2, async (client) => {
    const stream = session(client).request({
      ':method': 'POST',
      ':path': '/loupe.v1.Preprocessor/Preprocess',
      'content-type': 'application/grpc',
      te: 'trailers',
    });
    stream.on('error', () => {}); // reset by the server once it has answered
    const untrack = run.onStop(() => stream.close(h2.NGHTTP2_CANCEL));
    let answer: Record<string, unknown> | undefined;
    const onHeaders = (headers: Record<string, unknown>) => {
      if (headers['grpc-status'] !== undefined || answer === undefined) answer = headers;
    };
    stream.on('response', onHeaders);
    stream.on('trailers', onHeaders);
    stream.resume();
    const closed = new Promise<void>((resolve) => stream.once('close', resolve));
    const answered = new Promise<void>((resolve) => stream.once('response', () => resolve()));
    const head = declaredImageFrameHead(declared);
    run.sent++;
    run.bytes += head.length;
    stream.write(head);
    await pump(
      run,
      stream,
      chunk,
      declared,
      () => answer !== undefined,
      Promise.race([answered, closed]),
    );
    await Promise.race([answered, closed]);
    if (!stream.closed) stream.close(h2.NGHTTP2_CANCEL);
    await closed;
    untrack();
    run.count(
      answer ? grpcAnswer(answer) : `gRPC ${run.stopping ? 'cut at stop' : 'closed unanswered'}`,
    );
  });

  const over = target.maxBodyBytes + MiB;
  let j = 0;
  run.loop(1, async () => {
    const chunked = j++ % 2 === 1;
    const req = post(target, {
      'content-type': 'application/json',
      ...(chunked ? {} : { 'content-length': over }),
    });
    const untrack = run.onStop(() => req.destroy());
    let status: number | undefined;
    const closed = new Promise<void>((resolve) => req.once('close', resolve));
    const answered = new Promise<void>((resolve) =>
      req.once('response', (res: IncomingMessage) => {
        status = res.statusCode;
        res.on('error', () => {});
        res.resume();
        resolve();
      }),
    );
    run.sent++;
    await pump(run, req, chunk, over, () => status !== undefined, Promise.race([answered, closed]));
    if (status === undefined && !req.destroyed && !run.stopping) req.end();
    await Promise.race([answered, closed]);
    req.destroy(); // the rest of the body is never sent
    await closed;
    untrack();
    const unanswered = run.stopping ? 'cut at stop' : 'closed unanswered';
    run.count(`HTTP ${chunked ? 'chunked' : 'declared'} ${status ?? unanswered}`);
  });

  return {
    stop: () =>
      run.stop(
        `2 clients send gRPC Preprocess calls declaring ${mb(declared)}, 1 MiB writes until answered; 1 client sends HTTP bodies of ${mb(over)}, over the ${mb(target.maxBodyBytes)} limit (declared, then chunked)`,
        () => sessions.forEach((s) => s?.destroy()),
      ),
  };
}

/**
 * (3) Images that cost far more to decode than their bytes, near the preprocessor's pixel limit:
 * a CMYK JPEG, a palette GIF and a 16-bit grey PNG, each sent back to back by a client of its own
 * (so three at once).
 */
async function costlyDecodes(target: Target): Promise<RunningAttack> {
  // 98% of the pixel limit (a square), within 100 megapixels.
  const side = Math.floor(Math.sqrt(Math.min(target.maxImagePixels, 1e8) * 0.98));
  const images = await costlyImages(side);
  const bodies = images.map(([, mime, image]) =>
    chatBody(target, imageContent(mime, image), { image_splitting: false }),
  );
  const run = new Run();
  run.loop(images.length, async (client) => {
    const body = bodies[client]!;
    const req = post(target, { 'content-type': 'application/json', 'content-length': body.length });
    const { status, complete } = await exchange(run, req, body);
    run.count(`${images[client]![0]} ${complete ? status : 'cut at stop'}`);
  });
  return {
    stop: () =>
      run.stop(
        `3 clients each send a ${side}×${side} image back to back: ${images.map(([name, , image]) => `${name} (${mb(image.length)})`).join(', ')}`,
      ),
  };
}

/**
 * (4) gRPC inputs no gateway sends, straight to the stages, back to back, a client each: NaN
 * image embeddings to the decoder, a prompt token id past the vocabulary to the decoder, and
 * an Encode whose content_hash names other pixels.
 */
async function foreignGrpc(target: Target): Promise<RunningAttack> {
  const encoderInfo = new EncoderClient(target.encoder, credentials.createInsecure());
  const info = await new Promise<EncoderInfo>((resolve, reject) =>
    encoderInfo.info({}, (error, response) => (error ? reject(error) : resolve(response))),
  );
  encoderInfo.close();
  const hidden = info.hiddenSize;
  const image = target.imageTokenId;
  const rows = Buffer.alloc(2 * hidden * 2); // float16 zeros
  rows.writeUInt16LE(0x7e00, 2 * (hidden + 5)); // NaN at row 1, column 5
  const nan = Buffer.from(
    GenerateRequest.encode(
      GenerateRequest.fromPartial({
        promptTokenIds: [1, image, image, 2],
        images: [{ embeddings: { dtype: Dtype.DTYPE_FLOAT16, shape: [2, hidden], data: rows } }],
        maxNewTokens: 2,
      }),
    ).finish(),
  );
  // A prompt token id past the vocabulary (the largest uint32).
  const token = Buffer.from(
    GenerateRequest.encode(
      GenerateRequest.fromPartial({ promptTokenIds: [1, 2 ** 32 - 1], maxNewTokens: 2 }),
    ).finish(),
  );
  // One sub-image of the model's largest size, with the hash of other pixels.
  const side = info.maxSide;
  const pixels = (fill: number) => Buffer.alloc(3 * side * side, fill);
  const lie = Buffer.from(
    EncodeRequest.encode({
      subImages: [
        {
          height: side,
          width: side,
          pixels: { dtype: Dtype.DTYPE_UINT8, shape: [3, side, side], data: pixels(1) },
        },
      ],
      contentHash: subImagesHash([{ height: side, width: side, pixels: pixels(2) }]),
      split: false,
      outputDtype: Dtype.DTYPE_FLOAT16,
    }).finish(),
  );
  const decoder = new Client(target.decoder, credentials.createInsecure());
  const encoder = new Client(target.encoder, credentials.createInsecure());
  const kinds: Array<[string, Client, string, Buffer, boolean]> = [
    ['NaN embeddings', decoder, '/loupe.v1.Decoder/Generate', nan, true],
    ['token id past the vocabulary', decoder, '/loupe.v1.Decoder/Generate', token, true],
    ['wrong content_hash', encoder, '/loupe.v1.Encoder/Encode', lie, false],
  ];
  const same = (b: Buffer) => b;
  const run = new Run();
  run.loop(kinds.length, async (client) => {
    const [name, stage, path, body, streaming] = kinds[client]!;
    run.sent++;
    run.bytes += body.length;
    const error = await new Promise<ServiceError | null>((resolve) => {
      const options = { deadline: Date.now() + 10_000 };
      if (streaming) {
        const call = stage.makeServerStreamRequest(path, same, same, body, new Metadata(), options);
        const untrack = run.onStop(() => call.cancel());
        let done = false;
        const end = (e: ServiceError | null) => {
          if (done) return;
          done = true;
          untrack();
          resolve(e);
        };
        call.on('data', () => {});
        call.on('error', end);
        call.on('end', () => end(null));
      } else {
        const call = stage.makeUnaryRequest(
          path,
          same,
          same,
          body,
          new Metadata(),
          options,
          (e) => {
            untrack();
            resolve(e);
          },
        );
        const untrack = run.onStop(() => call.cancel());
      }
    });
    const reason = error?.metadata?.get('loupe-reason')[0];
    run.count(`${name} ${status[error?.code ?? status.OK]}${reason ? `/${String(reason)}` : ''}`);
  });
  return {
    stop: () =>
      run.stop(
        `3 clients call the stages directly, back to back: NaN image embeddings and a token id past the vocabulary to the decoder, an Encode of a ${side}×${side} sub-image with another's content_hash`,
        () => {
          decoder.close();
          encoder.close();
        },
      ),
  };
}

/**
 * (5) What a web page could send a keyless local gateway: a foreign Host (DNS rebinding), a
 * foreign Origin, a text/plain body; a client each, on a kept-alive connection, back to back.
 */
async function foreignHttp(target: Target): Promise<RunningAttack> {
  const body = chatBody(target, 'Hello, who are you?');
  const kinds: Array<[string, Record<string, string>]> = [
    ['foreign Host', { host: 'attacker.example', 'content-type': 'application/json' }],
    [
      'foreign Origin',
      {
        host: target.gateway,
        origin: 'https://attacker.example',
        'content-type': 'application/json',
      },
    ],
    ['text/plain', { host: target.gateway, 'content-type': 'text/plain' }],
  ];
  const agents = kinds.map(() => new Agent({ keepAlive: true, maxSockets: 1 }));
  const run = new Run();
  run.loop(kinds.length, async (client) => {
    const [name, headers] = kinds[client]!;
    const req = post(
      target,
      { ...headers, 'content-length': body.length },
      {
        agent: agents[client]!,
      },
    );
    const { status: code } = await exchange(run, req, body);
    run.count(`${name} ${code ?? 'cut at stop'}`);
  });
  return {
    stop: () =>
      run.stop(
        '3 clients, each on a kept-alive connection, back to back: a foreign Host, a foreign Origin, a text/plain body',
        () => agents.forEach((a) => a.destroy()),
      ),
  };
}

/**
 * (6) Slow readers: streaming requests (512 tokens, 20 top logprobs each, so that chunks are
 * large) whose client never reads a byte of the answer, more of them than one client may have
 * in flight; each connection is held until the gateway's write timeout has passed, then
 * replaced. One the gateway closes first (a refusal, an answer that fit in the socket buffers,
 * a stream it ended) is replaced a second later.
 */
async function slowReaders(target: Target): Promise<RunningAttack> {
  const streams = (target.maxInFlightPerClient || 32) + 16;
  const holdMs = target.streamWriteTimeoutMs + 15_000;
  const body = chatBody(target, 'Tell me a long story about a river, a stone and an apple.', {
    max_tokens: 512,
    stream: true,
    logprobs: true,
    top_logprobs: 20,
  });
  const timeoutsBefore = await metricValue(
    target.metrics.gateway,
    'loupe_gateway_stream_write_timeouts_total',
  );
  const run = new Run();
  run.loop(streams, async () => {
    const req = post(target, { 'content-type': 'application/json', 'content-length': body.length });
    let status: number | undefined;
    // The answer is never read: no 'data' listener, so the socket stops being read once a few
    // kilobytes wait, and the gateway's writes wait on the client once the kernel's socket
    // buffers are full (on loopback they can hold a whole answer).
    req.on('response', (res: IncomingMessage) => {
      status = res.statusCode;
      res.on('error', () => {});
    });
    const closed = new Promise<void>((resolve) => req.once('close', resolve));
    let wake = () => {};
    const held = new Promise<void>((resolve) => (wake = resolve));
    const timer = setTimeout(wake, holdMs);
    const untrack = run.onStop(wake);
    run.sent++;
    run.bytes += body.length;
    req.end(body);
    const byServer = await Promise.race([held.then(() => false), closed.then(() => true)]);
    clearTimeout(timer);
    req.destroy();
    await closed;
    run.count(status === undefined ? 'no answer yet' : `HTTP ${status}`);
    if (byServer) {
      const pause = setTimeout(wake, 1000);
      await held;
      clearTimeout(pause);
    }
    untrack();
  });
  return {
    stop: async () => {
      const report = await run.stop(
        `1 client keeps ${streams} streaming requests (512 tokens, top_logprobs 20) open and never reads them, each held ${holdMs / 1000} s then replaced`,
      );
      const timeouts =
        (await metricValue(target.metrics.gateway, 'loupe_gateway_stream_write_timeouts_total')) -
        timeoutsBefore;
      if (Number.isNaN(timeouts) || timeouts > 0)
        report.outcomes['ended by the gateway (write timeout)'] = timeouts;
      return report;
    },
  };
}

export const attacks = {
  'cancel storm': cancelStorm,
  'oversized messages': oversized,
  'costly decodes': costlyDecodes,
  'gRPC inputs no gateway sends': foreignGrpc,
  'foreign Host/Origin, text/plain': foreignHttp,
  'slow readers': slowReaders,
} satisfies Record<string, (target: Target) => Promise<RunningAttack>>;
export type AttackName = keyof typeof attacks;

type FromThread =
  | { kind: 'started' }
  | { kind: 'failed'; message: string }
  | { kind: 'stopped'; report: AttackReport };

/**
 * Starts `name` against `target` in a worker thread of its own; resolves once the attack runs
 * (its inputs made, its clients sending).
 */
export async function startAttack(name: AttackName, target: Target): Promise<RunningAttack> {
  const worker = new Worker(new URL(import.meta.url), {
    workerData: { benchAttack: name, target },
  });
  let failure: Error | undefined;
  const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
  worker.on('error', (error) => (failure = error));
  const next = () =>
    new Promise<FromThread>((resolve, reject) => {
      worker.once('message', resolve);
      void exited.then(() =>
        reject(failure ?? new Error(`the ${name} attack's thread exited unexpectedly`)),
      );
    });
  const started = await next();
  if (started.kind !== 'started')
    throw new Error(
      `the ${name} attack failed to start: ${(started as { message: string }).message}`,
    );
  return {
    stop: async () => {
      worker.postMessage('stop');
      const stopped = await next();
      if (stopped.kind !== 'stopped') throw new Error(`the ${name} attack failed`);
      // Its thread ends by itself once nothing of the attack is left: no socket, no timer.
      const clean = await Promise.race([exited.then(() => true), sleep(10_000).then(() => false)]);
      if (!clean) await worker.terminate();
      return { ...stopped.report, leftBehind: !clean };
    },
  };
}

// In an attack's thread: start it, report, stop it when told. The thread runs at the lowest
// CPU priority (nice 19; per thread on Linux, pid 0 names the calling thread): the attacker
// stands for clients on other machines, and on a machine of two cores its own work would
// otherwise be taken from the stack it attacks, which measures the machine, not the stack.
const job = workerData as { benchAttack?: AttackName; target: Target } | null;
if (!isMainThread && parentPort && job?.benchAttack) {
  try {
    setPriority(0, 19);
  } catch {
    // not permitted here: the attack runs at normal priority
  }
  const port = parentPort;
  const send = (message: FromThread) => port.postMessage(message);
  attacks[job.benchAttack](job.target).then(
    (running) => {
      send({ kind: 'started' });
      port.once('message', () => {
        void running.stop().then(
          (report) => {
            send({ kind: 'stopped', report });
            port.close();
          },
          (error: unknown) => {
            send({ kind: 'failed', message: String(error) });
            port.close();
          },
        );
      });
    },
    (error: unknown) => {
      send({ kind: 'failed', message: error instanceof Error ? error.message : String(error) });
      port.close();
    },
  );
}
