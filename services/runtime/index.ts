// What services may import from the runtime.
export * from './config.js';
export * from './logger.js';
export * from './errors.js';
export * from './tracing.js';
export * from './metrics.js';
export * from './call-context.js';
export * from './grpc-server.js';
export * from './grpc-client.js';
export * from './grpc-tls.js';
export * from './health.js';
export * from './service.js';
export * from './paths.js';
export * from './proto-writer.js';
export * from './shutdown.js';
export * from './worker.js';
export * from './bench-service.js';
export * from './sub-images-hash.js';
