/** Upper bounds that keep hostile input from turning into unbounded work or memory. */
export const LIMITS = {
  /** Largest virtual disk we accept (64 PiB; well past any real image, below 2^53). */
  maxVirtualSize: 2 ** 56,
  /** Deepest backing chain we follow. */
  maxChainDepth: 64,
  /** Largest single metadata table we load into memory at once (bytes). */
  maxTableBytes: 512 * 1024 * 1024,
  /** Largest single read a caller may request (bytes). */
  maxReadBytes: 256 * 1024 * 1024,
} as const;
