/** Run `fn` over `items` with at most `limit` in flight, results in input order. */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (x: T, i: number) => Promise<R>,
): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/**
 * Run `fn` over what `items` yields with at most `limit` in flight, taking items only as
 * workers are free (a generator's items are made as they are needed, never all held).
 */
export async function eachLimit<T>(items: Iterable<T>, limit: number, fn: (x: T) => Promise<void>): Promise<void> {
  const it = items[Symbol.iterator]();
  let done = false;
  const worker = async () => {
    while (!done) {
      const r = it.next();
      if (r.done) {
        done = true;
        return;
      }
      await fn(r.value);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, limit) }, worker));
}
