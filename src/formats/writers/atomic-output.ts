import { randomBytes } from 'node:crypto';
import { type FileHandle, open, rename, unlink } from 'node:fs/promises';
import * as path from 'node:path';
import { StrataError } from '../../util/errors.js';

/**
 * An output file that appears whole or not at all: it is written under a temporary name in
 * the same folder and renamed over `outPath` only by `commit`; `abort` removes it.
 */
export interface AtomicOutput {
  readonly fh: FileHandle;
  /** Close (after fdatasync when `sync`) and rename into place. */
  commit(sync?: boolean): Promise<void>;
  /** Close and remove the temporary file (never throws). */
  abort(): Promise<void>;
}

export async function openAtomicOutput(outPath: string): Promise<AtomicOutput> {
  const abs = path.resolve(outPath);
  const tmp = path.join(
    path.dirname(abs),
    `.${path.basename(abs)}.strata-${process.pid}-${randomBytes(4).toString('hex')}.tmp`,
  );
  let fh: FileHandle;
  try {
    fh = await open(tmp, 'wx', 0o644);
  } catch (e) {
    throw new StrataError('IO', `cannot create output: ${(e as Error).message}`, { file: outPath }, { cause: e });
  }
  let open_ = true;
  return {
    fh,
    async commit(sync = false) {
      if (sync) await fh.datasync();
      await fh.close();
      open_ = false;
      try {
        await rename(tmp, abs);
      } catch (e) {
        await unlink(tmp).catch(() => {});
        throw new StrataError(
          'IO',
          `cannot put the output in place: ${(e as Error).message}`,
          { file: outPath },
          { cause: e },
        );
      }
    },
    async abort() {
      if (open_) await fh.close().catch(() => {});
      open_ = false;
      await unlink(tmp).catch(() => {});
    },
  };
}
