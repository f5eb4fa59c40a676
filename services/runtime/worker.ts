// Starting a worker thread that loads something slow (a model) before it can serve: the
// thread's first message says { kind: 'ready', info } or { kind: 'failed', message }.
import { Worker } from 'node:worker_threads';

/** Starts `url` and waits for its first message; a failure terminates the thread and rejects. */
export async function startWorker<Info>(
  url: URL,
  workerData: unknown,
  what: string,
): Promise<{ worker: Worker; info: Info }> {
  const worker = new Worker(url, { workerData });
  let onMessage: ((message: { kind: string; info?: Info; message?: string }) => void) | undefined;
  let onError: ((error: Error) => void) | undefined;
  let onExit: ((code: number) => void) | undefined;
  try {
    const info = await new Promise<Info>((resolve, reject) => {
      onMessage = (message) => {
        if (message.kind === 'ready') resolve(message.info as Info);
        else if (message.kind === 'failed') reject(new Error(message.message));
      };
      onError = reject;
      onExit = (code) => reject(new Error(`${what} exited (code ${code})`));
      worker.on('message', onMessage).on('error', onError).on('exit', onExit);
    });
    return { worker, info };
  } catch (error) {
    await worker.terminate();
    throw error;
  } finally {
    // Only these three: Worker keeps listeners of its own.
    worker.off('message', onMessage!).off('error', onError!).off('exit', onExit!);
  }
}
