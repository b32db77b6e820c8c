export * from './block-map.js';
export * from './build.js';
export * from './codec.js';
export * from './kinds.js';
export * from './of-image.js';
export * from './trace.js';
