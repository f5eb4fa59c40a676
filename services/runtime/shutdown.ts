// Runs `stop` once on SIGTERM or SIGINT; a second signal exits at once.
import type { Logger } from './logger.js';

export function onShutdownSignal(
  logger: Logger,
  stop: (signal: NodeJS.Signals) => Promise<void>,
): void {
  let stopping = false;
  const handle = (signal: NodeJS.Signals) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal, exiting now');
      process.exit(1);
    }
    stopping = true;
    logger.info({ signal }, 'shutting down');
    stop(signal).then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ err: error }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', handle);
  process.on('SIGINT', handle);
}
