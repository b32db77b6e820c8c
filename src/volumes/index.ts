export * from './concat-source.js';
export * from './discover.js';
export * from './gpt.js';
export * from './lvm.js';
export * from './lvm-text.js';
export * from './mbr.js';
export * from './select.js';
export * from './types.js';
