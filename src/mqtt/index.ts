export * from './types.js';
export * from './topics.js';
export * from './link.js';
export * from './broker.js';
