import { existsSync } from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import type {
  Address,
  BlockDiff,
  Library,
  OpenedAddress,
  OsInspection,
  PackageDiff,
  SearchHit,
  TreeDiff,
} from '../../library/index.js';
import { addOpenOptions, openOptionsFrom } from '../common.js';
import { humanSize, printJson } from '../output.js';
import { remoteOf } from '../remote.js';

/** Inspection verbs: inspect (what OS is in an image) and diff (what changed between two). */
export function registerInspectCommands(program: Command): void {
  addOpenOptions(
    program
      .command('inspect')
      .description('find every OS root in an image and report OS, version, packages, users, kernels, mounts')
      .argument('<image>', 'image file or http(s) URL, or a library REF (NAME, NAME:TAG, NAME@N)')
      .option('--json', 'an array with one object per OS root')
      .option('--library <dir>', 'library directory for a REF (default: $STRATA_LIBRARY or the per-user one)')
      .option('--refresh', 'for a REF: inspect the stored version again and store the result'),
  ).action(async (image: string, o: Record<string, unknown>) => {
    if (await isLibraryRef([image], o)) {
      const { versionInspection } = await import('../../library/index.js');
      const r = await withLibrary(o, (lib) => versionInspection(lib, image, { refresh: Boolean(o.refresh) }));
      for (const w of r.warnings) process.stderr.write(`strata: warning: ${w}\n`);
      if (o.json) return printJson(r.roots);
      if (r.roots.length === 0) {
        process.stdout.write('no operating system found\n');
        return;
      }
      process.stdout.write(`${r.roots.map(humanReport).join('\n')}`);
      return;
    }
    // Loaded per verb: module loading is a large part of a short run.
    const { inspectImage } = await import('../../library/index.js');
    const r = await inspectImage(image, openOptionsFrom(o));
    for (const w of r.warnings) process.stderr.write(`strata: warning: ${w}\n`);
    if (o.json) return printJson(r.roots);
    if (r.roots.length === 0) {
      process.stdout.write('no operating system found\n');
      return;
    }
    process.stdout.write(`${r.roots.map(humanReport).join('\n')}`);
  });

  addOpenOptions(
    program
      .command('diff')
      .description('what changed from image A to image B: files, and with flags packages and blocks')
      .argument('<a>', 'image file or http(s) URL, or a library REF (the old one)')
      .argument('<b>', 'image file or http(s) URL, or a library REF (the new one)')
      .option('--library <dir>', 'library directory for REFs (default: $STRATA_LIBRARY or the per-user one)')
      .option('--part <n>', 'compare this partition of both images')
      .option('--lv <vg/lv>', 'compare this LVM logical volume of both images')
      .option('--packages', 'also list packages added, removed, upgraded and downgraded')
      .option('--blocks', "also measure B's used blocks that differ from A and the bytes they share")
      .option('--remote <url>', 'REFs of a library service (default: $STRATA_REMOTE; token from $STRATA_TOKEN)')
      .option('--json', 'one object: files, and packages / blocks when asked'),
  ).action(async (a: string, b: string, o: Record<string, unknown>) => {
    const remote = await remoteOf(o, [a, b]);
    if (remote) {
      const out = await remote.diff(a, b, {
        part: o.part as string | undefined,
        packages: Boolean(o.packages) || undefined,
        blocks: Boolean(o.blocks) || undefined,
      });
      if (o.json) return printJson(out);
      for (const w of out.warnings) process.stderr.write(`strata: warning: ${w}\n`);
      process.stdout.write(humanDiff(out));
      return;
    }
    if (await isLibraryRef([a, b], o)) {
      const { diffVersions } = await import('../../library/index.js');
      const out = await withLibrary(o, (lib) =>
        diffVersions(lib, a, b, {
          part: o.part as string | undefined,
          packages: Boolean(o.packages),
          blocks: Boolean(o.blocks),
        }),
      );
      if (o.json) return printJson(out);
      for (const w of out.warnings) process.stderr.write(`strata: warning: ${w}\n`);
      process.stdout.write(humanDiff(out));
      return;
    }
    const { openAddress, diffTrees, fileSystemTree, diffBlocks, volumeBlockDigests } = await import(
      '../../library/index.js'
    );
    const addr: Address = { part: o.part as string | undefined, lv: o.lv as string | undefined };
    const oo = openOptionsFrom(o);
    const at: OpenedAddress[] = [];
    try {
      at.push(await openAddress(a, addr, oo));
      at.push(await openAddress(b, addr, oo));
      const files = await diffTrees(fileSystemTree(at[0].fs), fileSystemTree(at[1].fs));
      const out: { files: TreeDiff; packages?: PackageDiff | null; blocks?: BlockDiff; warnings: string[] } = {
        files,
        warnings: [...at[0].warnings, ...at[1].warnings, ...files.warnings],
      };
      if (o.packages) out.packages = await packageDiff(a, b, at, oo, out.warnings);
      if (o.blocks) {
        const [fa, fb] = [at[0].fs, at[1].fs];
        const da = await volumeBlockDigests(fa.volume, await fa.allocation(), fa.blockSize);
        const db = await volumeBlockDigests(fb.volume, await fb.allocation(), fb.blockSize);
        out.blocks = diffBlocks(da, db);
      }
      if (o.json) return printJson(out);
      for (const w of out.warnings) process.stderr.write(`strata: warning: ${w}\n`);
      process.stdout.write(humanDiff(out));
    } finally {
      for (const x of at) await x.close();
    }
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
    .option('--json', 'an array, one object per matching version')
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
      const hits = remote ? await remote.search(q) : await withLibrary(o, (lib) => search(lib, q));
      if (o.json) return printJson(hits);
      process.stdout.write(hits.map(humanHit).join(''));
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
        printJson(
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

/**
 * Whether the arguments name library versions: --library was given, or none of them is an
 * existing file or a URL and a library exists (a mistyped image path keeps its error).
 */
async function isLibraryRef(args: string[], o: Record<string, unknown>): Promise<boolean> {
  if (o.library) return true;
  const { libraryLocation, MARKER } = await import('../../library/index.js');
  if (args.some((x) => /^https?:\/\//i.test(x) || existsSync(x))) return false;
  return existsSync(path.join(libraryLocation(), MARKER));
}

async function withLibrary<T>(o: Record<string, unknown>, fn: (lib: Library) => Promise<T>): Promise<T> {
  const { Library } = await import('../../library/index.js');
  const lib = await Library.open(o.library as string | undefined, { create: false });
  try {
    return await fn(lib);
  } finally {
    await lib.close();
  }
}

async function packageDiff(
  a: string,
  b: string,
  at: OpenedAddress[],
  oo: ReturnType<typeof openOptionsFrom>,
  warnings: string[],
): Promise<PackageDiff | null> {
  const { inspectImage, diffPackages } = await import('../../library/index.js');
  const pick = (roots: OsInspection[], volume: string) => roots.find((r) => r.root === volume) ?? roots[0];
  const ra = pick((await inspectImage(a, oo)).roots, at[0].volume.id);
  const rb = pick((await inspectImage(b, oo)).roots, at[1].volume.id);
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
  l.push(
    `files: ${s.added} added (${s.bytesAdded} bytes), ${s.removed} removed (${s.bytesRemoved} bytes), ${s.changed} changed (${s.bytesChanged} bytes), ${s.metadata} metadata only`,
  );
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
    `root:            ${r.root === '' ? '(whole disk)' : r.root}`,
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
      `mount:           ${point} <- ${m.device}${m.volume !== undefined ? ` (volume ${m.volume || 'whole disk'})` : ''}`,
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
