import type { Command } from 'commander';
import {
  type Address,
  type BlockDiff,
  classifyTarget,
  type Library,
  type OpenedAddress,
  type OsInspection,
  type PackageDiff,
  REF_PREFIX,
  type RefTarget,
  type SearchHit,
  StrataError,
  type Target,
  type TreeDiff,
} from '../../library/index.js';
import {
  addDeviceOption,
  addLibraryOption,
  addOpenOptions,
  addressFrom,
  noteTarget,
  openOptionsFrom,
  SUBVOL_HELP,
  TARGET_HELP,
  targetOptionsFrom,
} from '../common.js';
import { filesSummaryLine, humanSize, printJson, printJsonLines, setExitStatus, warnAll, writeOut } from '../output.js';
import { remoteOf } from '../remote.js';

/** Inspection verbs: inspect (what OS is in an image) and diff (what changed between two). */
export function registerInspectCommands(program: Command): void {
  addDeviceOption(
    addOpenOptions(
      addLibraryOption(
        program
          .command('inspect')
          .description(
            'find every OS root in an image and report OS, version, packages, users, kernels, mounts (exit 1: no OS found)',
          )
          .argument('<target>', TARGET_HELP)
          .option('--json', 'one JSON object per OS root and line')
          .option('--refresh', 'for a library version: inspect it again and store the result'),
      ),
    ),
  ).action(async (image: string, o: Record<string, unknown>) => {
    const target = classifyTarget(image, targetOptionsFrom(o));
    let r: { roots: OsInspection[]; warnings: string[] };
    if (target.kind === 'ref') {
      const { versionInspection } = await import('../../library/index.js');
      r = await withLibrary(o, (lib) => versionInspection(lib, target.ref, { refresh: Boolean(o.refresh) }));
    } else {
      // Loaded per verb: module loading is a large part of a short run.
      const { inspectTarget } = await import('../../library/index.js');
      r = await inspectTarget(image, openOptionsFrom(o), { ...targetOptionsFrom(o), onTarget: noteTarget });
    }
    warnAll(r.warnings);
    if (r.roots.length === 0) {
      // like grep finding nothing: a script can tell "no OS" from a report
      setExitStatus(1);
      if (!o.json) process.stderr.write('strata: no operating system found\n');
      return;
    }
    if (o.json) return printJsonLines(r.roots);
    await writeOut(r.roots.map(humanReport).join('\n'));
  });

  addDeviceOption(
    addOpenOptions(
      addLibraryOption(
        program
          .command('diff')
          .description(
            'what changed from A to B: files, and with flags packages and blocks (exit 0 same, 1 different, 2 trouble)',
          )
          .argument('<a>', `the old one: ${TARGET_HELP}`)
          .argument('<b>', 'the new one: the same kinds as A (a file and a library version can be compared)')
          .option('--part <n>', 'compare this partition of both images')
          .option('--lv <vg/lv>', 'compare this LVM logical volume of both images')
          .option('--subvol <name|id>', `${SUBVOL_HELP}, in both`)
          .option('--subvol-b <name|id>', "B's btrfs subvolume when it is not A's (a snapshot against its source)")
          .option('--packages', 'also list packages added, removed, upgraded and downgraded')
          .option('--blocks', "also measure B's used blocks that differ from A and the bytes they share")
          .option('--remote <url>', 'versions of a library service (default: $STRATA_REMOTE; token from $STRATA_TOKEN)')
          .option('--json', 'one object: files, and packages / blocks when asked')
          .option('--device-b <file>', "B's other btrfs devices when they are not A's (repeatable)", collectB, []),
      ),
    ),
  ).action(async (a: string, b: string, o: Record<string, unknown>) => {
    const remote = await remoteOf(o, [a, b]);
    if (remote) {
      if (o.subvol !== undefined || o.subvolB !== undefined)
        throw new StrataError('USAGE', '--subvol applies to images, not to versions of a library service');
      // versions of a library service (--remote, or STRATA_REMOTE and A, B not files)
      const unref = (x: string) => (x.startsWith(REF_PREFIX) ? x.slice(REF_PREFIX.length) : x);
      const out: DiffOut = await remote.diff(unref(a), unref(b), {
        part: o.part as string | undefined,
        packages: Boolean(o.packages) || undefined,
        blocks: Boolean(o.blocks) || undefined,
      });
      setExitStatus(differs(out) ? 1 : 0);
      if (o.json) return printJson(out);
      warnAll(out.warnings);
      return writeOut(humanDiff(out));
    }
    const ta = classifyTarget(a, targetOptionsFrom(o));
    const tb = classifyTarget(b, targetOptionsFrom(o));
    let out: DiffOut;
    if (
      ta.kind === 'ref' &&
      tb.kind === 'ref' &&
      o.lv === undefined &&
      o.subvol === undefined &&
      o.subvolB === undefined
    ) {
      // both stored: from the manifests, no block read
      const { diffVersions } = await import('../../library/index.js');
      out = await withLibrary(o, (lib) =>
        diffVersions(lib, ta.ref, tb.ref, {
          part: o.part as string | undefined,
          packages: Boolean(o.packages),
          blocks: Boolean(o.blocks),
        }),
      );
    } else out = await diffOpened(a, b, [ta, tb], o);
    setExitStatus(differs(out) ? 1 : 0);
    if (o.json) return printJson(out);
    warnAll(out.warnings);
    await writeOut(humanDiff(out));
  });

  program
    .command('search')
    .description(
      'every library version holding a path, a file content, a package, an OS or a user (all given must hold)',
    )
    .option('--path <glob>', "path glob: * and ? within a component, ** across; no leading '/' matches at any depth")
    .option('--digest <sha256>', 'a file content digest')
    .option('--package <spec>', 'NAME, or NAME<VER, NAME<=VER, NAME=VER, NAME>=VER, NAME>VER (ecosystem version order)')
    .option('--os <name>', 'distro (debian, fedora ...), OS type (linux, windows) or part of the product name')
    .option('--user <name>', 'a user account name')
    .option('--library <dir>', 'library directory (default: $STRATA_LIBRARY or the per-user one)')
    .option('--remote <url>', 'search a library service (default: $STRATA_REMOTE; token from $STRATA_TOKEN)')
    .option('--json', 'one JSON object per matching version and line')
    .action(async (o: Record<string, unknown>) => {
      const { search } = await import('../../library/index.js');
      const q = {
        path: o.path as string | undefined,
        digest: o.digest as string | undefined,
        package: o.package as string | undefined,
        os: o.os as string | undefined,
        user: o.user as string | undefined,
      };
      const remote = await remoteOf(o);
      const hits = remote
        ? await remote.search(q)
        : await withLibrary(o, (lib) => search(lib, q), { catalogOnly: true });
      // like grep(1): 0 found, 1 none, 2 trouble
      setExitStatus(hits.length > 0 ? 0 : 1);
      if (o.json) return printJsonLines(hits);
      await writeOut(hits.map(humanHit).join(''));
    });

  program
    .command('reinspect')
    .description('inspect stored versions again and store the results (after a Strata upgrade)')
    .argument('[ref]', 'one version (default: every active version)')
    .option('--missing', 'only versions with no stored inspection')
    .option('--library <dir>', 'library directory (default: $STRATA_LIBRARY or the per-user one)')
    .option('--json', 'machine-readable output')
    .action(async (ref: string | undefined, o: Record<string, unknown>) => {
      const { reinspect } = await import('../../library/index.js');
      const done = await withLibrary(o, (lib) =>
        reinspect(lib, {
          ref,
          missingOnly: Boolean(o.missing),
          onVersion: o.json
            ? undefined
            : (r) =>
                process.stdout.write(
                  `${r.ref}: ${r.roots.map((x) => `${x.distro ?? x.osType} ${x.versionMajor ?? ''}`.trim()).join(', ') || 'no OS'}${r.warnings.length ? ` (${r.warnings.length} warnings)` : ''}\n`,
                ),
        }),
      );
      if (o.json)
        await printJsonLines(
          done.map((r) => ({ ref: r.ref, inspected: r.inspected, roots: r.roots.length, warnings: r.warnings })),
        );
    });
}

function humanHit(h: SearchHit): string {
  const l = [`${h.ref}${h.tags.length ? ` (${h.tags.join(', ')})` : ''}`];
  for (const r of h.roots ?? []) l.push(`  os       ${r.osType} ${r.distro ?? ''} ${r.productName ?? ''}`.trimEnd());
  for (const p of h.packages ?? []) l.push(`  package  ${p.name} ${p.version} ${p.arch}`);
  for (const u of h.users ?? []) l.push(`  user     ${u.name} uid ${u.uid} gid ${u.gid} ${u.home} ${u.shell}`);
  for (const p of h.paths ?? []) l.push(`  path     ${p.path} (${p.type}, ${p.size} bytes)`);
  return `${l.join('\n')}\n`;
}

type DiffOut = {
  files: TreeDiff;
  packages?: PackageDiff | null;
  blocks?: BlockDiff;
  warnings: string[];
};

/** Anything added, removed, changed: files, packages (when compared), blocks (when measured). */
function differs(out: DiffOut): boolean {
  const f = out.files.summary;
  if (f.added + f.removed + f.changed + f.metadata > 0) return true;
  const p = out.packages;
  if (p && p.added.length + p.removed.length + p.upgraded.length + p.downgraded.length > 0) return true;
  return (out.blocks?.writeBlocks ?? 0) > 0;
}

/** diff of two opened targets (files, URLs, versions, in any mix): their file systems compared. */
async function diffOpened(a: string, b: string, targets: Target[], o: Record<string, unknown>): Promise<DiffOut> {
  const { openAddress, diffTrees, fileSystemTree, diffBlocks, volumeBlockDigests } = await import(
    '../../library/index.js'
  );
  const addr: Address = addressFrom(o);
  const addrB: Address = typeof o.subvolB === 'string' ? { ...addr, subvol: o.subvolB } : addr;
  const oo = openOptionsFrom(o);
  const stored = targets.findIndex((t) => t.kind === 'ref');
  if (
    stored >= 0 &&
    targets[1 - stored].kind !== 'ref' &&
    !o.packages &&
    !o.blocks &&
    o.lv === undefined &&
    o.subvol === undefined &&
    o.subvolB === undefined
  ) {
    // a version against an image: the version's file manifest, streamed beside the image's walk
    const { openStoredFiles, diffStoredTree } = await import('../../library/index.js');
    const openOther = () =>
      stored === 0 ? openAddress(b, addrB, oo, targetOptionsB(o)) : openAddress(a, addr, oo, targetOptionsFrom(o));
    let other: OpenedAddress | undefined;
    if (stored === 1) other = await openOther();
    try {
      const sf = await openStoredFiles(targets[stored] as RefTarget, o.part as string | undefined);
      try {
        other ??= await openOther();
        noteTarget(other.target);
        const files = await diffStoredTree(sf, fileSystemTree(other.fs), stored === 0);
        return { files, warnings: [...other.warnings, ...files.warnings] };
      } finally {
        await sf.close();
      }
    } finally {
      await other?.close();
    }
  }
  const at: OpenedAddress[] = [];
  try {
    at.push(await openAddress(a, addr, oo, targetOptionsFrom(o)));
    at.push(await openAddress(b, addrB, oo, targetOptionsB(o)));
    for (const x of at) noteTarget(x.target);
    const files = await diffTrees(fileSystemTree(at[0].fs), fileSystemTree(at[1].fs));
    const out: DiffOut = { files, warnings: [...at[0].warnings, ...at[1].warnings, ...files.warnings] };
    if (o.packages) out.packages = await packageDiff(at, targets, o, out.warnings);
    if (o.blocks) {
      const [fa, fb] = [at[0].fs, at[1].fs];
      const da = await volumeBlockDigests(fa.volume, await fa.allocation(), fa.blockSize);
      const db = await volumeBlockDigests(fb.volume, await fb.allocation(), fb.blockSize);
      out.blocks = diffBlocks(da, db);
    }
    return out;
  } finally {
    for (const x of at) await x.close();
  }
}

async function withLibrary<T>(
  o: Record<string, unknown>,
  fn: (lib: Library) => Promise<T>,
  opts: { catalogOnly?: boolean } = {},
): Promise<T> {
  const { Library } = await import('../../library/index.js');
  const lib = await Library.open(o.library as string | undefined, { create: false, ...opts });
  try {
    return await fn(lib);
  } finally {
    await lib.close();
  }
}

async function packageDiff(
  at: OpenedAddress[],
  targets: Target[],
  o: Record<string, unknown>,
  warnings: string[],
): Promise<PackageDiff | null> {
  const { inspectTarget, diffPackages } = await import('../../library/index.js');
  const pick = (roots: OsInspection[], volume: string) => roots.find((r) => r.root === volume) ?? roots[0];
  const inspectOne = async (i: number) => {
    const t = targets[i];
    const arg = t.kind === 'file' ? t.path : t.kind === 'url' ? t.url : `ref:${t.ref}`;
    return pick(
      (await inspectTarget(arg, openOptionsFrom(o), i === 0 ? targetOptionsFrom(o) : targetOptionsB(o))).roots,
      at[i].volume.id,
    );
  };
  const ra = await inspectOne(0);
  const rb = await inspectOne(1);
  if (!ra?.packageFormat || !rb?.packageFormat || ra.packageFormat !== rb.packageFormat) {
    warnings.push(
      `packages: not comparable (A: ${ra?.packageFormat ?? 'no package database'}, B: ${rb?.packageFormat ?? 'no package database'})`,
    );
    return null;
  }
  return diffPackages(ra.packageFormat, ra.packages, rb.packages);
}

function humanDiff(out: { files: TreeDiff; packages?: PackageDiff | null; blocks?: BlockDiff }): string {
  const l: string[] = [];
  const f = out.files;
  for (const x of f.added) l.push(`+ ${x.type.padEnd(8)} ${String(x.size).padStart(12)} ${x.path}`);
  for (const x of f.removed) l.push(`- ${x.type.padEnd(8)} ${String(x.size).padStart(12)} ${x.path}`);
  for (const x of f.changed) l.push(`~ ${x.type.padEnd(8)} ${String(x.sizeB).padStart(12)} ${x.path} (was ${x.sizeA})`);
  for (const x of f.metadata)
    l.push(`m ${x.type.padEnd(8)} ${String(x.size).padStart(12)} ${x.path} [${x.fields.join(',')}]`);
  const s = f.summary;
  l.push(filesSummaryLine(s));
  if (out.packages) {
    const p = out.packages;
    for (const x of p.added) l.push(`+ package ${x.name} ${x.version} ${x.arch}`);
    for (const x of p.removed) l.push(`- package ${x.name} ${x.version} ${x.arch}`);
    for (const x of p.upgraded) l.push(`^ package ${x.name} ${x.from} -> ${x.to} ${x.arch}`);
    for (const x of p.downgraded) l.push(`v package ${x.name} ${x.from} -> ${x.to} ${x.arch}`);
    l.push(
      `packages: ${p.added.length} added, ${p.removed.length} removed, ${p.upgraded.length} upgraded, ${p.downgraded.length} downgraded`,
    );
  }
  if (out.blocks) {
    const b = out.blocks;
    l.push(
      `blocks: ${b.writeBlocks} of B's ${b.usedBlocks} used blocks differ from A (${(b.writeShare * 100).toFixed(2)}%, ${humanSize(b.writeBytes)}); shared with A: ${humanSize(b.sharedBytes)}`,
    );
  }
  return `${l.join('\n')}\n`;
}

function humanReport(r: OsInspection): string {
  const version = r.versionMajor === null ? '-' : `${r.versionMajor}.${r.versionMinor ?? 0}`;
  const lines = [
    `root:            ${r.root === '' ? '(whole disk)' : r.root}${r.subvolume !== undefined ? ` (btrfs subvolume ${r.subvolume})` : ''}`,
    `os:              ${r.osType}`,
    `distro:          ${r.distro ?? '-'}`,
    `product:         ${r.productName ?? '-'}`,
    `version:         ${version}`,
    `arch:            ${r.arch ?? '-'}`,
    `hostname:        ${r.hostname ?? '-'}`,
    `packages:        ${r.packages.length} (${r.packageFormat ?? 'none'}${r.packageManager ? `, ${r.packageManager}` : ''})`,
    `kernels:         ${r.kernels.map((k) => k.version).join(' ') || '-'}`,
    `init:            ${r.initSystem ?? '-'}`,
    `users:           ${r.users.map((u) => u.name).join(' ') || '-'}`,
  ];
  for (const [point, m] of Object.entries(r.mountpoints)) {
    lines.push(
      `mount:           ${point} <- ${m.device}${m.subvol !== undefined ? ` subvol=${m.subvol}` : ''}${m.volume !== undefined ? ` (volume ${m.volume || 'whole disk'})` : ''}`,
    );
  }
  if (r.windows) {
    if (r.windows.edition) lines.push(`edition:         ${r.windows.edition}`);
    if (r.windows.build) lines.push(`build:           ${r.windows.build}`);
    lines.push(`programs:        ${r.windows.programs.length}`);
  }
  for (const w of r.warnings) lines.push(`warning:         ${w}`);
  return `${lines.join('\n')}\n`;
}

function collectB(v: string, prev: string[]): string[] {
  return [...prev, v];
}

/** B's target options: --device-b when given, else A's --device (a snapshot of the same file system). */
function targetOptionsB(o: Record<string, unknown>) {
  const t = targetOptionsFrom(o);
  const b = o.deviceB as string[] | undefined;
  if (b && b.length > 0) t.devices = b;
  return t;
}
