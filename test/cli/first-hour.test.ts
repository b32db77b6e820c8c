/**
 * Issue 15, "the first hour": the CLI as a new user meets it, on a debootstrapped Debian in
 * a GPT disk with an EFI vfat partition and an ext4 root (mkfs, sgdisk, mtools, qemu-img),
 * read as a file, over HTTP (a small range-serving server in this process) and as a library
 * version. Oracles: the tree the image was made from, qemu-img, bash itself for pipes.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, lstatSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CLI, jsonLines, strata } from '../helpers/cli.js';
import { debianEfiDisk } from '../helpers/debian-tree.js';
import { type FileServer, serveFiles } from '../helpers/http-files.js';
import { run, scratch } from '../helpers/tools.js';

let deb: { qcow2: string; raw: string; tree: string };
let box: string;
let lib: string;
let http: FileServer;
/** The same disk three ways: a file, a URL, a library version. */
let forms: Record<'file' | 'url' | 'ref', string>;

const treeFile = (p: string) => readFileSync(path.join(deb.tree, p));

/** Run the CLI in a shell pipeline; returns the CLI's own status (PIPESTATUS) and its stderr. */
async function piped(args: string[], tail = 'head -1 >/dev/null'): Promise<{ status: number; stderr: string }> {
  const err = path.join(box, `stderr-${Math.random().toString(36).slice(2)}`);
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const out = await run('bash', [
    '-c',
    `${q(process.execPath)} ${q(CLI)} ${args.map(q).join(' ')} 2>${q(err)} | ${tail}; echo "\${PIPESTATUS[0]}"`,
  ]);
  const stderr = readFileSync(err, 'utf8');
  rmSync(err);
  return { status: Number(out.trim()), stderr };
}

describe('the first hour', { timeout: 900_000 }, () => {
  before(async () => {
    deb = await debianEfiDisk();
    box = scratch('first-hour');
    lib = path.join(box, 'lib');
    // the disk over HTTP: its own folder, served by range requests
    http = await serveFiles(path.dirname(deb.qcow2));
    const c = await strata(['checkin', deb.qcow2, '--name', 'debian', '--library', lib]);
    assert.equal(c.code, 0, c.stderr);
    forms = { file: deb.qcow2, url: http.url(path.basename(deb.qcow2)), ref: 'debian@1' };
  });
  after(async () => {
    await http?.close();
    if (box) rmSync(box, { recursive: true, force: true });
  });

  test('1: cat, stat and extract follow a final symlink inside the image, never out; -P does not; a loop is an error', async () => {
    const osRelease = treeFile('usr/lib/os-release');
    assert.ok(
      lstatSync(path.join(deb.tree, 'etc/os-release')).isSymbolicLink(),
      'Debian has /etc/os-release as a link',
    );
    for (const [form, t] of Object.entries(forms)) {
      const cat = await strata(['cat', t, '/etc/os-release', '--library', lib]);
      assert.equal(cat.code, 0, `${form}: ${cat.stderr}`);
      assert.ok(cat.stdoutBytes.equals(osRelease), form);
      // absolute target and a target climbing past the root: both the image's /etc/hostname
      const hostname = treeFile('etc/hostname');
      assert.notDeepEqual(readFileSync('/etc/hostname'), hostname, 'the host must differ for this to mean anything');
      for (const link of ['/etc/strata-abs-link', '/etc/strata-climb-link']) {
        const r = await strata(['cat', t, link, '--library', lib]);
        assert.equal(r.code, 0, `${form} ${link}: ${r.stderr}`);
        assert.ok(r.stdoutBytes.equals(hostname), `${form} ${link}`);
      }
      const loop = await strata(['cat', t, '/strata-loop-a', '--library', lib]);
      assert.equal(loop.code, 1, form);
      assert.match(loop.stderr, /^strata: .*symbolic link loop.*\/strata-loop-a\n$/, form);
      const noFollow = await strata(['cat', '-P', t, '/etc/os-release', '--library', lib]);
      assert.equal(noFollow.code, 1, form);
      assert.match(noFollow.stderr, /symlink, not a regular file/);
    }
    const st = await strata(['stat', '--json', deb.qcow2, '/etc/os-release']);
    assert.equal(st.code, 0, st.stderr);
    const rec = JSON.parse(st.stdout);
    assert.equal(rec.type, 'file');
    assert.equal(rec.size, osRelease.length);
    assert.equal(rec.link, '../usr/lib/os-release');
    const lst = JSON.parse((await strata(['stat', '--json', '--no-follow', deb.qcow2, '/etc/os-release'])).stdout);
    assert.equal(lst.type, 'symlink');
    assert.equal(lst.target, '../usr/lib/os-release');
    const dest = path.join(box, 'x1');
    const ex = await strata(['extract', deb.qcow2, '/etc/os-release', dest]);
    assert.equal(ex.code, 0, ex.stderr);
    assert.ok(lstatSync(path.join(dest, 'os-release')).isFile());
    assert.ok(readFileSync(path.join(dest, 'os-release')).equals(osRelease));
    const exP = await strata(['extract', '-P', deb.qcow2, '/etc/os-release', path.join(box, 'x1p')]);
    assert.equal(exP.code, 0, exP.stderr);
    assert.ok(lstatSync(path.join(box, 'x1p', 'os-release')).isSymbolicLink());
  });

  test('2: every image-reading command takes a file, a URL and a library version, with one output', async () => {
    const outs: Record<string, Record<string, string>> = {};
    // accesses to the EFI partition, the root file system's metadata and its files
    let accesses = '';
    for (let off = 1 << 20; off < 120 << 20; off += 3 << 20) accesses += `${off},8192\n`;
    writeFileSync(path.join(box, 'trace2.csv'), accesses);
    const cmds: Record<string, string[]> = {
      parts: ['parts', '@'],
      fsinfo: ['fsinfo', '@', '--part', '2'],
      ls: ['ls', '-l', '-R', '@', '/'],
      lsJson: ['ls', '--json', '@', '/usr/bin'],
      cat: ['cat', '@', '/etc/passwd'],
      stat: ['stat', '--json', '@', '/usr/bin/bash'],
      whatis: ['whatis', '@', '0x1200000+4096'],
      blockmap: ['blockmap', '--summary', '@'],
      used: ['map', '--used', '--json', '@'],
      trace: ['trace', 'resolve', '@', path.join(box, 'trace2.csv')],
      info: ['info', '@'],
      map: ['map', '@'],
      inspect: ['inspect', '@'],
    };
    for (const [form, t] of Object.entries(forms)) {
      outs[form] = {};
      for (const [name, args] of Object.entries(cmds)) {
        const r = await strata([...args.map((a) => (a === '@' ? t : a)), '--library', lib]);
        assert.equal(r.code, 0, `${name} ${form}: ${r.stderr}`);
        outs[form][name] = r.stdout;
      }
      const dest = path.join(box, `x2-${form}`);
      const ex = await strata(['extract', t, '/etc/apt', dest, '--library', lib]);
      assert.equal(ex.code, 0, `extract ${form}: ${ex.stderr}`);
      assert.ok(readFileSync(path.join(dest, 'sources.list')).equals(treeFile('etc/apt/sources.list')));
      const conv = path.join(box, `conv-${form}.raw`);
      const cv = await strata(['convert', t, conv, '-O', 'raw', '--library', lib]);
      assert.equal(cv.code, 0, `convert ${form}: ${cv.stderr}`);
    }
    // what the file system says is the same whichever way the disk came
    for (const name of [
      'parts',
      'fsinfo',
      'ls',
      'lsJson',
      'cat',
      'stat',
      'whatis',
      'blockmap',
      'used',
      'trace',
      'inspect',
    ]) {
      assert.equal(outs.url[name], outs.file[name], `${name}: URL vs file`);
      assert.equal(outs.ref[name], outs.file[name], `${name}: library version vs file`);
    }
    assert.equal(outs.file.cat, treeFile('etc/passwd').toString());
    assert.match(outs.ref.info, /library version/);
    // the stored version is used bytes only (free space skipped): equal to the file where the file system is
    await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', path.join(box, 'conv-url.raw'), deb.qcow2]);
    // nbd takes the same TARGET: ref:NAME served, and qemu-img reads it as the stored version
    const server = spawn(process.execPath, [CLI, 'nbd', 'ref:debian', '--port', '0', '--library', lib], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      const uri = await new Promise<string>((resolve, reject) => {
        let out = '';
        server.stdout.on('data', (b) => {
          out += b;
          const m = /^(nbd:\/\/\S+)\t/m.exec(out);
          if (m) resolve(m[1]);
        });
        server.on('close', (code) => reject(new Error(`nbd exited ${code}`)));
      });
      await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', path.join(box, 'conv-ref.raw'), uri]);
    } finally {
      server.kill('SIGTERM');
    }
    // diff: a library version against a file (the same disk): no differences, exit 0
    const d = await strata(['diff', 'debian@1', deb.qcow2, '--library', lib]);
    assert.equal(d.code, 0, d.stderr);
    assert.match(d.stdout, /files: 0 added .* 0 removed .* 0 changed .* 0 metadata only/);
  });

  test('2: a missing file is a missing file; a file wins over a version of its name and says so; ref: forces', async () => {
    const env = { STRATA_LIBRARY: lib };
    for (const verb of ['ls', 'info', 'stat', 'parts', 'map', 'inspect']) {
      const args = verb === 'stat' ? [verb, '/nonexistent/disk.qcow2', '/etc'] : [verb, '/nonexistent/disk.qcow2'];
      const r = await strata(args, { env });
      assert.equal(r.code, 1, verb);
      assert.match(r.stderr, /^strata: \/nonexistent\/disk\.qcow2: no such file\n$/, verb);
    }
    const bare = await strata(['ls', 'disk-typo.qcow2'], { env });
    assert.equal(bare.code, 1);
    assert.match(bare.stderr, /disk-typo\.qcow2: no such file, and no such image, tag or version in the library at /);
    // a file named like the version, in the current folder
    const cwd = path.join(box, 'cwd');
    mkdirSync(cwd, { recursive: true });
    writeFileSync(path.join(cwd, 'debian'), Buffer.alloc(1 << 20));
    const asFile = await strata(['info', 'debian'], { env, cwd });
    assert.equal(asFile.code, 0, asFile.stderr);
    assert.match(asFile.stderr, /note: 'debian' is read as the file here; write ref:debian/);
    assert.match(asFile.stdout, /virtual size: +1\.00 MiB/);
    const asRef = await strata(['info', 'ref:debian'], { env, cwd });
    assert.equal(asRef.code, 0, asRef.stderr);
    assert.match(asRef.stdout, /image: +debian@1\nformat: +raw \(library version\)/);
    const noRef = await strata(['info', 'ref:nothing'], { env, cwd });
    assert.equal(noRef.code, 1);
    assert.match(noRef.stderr, /^strata: nothing: no such image, tag or version in the library at /);
  });

  test('3: listing commands piped into head -1 exit 0 without a stack trace; --json of a listing is JSON Lines', async () => {
    const trace = path.join(box, 'trace.csv');
    let t = '';
    for (let i = 0; i < 20000; i++) t += `${(i * 4096) % (100 << 20)},4096\n`;
    writeFileSync(trace, t);
    const listings: string[][] = [
      ['map', deb.raw],
      ['map', '--json', deb.raw],
      ['map', '--used', '--json', deb.qcow2],
      ['blockmap', deb.qcow2],
      ['blockmap', '--json', deb.qcow2],
      ['trace', 'resolve', deb.qcow2, trace],
      ['trace', 'resolve', '--json', deb.qcow2, trace],
      ['ls', '-R', deb.qcow2, '/'],
      ['ls', '-R', '-l', '--json', deb.qcow2, '/'],
      ['ls', '-R', '-l', 'debian@1', '/', '--library', lib],
      ['whatis', '--json', deb.qcow2, '0+125829120'],
      ['cat', deb.qcow2, '/usr/bin/bash'],
    ];
    for (const args of listings) {
      const r = await piped(args);
      assert.equal(r.status, 0, `${args.join(' ')}: ${r.stderr}`);
      assert.doesNotMatch(r.stderr, /EPIPE|internal error|\n\s+at /, args.join(' '));
      if (args.includes('--json')) {
        const all = await strata(args);
        assert.equal(all.code, 0, all.stderr);
        const lines = jsonLines<Record<string, unknown>>(all.stdout);
        assert.ok(lines.length > 0 && lines.every((l) => typeof l === 'object' && !Array.isArray(l)), args.join(' '));
      }
    }
    // single objects stay one document
    const info = await strata(['info', '--json', deb.qcow2]);
    assert.equal(JSON.parse(info.stdout).format, 'qcow2');
  });

  test('6: init says how to select a library, writes name it, a failed first check-in leaves none behind', async () => {
    const other = path.join(box, 'chosen lib');
    const init = await strata(['init', other], { env: { STRATA_LIBRARY: '' } });
    assert.equal(init.code, 0, init.stderr);
    assert.match(init.stdout, /--library '?.*chosen lib'?/);
    assert.match(init.stdout, /export STRATA_LIBRARY='.*chosen lib'/);
    const ci = await strata(['checkin', deb.qcow2, '--name', 'd', '--library', other]);
    assert.equal(ci.code, 0, ci.stderr);
    assert.ok(ci.stdout.includes(`stored in:        library ${other}`), ci.stdout);
    const tag = await strata(['tag', 'd@1', 'd:first', '--library', other]);
    assert.ok(tag.stdout.includes(`(library ${other})`), tag.stdout);
    // a check-in that fails into a library it would create leaves nothing
    const fresh = path.join(box, 'new', 'deeper', 'lib');
    const bad = await strata(['checkin', path.join(box, 'no-such.qcow2'), '--name', 'x', '--library', fresh]);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /no-such\.qcow2/);
    assert.equal(existsSync(path.join(box, 'new')), false, 'no folder left behind');
    const empty = path.join(box, 'empty-lib');
    mkdirSync(empty);
    const bad2 = await strata(['checkin', path.join(box, 'no-such.qcow2'), '--name', 'x', '--library', empty]);
    assert.equal(bad2.code, 1);
    assert.deepEqual(await run('ls', ['-A', empty]), '', 'the empty folder stays empty');
  });

  test('8: diff and search exit like diff(1) and grep(1)', async () => {
    const copy = path.join(box, 'copy.qcow2');
    copyFileSync(deb.qcow2, copy);
    const same = await strata(['diff', deb.qcow2, copy]);
    assert.equal(same.code, 0, same.stderr);
    // another disk: the same tree with /etc/hostname changed (debugfs writes it into the root partition)
    const changed = path.join(box, 'changed.img');
    copyFileSync(deb.raw, changed);
    const part = path.join(box, 'root.part');
    await run('dd', [`if=${changed}`, `of=${part}`, 'bs=1M', 'skip=17', 'status=none']);
    writeFileSync(path.join(box, 'hn'), 'another-host\n');
    await run('debugfs', ['-w', '-R', 'rm /etc/hostname', part]);
    await run('debugfs', ['-w', '-R', `write ${path.join(box, 'hn')} /etc/hostname`, part]);
    await run('dd', [`if=${part}`, `of=${changed}`, 'bs=1M', 'seek=17', 'conv=notrunc', 'status=none']);
    const diff = await strata(['diff', deb.qcow2, changed]);
    assert.equal(diff.code, 1, diff.stderr);
    assert.match(diff.stdout, /\/etc\/hostname/);
    const vsRef = await strata(['diff', 'debian@1', changed, '--library', lib]);
    assert.equal(vsRef.code, 1, vsRef.stderr);
    const trouble = await strata(['diff', deb.qcow2, path.join(box, 'missing.img')]);
    assert.equal(trouble.code, 2);
    assert.match(trouble.stderr, /missing\.img: no such file/);
    const found = await strata(['search', '--user', 'deploy', '--library', lib]);
    assert.equal(found.code, 0, found.stderr);
    assert.match(found.stdout, /^debian@1/);
    const none = await strata(['search', '--user', 'nobody-here', '--library', lib]);
    assert.equal(none.code, 1, none.stderr);
    assert.equal(none.stdout, '');
    const bad = await strata(['search', '--digest', 'xyz', '--library', lib]);
    assert.equal(bad.code, 2);
  });

  // (Until FAT was read this was one warning line for the unread ESP; now the ESP is read.)
  test('8: an EFI vfat partition is read: no warning about it, in blockmap and in checkin', async () => {
    const bm = await strata(['blockmap', '--summary', deb.qcow2]);
    assert.equal(bm.code, 0, bm.stderr);
    assert.equal(bm.stderr.split('\n').filter((l) => /vfat/.test(l)).length, 0, bm.stderr);
    const ci = await strata(['checkin', deb.qcow2, '--name', 'again', '--library', lib]);
    assert.equal(ci.code, 0, ci.stderr);
    assert.equal(ci.stderr.split('\n').filter((l) => /vfat/.test(l)).length, 0, ci.stderr);
    // the file mtools put on the ESP, from the image and from the version just stored
    for (const target of [deb.qcow2, 'again']) {
      const cat = await strata(['cat', target, '/EFI/BOOT/BOOTX64.EFI', '--part', '1', '--library', lib]);
      assert.equal(cat.code, 0, cat.stderr);
      assert.equal(cat.stdout, 'not really a boot loader\n');
    }
  });

  test('8: the progress bar on a terminal: a real estimate, done never above the total', async () => {
    const frames = async (cmd: string[]) => {
      const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
      const line = [process.execPath, CLI, ...cmd].map(q).join(' ');
      // script(1) gives the command a terminal; its output is what the user sees
      const out = await run('script', ['-qec', line, '/dev/null']);
      return out;
    };
    const seen: string[] = [];
    for (const cmd of [
      ['checkin', deb.qcow2, '--name', 'tty', '--library', path.join(box, 'tty-lib')],
      ['checkout', 'tty@1', path.join(box, 'tty.qcow2'), '-O', 'qcow2', '--library', path.join(box, 'tty-lib')],
      ['convert', deb.qcow2, path.join(box, 'tty.raw'), '-O', 'raw'],
    ]) {
      const out = await frames(cmd);
      // the ETA is letters, digits or '--' (what follows is the terminal's escape sequences)
      const bars = [...out.matchAll(/(\d+)\/(\d+) MiB \| ETA ([-\w]+)/g)];
      assert.ok(bars.length > 0, `${cmd[0]}: no progress bar in ${JSON.stringify(out.slice(0, 400))}`);
      for (const [, done, total, eta] of bars) {
        assert.ok(Number(done) <= Number(total), `${cmd[0]}: ${done}/${total} MiB`);
        assert.match(eta, /^(--|\d+s|\d+m\d\ds|\d+h\d\dm)$/, `${cmd[0]}: ETA ${eta}`);
        seen.push(eta);
      }
    }
    assert.ok(seen.length > 0);
  });

  test('8: re-extracting into a populated folder: one summary line; --no-clobber quiet; --force replaces', async () => {
    const dest = path.join(box, 'x8');
    const first = await strata(['extract', deb.qcow2, '/etc', dest]);
    assert.equal(first.code, 0, first.stderr);
    writeFileSync(path.join(dest, 'hostname'), 'mine\n');
    const again = await strata(['extract', deb.qcow2, '/etc', dest]);
    assert.equal(again.code, 0, again.stderr);
    const lines = again.stderr.trim().split('\n');
    assert.equal(lines.length, 2, again.stderr); // the summary warning and the counts
    assert.match(lines[0], /^strata: warning: \d+ entries were already in .*--force replaces.*--no-clobber/);
    assert.equal(readFileSync(path.join(dest, 'hostname'), 'utf8'), 'mine\n');
    const quiet = await strata(['extract', '--no-clobber', deb.qcow2, '/etc', dest]);
    assert.equal(quiet.code, 0, quiet.stderr);
    assert.equal(quiet.stderr.trim().split('\n').length, 1, quiet.stderr);
    const forced = await strata(['extract', '--force', deb.qcow2, '/etc', dest]);
    assert.equal(forced.code, 0, forced.stderr);
    assert.ok(readFileSync(path.join(dest, 'hostname')).equals(treeFile('etc/hostname')));
    assert.ok(lstatSync(path.join(dest, 'os-release')).isSymbolicLink());
    const both = await strata(['extract', '--force', '--no-clobber', deb.qcow2, '/etc', dest]);
    assert.equal(both.code, 1);
  });

  test('8: checkout and convert refuse to overwrite an existing output unless --force', async () => {
    for (const [verb, args] of [
      ['checkout', ['checkout', 'debian@1', '@', '--library', lib]],
      ['convert', ['convert', deb.qcow2, '@', '-O', 'raw']],
    ] as const) {
      const out = path.join(box, `existing-${verb}.raw`);
      writeFileSync(out, 'keep me');
      const r = await strata(args.map((a) => (a === '@' ? out : a)));
      assert.equal(r.code, 1, verb);
      assert.match(r.stderr, /exists; --force replaces it/);
      assert.equal(readFileSync(out, 'utf8'), 'keep me');
      const f = await strata([...args.map((a) => (a === '@' ? out : a)), '--force']);
      assert.equal(f.code, 0, f.stderr);
      await run('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', out, deb.qcow2]);
    }
  });

  test('9: random bytes are raw, said to hold nothing recognised; inspect finds no OS and exits 1', async () => {
    const rnd = path.join(box, 'random.bin');
    const { randomBytes } = await import('node:crypto');
    writeFileSync(rnd, randomBytes(4 << 20));
    const info = await strata(['info', rnd]);
    assert.equal(info.code, 0, info.stderr);
    assert.match(info.stdout, /format: +raw/);
    assert.match(info.stdout, /content: +no partition table or file system recognised/);
    assert.equal(JSON.parse((await strata(['info', '--json', rnd])).stdout).content.recognised, false);
    const good = JSON.parse((await strata(['info', '--json', deb.qcow2])).stdout);
    assert.deepEqual(good.content, { recognised: true, scheme: 'gpt', summary: 'gpt: 2 volumes (vfat, ext4)' });
    const ins = await strata(['inspect', rnd]);
    assert.equal(ins.code, 1);
    assert.match(ins.stderr, /no operating system found/);
    const ok = await strata(['inspect', deb.qcow2]);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /distro: +debian/);
  });
});
