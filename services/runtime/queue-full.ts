// The one overload error: a bounded queue that is full refuses new work with it (the
// preprocessor's pool, the encoder's batcher, the decoder's scheduler), and the stage answers
// RESOURCE_EXHAUSTED with `loupe-reason: queue_full` (queueFull in errors.ts), which the
// gateway turns into a 429 (docs/architecture.md, "Errors as statuses with a reason").
// No imports: the decoder's scheduler throws it inside its engine thread, which has no gRPC.
export class QueueFullError extends Error {
  override readonly name = 'QueueFullError';
}
