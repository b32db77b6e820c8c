import { AsyncLocalStorage } from 'node:async_hooks';

/**
 * Whether the read running now is one somebody waits for (a guest's read during a deploy)
 * rather than background work: carried through every await by AsyncLocalStorage, so the
 * layers below (a store backend's request queue) can let it pass what is queued without a
 * parameter threaded through each of them.
 */
const urgent = new AsyncLocalStorage<boolean>();

/** Run `fn` (and everything it awaits) as an urgent read. */
export function asUrgent<T>(fn: () => Promise<T>): Promise<T> {
  return urgent.run(true, fn);
}

export function isUrgent(): boolean {
  return urgent.getStore() === true;
}
