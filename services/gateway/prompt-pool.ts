// Long prompts are templated and tokenized in a small pool of threads, so one client's
// maximal prompt (a second of work at idefics2-8b's caps) never stalls the event loop that
// every other request shares. Short ones stay inline: a thread hop costs more than they do.
import { Piscina } from 'piscina';
import type { PromptInput } from './prompt.js';

export class PromptPool {
  private readonly piscina: Piscina<PromptInput, Int32Array>;

  constructor({ modelDir, threads }: { modelDir: string; threads: number }) {
    this.piscina = new Piscina({
      filename: new URL('./prompt-worker.js', import.meta.url).href,
      // Threads start with the first long prompt, not with the gateway: most deployments
      // rarely need them, and a thread still loading at shutdown would be cut short.
      minThreads: 0,
      maxThreads: threads,
      // The gateway's in-flight limit bounds what can wait here.
      maxQueue: Infinity,
      idleTimeout: 60_000,
      workerData: { modelDir },
    });
  }

  /** Prompts waiting for a thread. */
  get queueDepth(): number {
    return this.piscina.queueSize;
  }

  async ids(input: PromptInput, signal: AbortSignal): Promise<number[]> {
    return Array.from(await this.piscina.run(input, { signal }));
  }

  close(): Promise<void> {
    return this.piscina.close({ force: false });
  }
}
