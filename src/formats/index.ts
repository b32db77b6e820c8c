export * from './layer.js';
export * from './open.js';
export * from './raw/index.js';
export * from './types.js';
