/** The serve layer: the library service over HTTP (and its client). */
export * from './http/index.js';
