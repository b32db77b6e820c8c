import { existsSync } from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { type Library, StrataError } from '../../library/index.js';
import type { RemoteLibrary } from '../../serve/index.js';
import { addDeviceOption, addOpenOptions, devicesFrom, openOptionsFrom } from '../common.js';
import { humanSize, printJson, printJsonLines, warnAll } from '../output.js';
import { addPlaceOptions, placesFrom } from '../places.js';
import { progressBar } from '../progress.js';
import { remoteOf, withRemote } from '../remote.js';

/**
 * Library verbs: init, checkin, checkout, images, versions, describe, tag, rm, gc,
 * verify. Every one takes --library DIR (else STRATA_LIBRARY, else the per-user default).
 * (`ls`, `cat` and the other image-reading verbs take a version as their TARGET: fs.ts.)
 */
export const LIBRARY_VERBS = [
  'init',
  'checkin',
  'checkout',
  'images',
  'versions',
  'describe',
  'tag',
  'rm',
  'gc',
  'verify',
] as const;

const withLib = (cmd: Command) =>
  addPlaceOptions(
    cmd.option('--library <dir>', 'library directory (default: $STRATA_LIBRARY or ~/.local/share/strata/library)'),
  );

/** useLibrary, but with --remote (or STRATA_REMOTE) `fn` gets no library (it asks the service). */
async function useLibraryOr<T>(o: Record<string, unknown>, fn: (lib: Library | undefined) => Promise<T>): Promise<T> {
  if (await remoteOf(o)) return fn(undefined);
  return useLibrary(o, fn);
}

/**
 * Open the library for a verb; only `init` and `checkin` create it, and a check-in that
 * fails removes a library it created (nothing is left behind by a mistyped path).
 */
async function useLibrary<T>(
  o: Record<string, unknown>,
  fn: (lib: Library) => Promise<T>,
  create = false,
  readOnly = false,
): Promise<T> {
  const { Library } = await import('../../library/index.js');
  const lib = await Library.open(o.library as string | undefined, { create, readOnly, ...placesFrom(o) });
  try {
    const r = await fn(lib);
    // a library published over HTTP keeps its static index (strata-index.json) in step
    const { refreshIndex } = await import('../../library/index.js');
    await refreshIndex(lib).catch((e) =>
      process.stderr.write(`strata: warning: static index not updated: ${e.message}\n`),
    );
    return r;
  } catch (e) {
    if (create) await lib.closeAndDiscardIfNew().catch(() => {});
    throw e;
  } finally {
    await lib.close();
  }
}

/** "(library DIR)": every verb that writes to a library says which one. */
const inLibrary = (lib: Library) => `library ${lib.dir}`;

const collect = (v: string, prev: string[] | undefined) => [...(prev ?? []), v];

/** Verbs here that also work against a library service (--remote; ls, cat, diff and search add it themselves). */
const REMOTE_VERBS = new Set(['checkin', 'checkout', 'images', 'versions', 'describe', 'tag', 'rm']);
function addRemoteOption(program: Command): void {
  for (const c of program.commands) if (REMOTE_VERBS.has(c.name())) withRemote(c);
}

export function registerLibraryCommands(program: Command): void {
  registerLibraryVerbs(program);
  addRemoteOption(program);
}

function registerLibraryVerbs(program: Command): void {
  withLib(
    program
      .command('init')
      .description('create a library (also implied by first use)')
      .argument('[dir]', 'library directory')
      .option('--json', 'machine-readable output'),
  ).action(async (dir: string | undefined, o: Record<string, unknown>) => {
    await useLibrary(
      { ...o, library: dir ?? o.library },
      async (lib) => {
        const { Library } = await import('../../library/index.js');
        const isDefault = Library.isDefault(lib.dir);
        const env = process.env.STRATA_LIBRARY;
        if (o.json) return printJson({ library: lib.dir, created: lib.created !== false, default: isDefault });
        const lines = [`library at ${lib.dir}${lib.created === false ? ' (already there)' : ''}`];
        if (isDefault) lines.push('this is the default library: commands use it without --library');
        else if (env && libraryIs(env, lib.dir)) lines.push('selected by STRATA_LIBRARY in this shell');
        else {
          lines.push(
            'other commands use the default library unless told; select this one with',
            `  --library ${shellQuote(lib.dir)}`,
            `or for this shell: export STRATA_LIBRARY=${shellQuote(lib.dir)}`,
          );
        }
        process.stdout.write(`${lines.join('\n')}\n`);
      },
      true,
    );
  });

  addDeviceOption(
    addOpenOptions(
      withLib(
        program
          .command('checkin')
          .description('store an image as a new version: chunks cut along its file systems, deduplicated')
          .argument('<image>', 'image file or http(s) URL (raw, qcow2, vmdk, vhd, vhdx, vdi)')
          .requiredOption('--name <name>', 'image name in the library')
          .option(
            '--parent <ref>',
            'version this one derives from (repeatable; default: the version an overlay from strata nbd REF --overlay backs onto, else the latest of NAME)',
            collect,
          )
          .option('--tag <tag>', 'tag the new version (repeatable)', collect, [])
          .option('--description <text>', 'image description')
          .option('--exact', 'keep free space too: checkout is then byte-identical to the virtual disk')
          .option('--batch-bytes <n>', 'with --remote: chunk bytes per upload request (default 8 MiB)')
          .option(
            '--on-server',
            'with --remote: the server fetches IMAGE (an http(s) URL) itself, or reads a path on the server (server admins)',
          )
          .option('--json', 'machine-readable output'),
      ),
    ),
  ).action(async (image: string, o: Record<string, unknown>) => {
    const remote = await remoteOf(o);
    const devices = devicesFrom(o);
    if (o.onServer && devices.length > 0) throw new StrataError('USAGE', '--device and --on-server do not go together');
    if (o.onServer && !remote) throw new StrataError('USAGE', '--on-server needs --remote URL (or STRATA_REMOTE)');
    if (remote && o.onServer) {
      const url = /^https?:\/\//i.test(image);
      const r = await remote.importImage(String(o.name), {
        ...(url ? { url: image } : { path: image }),
        description: o.description as string | undefined,
        parents: o.parent as string[] | undefined,
        tags: (o.tag as string[]) ?? [],
      });
      for (const w of r.warnings.slice(0, 20)) process.stderr.write(`strata: warning: ${w}\n`);
      if (o.json) return printJson(r);
      process.stdout.write(`${r.ref}  manifest ${r.manifest}  (imported on the server)\n`);
      return;
    }
    if (remote) {
      const { remoteCheckin } = await import('../../serve/index.js');
      const bar = await progressBar('checking in');
      try {
        const r = await remoteCheckin(remote, image, {
          name: String(o.name),
          description: o.description as string | undefined,
          parents: o.parent as string[] | undefined,
          tags: (o.tag as string[]) ?? [],
          exact: Boolean(o.exact),
          openOptions: openOptionsFrom(o),
          devices,
          onProgress: bar ? (d, t) => bar.update(d, t) : undefined,
          batchBytes: o.batchBytes ? Number(o.batchBytes) : undefined,
        });
        bar?.stop();
        for (const w of r.warnings.slice(0, 20)) process.stderr.write(`strata: warning: ${w}\n`);
        if (o.json) return printJson(r);
        process.stdout.write(
          `${r.ref}  manifest ${r.manifest}\nsent: ${r.chunksSent} of ${r.chunks} chunks, ${humanSize(r.chunkBytesSent)} (${humanSize(r.requestBytes)} in requests)\n`,
        );
      } finally {
        bar?.stop();
      }
      return;
    }
    const { checkin } = await import('../../library/index.js');
    await useLibrary(
      o,
      async (lib) => {
        const bar = await progressBar('checking in');
        try {
          const r = await checkin(lib, image, {
            name: String(o.name),
            description: o.description as string | undefined,
            parents: o.parent as string[] | undefined,
            tags: (o.tag as string[]) ?? [],
            exact: Boolean(o.exact),
            openOptions: openOptionsFrom(o),
            devices,
            onProgress: bar ? (d, t) => bar.update(d, t) : undefined,
          });
          bar?.stop();
          warnAll(r.warnings);
          if (o.json) return printJson({ library: lib.dir, ...r });
          process.stdout.write(
            [
              `${r.ref}  manifest ${r.manifest}`,
              `stored in:        ${inLibrary(lib)}`,
              `logical size:     ${humanSize(r.virtualSize)}`,
              `used (stored):    ${humanSize(r.usedBytes)}`,
              `new bytes stored: ${humanSize(r.newBytes)}`,
              `dedup ratio:      ${Number.isFinite(r.dedupRatio) ? r.dedupRatio.toFixed(2) : 'inf'} (used / new)`,
              '',
            ].join('\n'),
          );
        } finally {
          bar?.stop();
        }
      },
      true,
    );
  });

  withLib(
    program
      .command('checkout')
      .description('write a stored version as a sparse raw or qcow2 file')
      .argument('<ref>', 'NAME, NAME:TAG, NAME@VERSION or a manifest digest prefix')
      .argument('<out>', 'output file')
      .option('-O, --output-format <fmt>', 'raw or qcow2', 'raw')
      .option('--sync', 'fdatasync the output before renaming it into place')
      .option('--force', 'replace OUT when it exists')
      .option('--json', 'machine-readable output'),
  ).action(async (ref: string, out: string, o: Record<string, unknown>) => {
    const remote = await remoteOf(o);
    if (remote) {
      if (!o.force && existsSync(out)) {
        throw new StrataError('USAGE', 'output exists; --force replaces it', { file: out });
      }
      const { remoteCheckout } = await import('../../serve/index.js');
      const r = await remoteCheckout(remote, ref, out, {
        format: String(o.outputFormat) as 'raw' | 'qcow2',
        sync: Boolean(o.sync),
      });
      if (o.json) printJson(r);
      else process.stdout.write(`${r.ref} -> ${r.output} (${r.format}, ${humanSize(r.virtualSize)})\n`);
      return;
    }
    const { checkout } = await import('../../library/index.js');
    await useLibrary(
      o,
      async (lib) => {
        const bar = await progressBar('checking out');
        try {
          const r = await checkout(lib, ref, out, {
            format: String(o.outputFormat) as 'raw' | 'qcow2',
            sync: Boolean(o.sync),
            overwrite: Boolean(o.force),
            onProgress: bar ? (d, t) => bar.update(d, t) : undefined,
          });
          bar?.stop();
          if (o.json) printJson(r);
          else process.stdout.write(`${r.ref} -> ${r.output} (${r.format}, ${humanSize(r.virtualSize)})\n`);
        } finally {
          bar?.stop();
        }
      },
      false,
      true,
    );
  });

  withLib(
    program.command('images').description('images in the library').option('--json', 'machine-readable output'),
  ).action(async (o: Record<string, unknown>) => {
    await useLibraryOr(o, async (lib) => {
      const rows = lib ? await lib.catalog.images() : await (await remoteOf(o))!.images();
      if (o.json) return printJsonLines(rows);
      const out = [`${'NAME'.padEnd(24)} ${'VERSIONS'.padStart(8)} ${'LATEST'.padStart(6)}  TAGS`];
      for (const r of rows) {
        out.push(
          `${r.name.padEnd(24)} ${String(r.versions).padStart(8)} ${String(r.latest ?? '-').padStart(6)}  ${r.tags.join(' ')}`,
        );
      }
      process.stdout.write(`${out.join('\n')}\n`);
    });
  });

  withLib(
    program
      .command('versions')
      .description('versions of an image')
      .argument('<name>', 'image name')
      .option('--all', 'include deleted versions')
      .option('--json', 'machine-readable output'),
  ).action(async (name: string, o: Record<string, unknown>) => {
    await useLibraryOr(o, async (lib) => {
      const rows = lib ? await lib.catalog.versions(name, Boolean(o.all)) : await (await remoteOf(o))!.versions(name);
      if (rows.length === 0 && !o.all) throw new StrataError('NOT_FOUND', `no image named ${name}`);
      if (o.json) return printJsonLines(rows);
      const out = [
        `${'VERSION'.padEnd(7)} ${'CREATED'.padEnd(24)} ${'SIZE'.padStart(12)} ${'NEW'.padStart(12)} PARENTS / TAGS`,
      ];
      for (const v of rows) {
        out.push(
          `${String(v.number).padEnd(7)} ${v.created.padEnd(24)} ${String(v.virtualSize).padStart(12)} ${String(v.newBytes).padStart(12)} ${v.parents.map((p) => `${p.image}@${p.number}`).join(',') || '-'} ${v.tags.join(' ')}${v.state === 'deleted' ? ' [deleted]' : ''}`,
        );
      }
      process.stdout.write(`${out.join('\n')}\n`);
    });
  });

  withLib(
    program
      .command('describe')
      .description('a version: catalog facts, provenance, layout and file systems')
      .argument('<ref>', 'NAME, NAME:TAG, NAME@VERSION or a manifest digest prefix')
      .option('--json', 'machine-readable output'),
  ).action(async (ref: string, o: Record<string, unknown>) => {
    const { describeVersion } = await import('../../library/index.js');
    await useLibraryOr(o, async (lib) => {
      const d = lib ? await describeVersion(lib, ref) : await describeRemote(ref, o);
      if (o.json) return printJson(d);
      const L = d.layout as Record<string, unknown> & { volumes: Array<Record<string, unknown>> };
      const lines = [
        `version:      ${d.ref}`,
        `manifest:     ${d.manifest}`,
        `created:      ${d.created} by ${d.createdBy ?? '?'}`,
        `source:       ${d.sourceName} (${d.sourceFormat})`,
        `virtual size: ${humanSize(Number(d.virtualSize))}`,
        `used:         ${humanSize(Number(d.usedBytes))}`,
        `stored:       ${humanSize(Number(d.storedBytes))} (new in this version: ${humanSize(Number(d.newBytes))})`,
        `exact:        ${d.exact}`,
        `tags:         ${(d.tags as string[]).join(' ') || '-'}`,
        `provenance:   ${(d.provenance as string[]).join(' <- ') || '-'}`,
        `layout:       ${L.scheme}, ${L.chunks} chunks, ${L.ranges} ranges`,
      ];
      for (const v of L.volumes) {
        const fs = v.fs as Record<string, unknown> | undefined;
        lines.push(
          `  volume ${v.id === '' ? '(whole disk)' : v.id}: ${v.type}, ${humanSize(Number(v.size))}, ${v.content ?? 'unknown'}${fs ? `, ${fs.fileCount} paths, ${humanSize(Number(fs.usedBytes))} used` : ''}`,
        );
      }
      process.stdout.write(`${lines.join('\n')}\n`);
    });
  });

  withLib(
    program
      .command('tag')
      .description('point a tag (TAG or NAME:TAG) at a version; tags move')
      .argument('<ref>', 'version')
      .argument('<tag>', 'TAG or NAME:TAG')
      .option('--json', 'machine-readable output'),
  ).action(async (ref: string, tag: string, o: Record<string, unknown>) => {
    await useLibraryOr(o, async (lib) => {
      const remote = lib ? undefined : await remoteOf(o);
      const v = lib ? await lib.catalog.resolve(ref) : await remote!.resolve(ref);
      let t = tag;
      const colon = tag.lastIndexOf(':');
      if (colon > 0) {
        if (tag.slice(0, colon) !== v.image) {
          throw new StrataError('USAGE', `tag ${tag} names image ${tag.slice(0, colon)}, but ${ref} is ${v.image}`);
        }
        t = tag.slice(colon + 1);
      }
      if (lib) await lib.catalog.setTag(v.image, t, v.number);
      else await remote!.tag(v.image, t, v.number);
      const where = lib ? inLibrary(lib) : `service ${remote!.url}`;
      if (o.json) printJson({ ...(lib ? { library: lib.dir } : {}), image: v.image, tag: t, number: v.number });
      else process.stdout.write(`${v.image}:${t} -> ${v.image}@${v.number} (${where})\n`);
    });
  });

  withLib(
    program
      .command('rm')
      .description(
        'delete a version (its chunks go at the next gc); with PATHs: a new version with those paths removed from its file system',
      )
      .argument('<ref>', 'version')
      .argument('[paths...]', 'absolute paths in the image to remove (a new version; REF stays)')
      .option('-r, --recursive', 'with PATHs: remove directories and what they hold')
      .option('-m, --message <text>', "with PATHs: the new version's message")
      .option('--part <n>', 'with PATHs: the partition whose file system is edited')
      .option('--json', 'machine-readable output'),
  ).action(async (ref: string, paths: string[], o: Record<string, unknown>) => {
    if (paths.length > 0) {
      const { runEdit } = await import('./edit.js');
      return runEdit(
        ref,
        paths.map((p) => ({ op: 'rm' as const, path: p, recursive: Boolean(o.recursive) })),
        o,
      );
    }
    if (o.recursive) throw new StrataError('USAGE', '-r removes paths inside an image: give PATHs (rm REF PATH -r)');
    await useLibraryOr(o, async (lib) => {
      const remote = lib ? undefined : await remoteOf(o);
      const v = lib ? await lib.catalog.resolve(ref) : await remote!.deleteVersion(ref);
      if (lib) await lib.catalog.deleteVersion(v.image, v.number);
      const where = lib ? inLibrary(lib) : `service ${remote!.url}`;
      if (o.json) printJson({ ...(lib ? { library: lib.dir } : {}), deleted: `${v.image}@${v.number}` });
      else process.stdout.write(`deleted ${v.image}@${v.number} (${where})\n`);
    });
  });

  withLib(
    program
      .command('gc')
      .description('mark and sweep: drop chunks no active version needs (waits for running check-ins)')
      .option('--wait <seconds>', 'how long to wait for running check-ins', '600')
      .option(
        '--upload-grace <duration>',
        'keep chunks uploaded to the library service for an uncommitted version this long (30m, 24h, 0s)',
        '24h',
      )
      .option('--json', 'machine-readable output'),
  ).action(async (o: Record<string, unknown>) => {
    const { gc } = await import('../../library/index.js');
    const { parseDuration } = await import('../../serve/index.js');
    const uploadGraceMs = parseDuration(String(o.uploadGrace));
    await useLibrary(o, async (lib) => {
      const r = await gc(lib, { lockWaitMs: Number(o.wait) * 1000, uploadGraceMs });
      if (o.json) return printJson({ library: lib.dir, ...r });
      process.stdout.write(
        `${r.liveVersions} versions, ${r.liveBlobs} blobs kept; ${r.deletedPacks} packs removed, ${r.rewrittenPacks} rewritten, ${humanSize(r.freedBytes)} freed (${inLibrary(lib)})\n`,
      );
    });
  });

  withLib(
    program
      .command('verify')
      .description('re-hash every pack (or every blob of one version) and check each version is complete')
      .argument('[ref]', 'only this version')
      .option('--json', 'machine-readable output'),
  ).action(async (ref: string | undefined, o: Record<string, unknown>) => {
    const { verifyLibrary } = await import('../../library/index.js');
    await useLibrary(o, async (lib) => {
      const r = await verifyLibrary(lib, ref);
      if (o.json) printJson(r);
      else {
        process.stdout.write(
          `${r.versions} versions, ${r.packs} packs, ${r.blobs} blobs, ${humanSize(r.bytes)} checked; ${r.errors.length} errors, ${r.missing.length} missing blobs, ${r.orphanPacks.length} orphan packs\n`,
        );
        for (const e of r.errors.slice(0, 50)) process.stdout.write(`error: ${e}\n`);
        for (const m of r.missing.slice(0, 50)) process.stdout.write(`missing: ${m}\n`);
      }
      if (r.errors.length > 0 || r.missing.length > 0) {
        throw new StrataError(
          'CORRUPT',
          `verify found ${r.errors.length} errors and ${r.missing.length} missing blobs`,
          {
            file: lib.dir,
          },
        );
      }
    });
  });
}

/** Whether two spellings name one folder. */
function libraryIs(a: string, b: string): boolean {
  return path.resolve(a) === path.resolve(b);
}

/** A path as one shell word. */
function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

async function describeRemote(ref: string, o: Record<string, unknown>): Promise<Record<string, unknown>> {
  const remote = (await remoteOf(o)) as RemoteLibrary;
  const d = await remote.describe(ref);
  // the provenance chain, first parents up, as far as this caller may read
  const chain: string[] = [];
  let cur = d.parents[0];
  const seen = new Set<string>();
  while (cur && chain.length < 1000) {
    const key = `${cur.image}@${cur.number}`;
    if (seen.has(key)) break;
    seen.add(key);
    chain.push(key);
    cur = (await remote.resolve(key).catch(() => undefined))?.parents[0] as typeof cur;
  }
  return { ...d, provenance: chain };
}
