export * from './idefics2-config.js';
