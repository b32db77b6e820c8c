/**
 * bench:fat-iso — `strata ls -R --json` and `strata extract` against The Sleuth Kit
 * (`fls -r -p`, `tsk_recover -a`) on a FAT32 image (mkfs.vfat + mcopy -s), an ISO 9660
 * image (genisoimage -J -R) and an NTFS image (mkntfs, then cp -r through ntfs-3g) of the
 * same real tree, best of N each, JSON lines on stdout.
 *
 * Options: --tree DIR (default /usr/lib/python3: a few thousand files of real sizes),
 * --runs N (default 3), --out DIR (extraction targets; default /dev/shm/strata-bench-fat-iso),
 * --fs vfat,iso9660,ntfs (which images; default all three), --no-extract (ls -R only).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { benchChildEnv, CLI, need, opt, ROOT, sh } from './common.js';

const BENCH = path.join(ROOT, '.cache', 'bench');
const RUNS = Number(opt('--runs') ?? 3);
const TREE = path.resolve(opt('--tree') ?? '/usr/lib/python3');
const OUT = opt('--out') ?? '/dev/shm/strata-bench-fat-iso';
const FS = new Set((opt('--fs') ?? 'vfat,iso9660,ntfs').split(','));
const EXTRACT = !process.argv.includes('--no-extract');

function log(msg: string): void {
  process.stderr.write(`bench:fat-iso: ${msg}\n`);
}

function images(): Array<{ fs: string; image: string }> {
  mkdirSync(BENCH, { recursive: true });
  const key = TREE.replace(/[^A-Za-z0-9]+/g, '_');
  const fat = path.join(BENCH, `fat32${key}.img`);
  if (FS.has('vfat') && !existsSync(fat)) {
    need('mkfs.vfat', 'dosfstools');
    need('mcopy', 'mtools');
    const bytes = Number(sh('du', ['-sb', TREE]).split(/\s/)[0]);
    const mib = Math.max(64, Math.ceil((bytes * 1.5) / (1 << 20)) + 64);
    log(`mkfs.vfat -F 32 (${mib} MiB) + mcopy -s ${TREE} (once)`);
    sh('mkfs.vfat', ['-F', '32', '-n', 'BENCH', '-C', `${fat}.tmp`, String(mib * 1024)]);
    const r = spawnSync(
      'mcopy',
      ['-s', '-m', '-i', `${fat}.tmp`, ...readdirSync(TREE).map((n) => path.join(TREE, n)), '::/'],
      {
        env: { ...process.env, MTOOLS_SKIP_CHECK: '1' },
        encoding: 'utf8',
      },
    );
    if (r.status !== 0) throw new Error(`mcopy failed: ${r.stderr}`);
    renameSync(`${fat}.tmp`, fat);
  }
  const iso = path.join(BENCH, `iso${key}.iso`);
  if (FS.has('iso9660') && !existsSync(iso)) {
    need('genisoimage', 'genisoimage');
    log(`genisoimage -J -R ${TREE} (once)`);
    sh('genisoimage', ['-quiet', '-J', '-joliet-long', '-R', '-o', `${iso}.tmp`, TREE]);
    renameSync(`${iso}.tmp`, iso);
  }
  const ntfs = path.join(BENCH, `ntfs${key}.img`);
  if (FS.has('ntfs') && !existsSync(ntfs)) {
    need('mkntfs', 'ntfs-3g');
    need('ntfs-3g', 'ntfs-3g');
    const bytes = Number(sh('du', ['-sb', TREE]).split(/\s/)[0]);
    const mib = Math.max(64, Math.ceil((bytes * 1.5) / (1 << 20)) + 64);
    log(`mkntfs (${mib} MiB) + cp -r ${TREE} through ntfs-3g (once)`);
    sh('truncate', ['-s', `${mib}M`, `${ntfs}.tmp`]);
    sh('mkntfs', ['-F', '-Q', '-L', 'BENCH', `${ntfs}.tmp`]);
    const mnt = `${ntfs}.mnt`;
    mkdirSync(mnt, { recursive: true });
    sh('ntfs-3g', [`${ntfs}.tmp`, mnt]);
    try {
      sh('cp', ['-r', `${TREE}/.`, mnt]);
    } finally {
      sh('umount', [mnt]);
      rmSync(mnt, { recursive: true, force: true });
    }
    renameSync(`${ntfs}.tmp`, ntfs);
  }
  return [
    { fs: 'vfat', image: fat },
    { fs: 'iso9660', image: iso },
    { fs: 'ntfs', image: ntfs },
  ].filter((x) => FS.has(x.fs));
}

/** Best wall time of RUNS runs of a command (ms), with its stdout of the last run. */
function best(cmd: string, argv: string[], before?: () => void): { ms: number; out: string } {
  let ms = Number.POSITIVE_INFINITY;
  let out = '';
  for (let i = 0; i < RUNS; i++) {
    before?.();
    const t0 = process.hrtime.bigint();
    const r = spawnSync(cmd, argv, { encoding: 'utf8', maxBuffer: 1 << 30 });
    const t = Number(process.hrtime.bigint() - t0) / 1e6;
    if (r.status !== 0) throw new Error(`${cmd} ${argv.join(' ')} failed: ${r.stderr}`);
    ms = Math.min(ms, t);
    out = r.stdout;
  }
  return { ms, out };
}

function countFiles(dir: string): number {
  return Number(sh('sh', ['-c', `find "${dir}" -type f | wc -l`]).trim());
}

function main(): void {
  const env = benchChildEnv();
  need('fls', 'sleuthkit');
  need('tsk_recover', 'sleuthkit');
  for (const { fs, image } of images()) {
    const ours = best(process.execPath, [CLI, 'ls', '-R', '--json', image, '/']);
    const peer = best('fls', ['-r', '-p', '-u', image]);
    const ourFiles = ours.out.split('\n').filter((l) => l.includes('"type":"file"')).length;
    const peerFiles = peer.out.split('\n').filter((l) => /^r\/r /.test(l) && !/\t\$/.test(l)).length;
    console.log(
      JSON.stringify({
        bench: 'ls -R',
        fs,
        image,
        strataMs: Math.round(ours.ms),
        peer: 'fls -r -p -u',
        peerMs: Math.round(peer.ms),
        ratio: +(ours.ms / peer.ms).toFixed(2),
        files: { strata: ourFiles, peer: peerFiles },
        ...env,
      }),
    );
    if (!EXTRACT) continue;
    const a = path.join(OUT, 'strata');
    const b = path.join(OUT, 'tsk');
    const ex = best(process.execPath, [CLI, 'extract', image, '/', a], () =>
      rmSync(a, { recursive: true, force: true }),
    );
    const rec = best('tsk_recover', ['-a', image, b], () => {
      rmSync(b, { recursive: true, force: true });
      mkdirSync(b, { recursive: true });
    });
    console.log(
      JSON.stringify({
        bench: 'extract',
        fs,
        image,
        strataMs: Math.round(ex.ms),
        peer: 'tsk_recover -a',
        peerMs: Math.round(rec.ms),
        ratio: +(ex.ms / rec.ms).toFixed(2),
        files: { strata: countFiles(a), peer: countFiles(b) },
      }),
    );
    rmSync(OUT, { recursive: true, force: true });
  }
}

main();
