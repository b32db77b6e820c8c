/** The generation cache lives in util, shared by every file system. */
export { GenCache } from '../../util/gen-cache.js';

/**
 * Inode copies are carved from shared slabs: one ArrayBuffer per 256 inodes instead of one
 * per inode (small off-heap buffers are slow to allocate and to collect).
 */
export class Slab {
  private buf = new Uint8Array(0);
  private used = 0;
  constructor(private readonly piece: number) {}
  copy(src: Uint8Array): Uint8Array {
    if (this.used + this.piece > this.buf.length) {
      this.buf = new Uint8Array(this.piece * 256);
      this.used = 0;
    }
    const out = this.buf.subarray(this.used, this.used + this.piece);
    this.used += this.piece;
    out.set(src.subarray(0, this.piece));
    return out;
  }
}
