import { existsSync } from 'node:fs';
import { type FileHandle, link, open, rename, unlink } from 'node:fs/promises';
import * as path from 'node:path';
import { StrataError } from '../../util/errors.js';

/**
 * An output file that appears whole or not at all: it is written under a temporary name in
 * the same folder and renamed over `outPath` only by `commit`; `abort` removes it. With
 * `overwrite: false` an existing `outPath` is refused before any work, and again at the
 * commit (the temporary file is hard-linked into place, which fails when a file appeared
 * meanwhile).
 */
export interface AtomicOutput {
  readonly fh: FileHandle;
  /** Close (after fdatasync when `sync`) and rename into place. */
  commit(sync?: boolean): Promise<void>;
  /** Close and remove the temporary file (never throws). */
  abort(): Promise<void>;
}

/**
 * The temporary name only has to be unlikely to exist: it is created exclusively ('wx') and
 * another name is tried if it does. (Not node:crypto: loading it costs ~7 ms of a short run.)
 */
function tmpName(abs: string): string {
  const tag = Math.floor(Math.random() * 2 ** 32)
    .toString(16)
    .padStart(8, '0');
  return path.join(path.dirname(abs), `.${path.basename(abs)}.strata-${process.pid}-${tag}.tmp`);
}

async function createTemporary(abs: string, outPath: string): Promise<{ fh: FileHandle; tmp: string }> {
  for (let attempt = 0; ; attempt++) {
    const tmp = tmpName(abs);
    try {
      return { fh: await open(tmp, 'wx', 0o644), tmp };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST' && attempt < 8) continue;
      throw new StrataError('IO', `cannot create output: ${(e as Error).message}`, { file: outPath }, { cause: e });
    }
  }
}

export interface AtomicOutputOptions {
  /** Replace an existing file at the output path (default true; the CLI asks for --force). */
  overwrite?: boolean;
}

function exists(outPath: string): StrataError {
  return new StrataError('USAGE', 'output exists; --force replaces it', { file: outPath });
}

export async function openAtomicOutput(outPath: string, opts: AtomicOutputOptions = {}): Promise<AtomicOutput> {
  const abs = path.resolve(outPath);
  const overwrite = opts.overwrite ?? true;
  if (!overwrite && existsSync(abs)) throw exists(outPath);
  const { fh, tmp } = await createTemporary(abs, outPath);
  let open_ = true;
  return {
    fh,
    async commit(sync = false) {
      if (sync) await fh.datasync();
      await fh.close();
      open_ = false;
      try {
        if (overwrite) await rename(tmp, abs);
        else {
          await link(tmp, abs);
          await unlink(tmp);
        }
      } catch (e) {
        await unlink(tmp).catch(() => {});
        if ((e as NodeJS.ErrnoException).code === 'EEXIST') throw exists(outPath);
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
