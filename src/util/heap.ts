/**
 * Move heap[i] down a binary min-heap (by `less`) to its place: the step of a k-way merge
 * after its top was consumed or replaced.
 */
export function siftDown<T>(heap: T[], i0: number, less: (a: T, b: T) => boolean): void {
  let i = i0;
  for (;;) {
    const l = 2 * i + 1;
    if (l >= heap.length) return;
    const r = l + 1;
    const m = r < heap.length && less(heap[r], heap[l]) ? r : l;
    if (!less(heap[m], heap[i])) return;
    [heap[i], heap[m]] = [heap[m], heap[i]];
    i = m;
  }
}
