/**
 * The corpora of `bench:checkin --corpora` (issue 26): images a user might bring, each made by
 * real tools from the debootstrapped bookworm tree of bench/common.ts, built once and cached
 * under the bench directory. A corpus is one image or a sequence of versions, checked in (and
 * `casync make`d) in order into one fresh store.
 *
 * - debian-pair: the bench:checkin base and derived ext4 images (packages added).
 * - user-edits: the base, then the same tree edited the way a user changes a system: a
 *   system folder copied into a home directory, some deleted, one moved, logs and /etc files
 *   appended to, a compiler tree (gcc-12, cpp-12, binutils unpacked with dpkg-deb -x) added.
 * - upgrade: the base, then the tree after a package upgrade: every package of the tree whose
 *   version apt offers now (bookworm-updates, -security) differs, unpacked over it, its
 *   dpkg status updated.
 * - small-files: 200,000 small files (32 B - 8 KiB) whose contents repeat inside and across
 *   files at any offset (fragments drawn from a pool), a fifth whole copies of earlier files,
 *   `mkfs.ext4 -d`.
 * - xfs, btrfs: the base tree copied by the kernel into mkfs.xfs / mkfs.btrfs images.
 * - ntfs: /usr of the base tree copied through ntfs-3g into an mkntfs image.
 * - iso: `xorriso -as mkisofs -R -J` of the base tree.
 */
import {
  appendFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import * as path from 'node:path';
import { benchBaseImage, benchDerivedImage, benchRootfs, need, PAIR_IMAGE_MIB, sh } from './common.js';

export interface Corpus {
  name: string;
  /** Images in check-in order. */
  images: string[];
}

type Log = (m: string) => void;

function ext4(file: string, tree: string, mib: number, log: Log, extra: string[] = []): string {
  if (existsSync(file)) return file;
  need('mkfs.ext4', 'e2fsprogs');
  log(`mkfs.ext4 -d ${tree} (${mib} MiB, once)`);
  sh('mkfs.ext4', ['-q', '-F', '-b', '4096', ...extra, '-d', tree, `${file}.tmp`, `${mib}M`]);
  renameSync(`${file}.tmp`, file);
  return file;
}

/** Download (once, into BENCH/corpora-debs) the .deb of each package; their paths. */
function debs(bench: string, pkgs: string[], log: Log): string[] {
  const dl = path.join(bench, 'corpora-debs');
  mkdirSync(dl, { recursive: true });
  return pkgs.map((spec) => {
    const [p, v] = spec.split('=');
    const prefix = v ? `${p}_${v.replace(':', '%3a')}` : `${p}_`;
    const find = () => readdirSync(dl).find((f) => f.startsWith(prefix) && f.endsWith('.deb'));
    if (!find()) {
      log(`apt-get download ${spec}`);
      sh('apt-get', ['download', spec], { cwd: dl });
    }
    const f = find();
    if (!f) throw new Error(`apt-get download ${spec} left no ${prefix}*.deb in ${dl}`);
    return path.join(dl, f);
  });
}

function copyTree(base: string, tmp: string): void {
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp);
  sh('cp', ['-a', `${base}/.`, tmp]);
}

/** The base tree as a user edits a system (see the header). */
function userEditsTree(bench: string, log: Log): string {
  const dir = path.join(bench, 'rootfs-user-edits-v1');
  if (existsSync(dir)) return dir;
  const base = realpathSync(benchRootfs(bench, log));
  const tmp = `${dir}.tmp`;
  log('user-edits tree: copies, deletions, a move, appends, a compiler tree (once)');
  copyTree(base, tmp);
  const t = (p: string) => path.join(tmp, p);
  mkdirSync(t('home/user'), { recursive: true });
  sh('cp', ['-a', t('usr/share/doc'), t('home/user/doc-backup')]);
  sh('cp', ['-a', t('etc'), t('home/user/etc-before')]);
  rmSync(t('usr/share/locale'), { recursive: true, force: true });
  rmSync(t('usr/share/info'), { recursive: true, force: true });
  mkdirSync(t('opt'), { recursive: true });
  renameSync(t('usr/share/man'), t('opt/man'));
  for (const f of ['etc/bash.bashrc', 'etc/profile', 'etc/services'])
    appendFileSync(t(f), `\n# local changes\nexport EDITOR=vi\n${'alias ll="ls -l"\n'.repeat(8)}`);
  mkdirSync(t('var/log/app'), { recursive: true });
  const lines = [];
  for (let i = 0; i < 20000; i++)
    lines.push(
      `2026-12-06T10:${String(i % 60).padStart(2, '0')}:00Z app[${1000 + (i % 97)}]: request ${i} done in ${i % 251} ms`,
    );
  writeFileSync(t('var/log/app/app.log'), `${lines.join('\n')}\n`);
  appendFileSync(t('var/log/dpkg.log'), `${lines.slice(0, 500).join('\n')}\n`);
  for (const deb of debs(bench, ['gcc-12', 'cpp-12', 'binutils-x86-64-linux-gnu', 'libgcc-12-dev'], log))
    sh('dpkg-deb', ['-x', deb, tmp]);
  renameSync(tmp, dir);
  return dir;
}

/** The base tree after upgrading every package whose version apt offers now differs. */
function upgradeTree(bench: string, log: Log): string {
  const dir = path.join(bench, 'rootfs-upgrade-v1');
  if (existsSync(dir)) return dir;
  const base = realpathSync(benchRootfs(bench, log));
  const installed = new Map<string, string>();
  for (const line of sh('dpkg-query', [
    `--admindir=${base}/var/lib/dpkg`,
    '-W',
    '-f',
    // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's format, not a template
    '${Package} ${Version}\\n',
  ]).split('\n')) {
    const [p, v] = line.split(' ');
    if (p) installed.set(p, v);
  }
  const candidates = new Map<string, string>();
  const show = sh('apt-cache', ['show', '--no-all-versions', ...installed.keys()]);
  for (const para of show.split(/\n\n+/)) {
    const p = /^Package: (\S+)/m.exec(para)?.[1];
    const v = /^Version: (\S+)/m.exec(para)?.[1];
    if (p && v) candidates.set(p, v);
  }
  const newer = [...installed].filter(([p, v]) => candidates.has(p) && candidates.get(p) !== v).map(([p]) => p);
  if (newer.length === 0)
    throw new Error('upgrade corpus: apt offers no other version of any package of the tree (apt-get update?)');
  const tmp = `${dir}.tmp`;
  log(`upgrade tree: ${newer.length} packages (${newer.join(' ')}) (once)`);
  copyTree(base, tmp);
  const status = path.join(tmp, 'var/lib/dpkg/status');
  for (const deb of debs(
    bench,
    newer.map((p) => `${p}=${candidates.get(p)}`),
    log,
  )) {
    sh('dpkg-deb', ['-x', deb, tmp]);
    appendFileSync(status, `\n${sh('dpkg-deb', ['-f', deb]).trim()}\nStatus: install ok installed\n`);
  }
  renameSync(tmp, dir);
  return dir;
}

/** xorshift32: the small-files tree is the same on every machine. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}

const WORDS =
  'the of and to in is for on that with as by this be are from at or an it not which config value error path user file data set get return if else while static const void int char struct buffer length offset size'.split(
    ' ',
  );

/** Many small files, contents repeating inside and across them (see the header). */
function smallFilesTree(dir: string, files: number): void {
  const r = rng(26);
  const pool: Buffer[] = [];
  for (let i = 0; i < 3000; i++) {
    const len = 16 + Math.floor(r() * r() * 2048);
    if (i % 4 === 3) {
      const b = Buffer.alloc(len);
      for (let j = 0; j < len; j++) b[j] = Math.floor(r() * 256);
      pool.push(b);
    } else {
      let s = '';
      while (s.length < len) s += `${WORDS[Math.floor(r() * WORDS.length)]}${r() < 0.1 ? '\n' : ' '}`;
      pool.push(Buffer.from(s.slice(0, len)));
    }
  }
  const made: string[] = [];
  for (let i = 0; i < files; i++) {
    const d = path.join(dir, `d${Math.floor(i / 1000)}`);
    if (i % 1000 === 0) mkdirSync(d, { recursive: true });
    const f = path.join(d, `f${i}.dat`);
    if (i > 100 && r() < 0.2) {
      writeFileSync(f, readFileSync(made[Math.floor(r() * made.length)]));
    } else {
      const size = Math.floor(32 * 256 ** r());
      const parts: Buffer[] = [];
      let n = 0;
      while (n < size) {
        const p = pool[Math.floor(r() * r() * pool.length)];
        parts.push(p);
        n += p.length;
      }
      writeFileSync(f, Buffer.concat(parts).subarray(0, size));
    }
    made.push(f);
  }
}

function kernelCopy(kind: 'xfs' | 'btrfs', bench: string, log: Log): string {
  const image = path.join(bench, `corpora-bookworm-v1.${kind}`);
  if (existsSync(image)) return image;
  const rootfs = realpathSync(benchRootfs(bench, log));
  const mkfs = kind === 'xfs' ? 'mkfs.xfs' : 'mkfs.btrfs';
  need(mkfs, kind === 'xfs' ? 'xfsprogs' : 'btrfs-progs');
  const bytes = Number(sh('du', ['-sb', rootfs]).split(/\s/)[0]);
  const mib = Math.max(320, Math.ceil((bytes * 1.4 + (96 << 20)) / (1 << 20)));
  log(`${mkfs} and cp -a through a loop mount (${mib} MiB, once)`);
  sh('truncate', ['-s', `${mib}M`, `${image}.tmp`]);
  sh(mkfs, ['-q', '-f', '-L', 'corpus', `${image}.tmp`]);
  const mnt = `${image}.mnt`;
  mkdirSync(mnt, { recursive: true });
  sh('mount', ['-o', 'loop', `${image}.tmp`, mnt]);
  try {
    sh('cp', ['-a', `${rootfs}/.`, mnt]);
  } finally {
    sh('umount', [mnt]);
    rmSync(mnt, { recursive: true, force: true });
  }
  renameSync(`${image}.tmp`, image);
  return image;
}

function ntfsImage(bench: string, log: Log): string {
  const image = path.join(bench, 'corpora-bookworm-usr-v1.ntfs');
  if (existsSync(image)) return image;
  need('mkntfs', 'ntfs-3g');
  need('ntfs-3g', 'ntfs-3g');
  const usr = path.join(realpathSync(benchRootfs(bench, log)), 'usr');
  const bytes = Number(sh('du', ['-sb', usr]).split(/\s/)[0]);
  const mib = Math.ceil((bytes * 1.5) / (1 << 20)) + 64;
  log(`mkntfs (${mib} MiB) + cp -rP /usr through ntfs-3g (once)`);
  sh('truncate', ['-s', `${mib}M`, `${image}.tmp`]);
  sh('mkntfs', ['-F', '-Q', '-L', 'CORPUS', `${image}.tmp`]);
  const mnt = `${image}.mnt`;
  mkdirSync(mnt, { recursive: true });
  sh('ntfs-3g', [`${image}.tmp`, mnt]);
  try {
    sh('cp', ['-rP', `${usr}/.`, mnt]);
  } finally {
    sh('umount', [mnt]);
    rmSync(mnt, { recursive: true, force: true });
  }
  renameSync(`${image}.tmp`, image);
  return image;
}

function isoImage(bench: string, log: Log): string {
  const image = path.join(bench, 'corpora-bookworm-v1.iso');
  if (existsSync(image)) return image;
  need('xorriso', 'xorriso');
  const rootfs = realpathSync(benchRootfs(bench, log));
  log('xorriso -as mkisofs -R -J (once)');
  sh('xorriso', ['-as', 'mkisofs', '-quiet', '-R', '-J', '-joliet-long', '-V', 'CORPUS', '-o', `${image}.tmp`, rootfs]);
  renameSync(`${image}.tmp`, image);
  return image;
}

export const CORPUS_NAMES = ['debian-pair', 'user-edits', 'upgrade', 'small-files', 'xfs', 'btrfs', 'ntfs', 'iso'];

/** Build (once) and return the named corpus. */
export function corpus(name: string, bench: string, log: Log): Corpus {
  switch (name) {
    case 'debian-pair':
      return { name, images: [benchBaseImage(bench, log), benchDerivedImage(bench, log)] };
    case 'user-edits':
      return {
        name,
        images: [
          benchBaseImage(bench, log),
          ext4(
            path.join(bench, `corpora-user-edits-v1-${PAIR_IMAGE_MIB}m.ext4`),
            userEditsTree(bench, log),
            PAIR_IMAGE_MIB,
            log,
          ),
        ],
      };
    case 'upgrade':
      return {
        name,
        images: [
          benchBaseImage(bench, log),
          ext4(
            path.join(bench, `corpora-upgrade-v1-${PAIR_IMAGE_MIB}m.ext4`),
            upgradeTree(bench, log),
            PAIR_IMAGE_MIB,
            log,
          ),
        ],
      };
    case 'small-files': {
      const file = path.join(bench, 'corpora-small-files-v1.ext4');
      if (!existsSync(file)) {
        const tree = path.join(existsSync('/dev/shm') ? '/dev/shm' : bench, `strata-corpora-small-${process.pid}`);
        rmSync(tree, { recursive: true, force: true });
        log('small-files tree: 200,000 files (once)');
        smallFilesTree(tree, 200_000);
        try {
          ext4(file, tree, 1400, log, ['-N', '240000']);
        } finally {
          rmSync(tree, { recursive: true, force: true });
        }
      }
      return { name, images: [file] };
    }
    case 'xfs':
    case 'btrfs':
      return { name, images: [kernelCopy(name, bench, log)] };
    case 'ntfs':
      return { name, images: [ntfsImage(bench, log)] };
    case 'iso':
      return { name, images: [isoImage(bench, log)] };
    default:
      throw new Error(`unknown corpus ${name} (${CORPUS_NAMES.join(', ')})`);
  }
}
