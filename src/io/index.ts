export * from './byte-source.js';
export * from './cached-source.js';
export * from './file-source.js';
export * from './filter-source.js';
export * from './http-source.js';
export * from './memory-source.js';
export * from './planned-source.js';
export * from './slice-source.js';
