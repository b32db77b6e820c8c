/**
 * Content probing by magic lives in the volumes layer (src/volumes/probe.ts): discovery
 * names what each volume holds before any file system is opened. Re-exported here for
 * code that looks for it beside the file-system readers.
 */
export { looksLikeMbr, probeBytes, probeContent } from '../volumes/probe.js';
