/**
 * Issue 15, item 4: knowing and installing the CLI. Every command's `--help` has examples,
 * and each example runs as printed (through sh, with `strata` on PATH) in a folder holding
 * what they name; the version, the package name, bash and zsh completion (run by bash and
 * loaded by zsh themselves) and the man page (rendered by groff/man) are checked too.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, copyFileSync, cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CLI, strata } from '../helpers/cli.js';
import { debianEfiDisk } from '../helpers/debian-tree.js';
import { pgWithSchema, testServices, uniqueName } from '../helpers/services.js';
import { ROOT, run, scratch } from '../helpers/tools.js';

const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
let box: string;
let env: Record<string, string>;

/** Every command path below `strata`, from the help itself ('' is the program). */
async function commandPaths(): Promise<string[]> {
  const out: string[] = [''];
  const walk = async (prefix: string[]) => {
    const r = await strata([...prefix, '--help']);
    assert.equal(r.code, 0, r.stderr);
    const section = r.stdout.split(/\nCommands:\n/)[1];
    if (!section) return;
    for (const m of section.matchAll(/^ {2}([a-z][\w-]*)/gm)) {
      if (m[1] === 'help') continue;
      out.push([...prefix, m[1]].join(' '));
      await walk([...prefix, m[1]]);
    }
  };
  await walk([]);
  return out;
}

const examplesOf = (help: string) => [...help.matchAll(/^ {2}\$ (strata .*)$/gm)].map((m) => m[1]);

/** Run one example line through sh in the sandbox; `nbd` and `serve` serve until told to stop. */
function runExample(
  line: string,
  extra: Record<string, string> = {},
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('sh', ['-c', line], { cwd: box, env: { ...process.env, ...env, ...extra } });
    let stdout = '';
    let stderr = '';
    let stopped = false;
    child.stdout.on('data', (b) => {
      stdout += b;
      // a server: up once it prints where it listens; then stopped as a user would (SIGTERM)
      if (line.startsWith('strata nbd') && /nbd:\/\//.test(stdout)) stop();
      if (line.startsWith('strata virtiofs') && /qemu arguments/.test(stdout)) stop();
    });
    child.stderr.on('data', (b) => {
      stderr += b;
      if (line.startsWith('strata serve') && /serving .* at http:\/\//.test(stderr)) stop();
    });
    const stop = () => {
      if (stopped) return;
      stopped = true;
      // the server is sh's child: signal it (by its parent, which is ours), not sh
      spawn('pkill', ['-TERM', '-P', String(child.pid)]);
    };
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code: code ?? (signal ? 128 : -1), stdout, stderr }));
  });
}

describe('help, version, completion and man page', { timeout: 900_000 }, () => {
  before(async () => {
    const deb = await debianEfiDisk();
    box = scratch('help-examples');
    const bin = path.join(box, 'bin');
    mkdirSync(bin);
    writeFileSync(path.join(bin, 'strata'), `#!/bin/sh\nexec '${process.execPath}' '${CLI}' "$@"\n`);
    chmodSync(path.join(bin, 'strata'), 0o755);
    for (const n of ['disk.qcow2', 'old.qcow2', 'new.qcow2']) copyFileSync(deb.qcow2, path.join(box, n));
    let trace = '';
    for (let i = 0; i < 64; i++) trace += `${17 * 1048576 + i * 65536},4096\n`;
    writeFileSync(path.join(box, 'trace.csv'), trace);
    // for the edit verbs: strata put ... motd.txt, strata edit ... --script edits.txt
    writeFileSync(path.join(box, 'motd.txt'), 'welcome\n');
    cpSync(path.join(ROOT, 'workloads'), path.join(box, 'workloads'), { recursive: true }); // strata bench run
    writeFileSync(path.join(box, 'edits.txt'), 'mkdir /srv/www -p\nput /srv/www/index.html motd.txt --mode 644\n');
    mkdirSync(path.join(box, 'mnt')); // strata mount ... mnt --background, then strata umount mnt
    mkdirSync(path.join(box, 'mnt-rw')); // strata mount ... mnt-rw --rw --upper edits, commit, umount
    env = { PATH: `${bin}:${process.env.PATH}`, STRATA_LIBRARY: path.join(box, 'lib'), HOME: box };
    const c = await strata(['checkin', deb.qcow2, '--name', 'debian', '--tag', '12'], { env });
    assert.equal(c.code, 0, c.stderr);
  });
  after(() => {
    if (box) rmSync(box, { recursive: true, force: true });
  });

  test('the package is ours, the command is strata, --version says which', async () => {
    assert.match(pkg.name, /^@strata-disk\//);
    assert.equal(pkg.bin.strata, 'dist/cli/strata.cjs');
    for (const flag of ['--version', '-V']) {
      const r = await strata([flag]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim(), pkg.version);
    }
    // README says how to install it
    const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    assert.ok(readme.includes(`npm install -g ${pkg.name}`), 'README install line');
    assert.ok(readme.includes('npm link'), 'README: install from a clone');
  });

  test('every command has examples in its --help, and each one runs as printed', async () => {
    const paths = await commandPaths();
    assert.ok(paths.length > 25, paths.join(', '));
    const all: string[] = [];
    for (const p of paths) {
      const r = await strata([...(p ? p.split(' ') : []), '--help']);
      const ex = examplesOf(r.stdout);
      assert.ok(ex.length > 0, `strata ${p} --help has no example`);
      for (const e of ex) if (!all.includes(e)) all.push(e);
    }
    assert.ok(all.length >= 40, `${all.length} examples`);
    // the ones that delete run last, so the others find what they name
    const last = (e: string) => /^strata (rm|gc|verify)\b/.test(e);
    // `migrate` moves the box's library to a real PostgreSQL and S3 (test/helpers/services.ts): the very last
    const moves = (e: string) => /^strata migrate\b/.test(e);
    const order = [...all.filter((e) => !last(e) && !moves(e)), ...all.filter(last), ...all.filter(moves)];
    for (const line of order) {
      let extra: Record<string, string> = {};
      if (moves(line)) {
        const svc = testServices();
        const name = uniqueName('help');
        extra = { ...svc.awsEnv, CATALOG_URL: pgWithSchema(svc.pg, name), STORE_URL: `${svc.s3}/${name}` };
      }
      const r = await runExample(line, extra);
      // diff: 0 same, 1 different, both answers
      const ok = r.code === 0 || (line.startsWith('strata diff') && r.code === 1);
      assert.ok(ok, `${line}: exit ${r.code}\n${r.stderr}`);
      assert.doesNotMatch(r.stderr, /internal error|\n\s+at /, line);
    }
  });

  test('bash completion: verbs, subcommands and options, as bash completes them', async () => {
    const script = path.join(box, 'strata.bash');
    writeFileSync(script, (await strata(['completion', 'bash'])).stdout);
    const complete = async (words: string[]) =>
      (
        await run('bash', [
          '-c',
          `source '${script}'; COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _strata; printf '%s\\n' "\${COMPREPLY[@]}"`,
        ])
      )
        .split('\n')
        .filter(Boolean)
        .sort();
    assert.deepEqual(await complete(['strata', 'che']), ['checkin', 'checkout']);
    assert.deepEqual(await complete(['strata', 'trace', '']), ['resolve']);
    assert.ok((await complete(['strata', 'cat', '--']))?.includes('--no-follow'));
    assert.ok((await complete(['strata', 'trace', 'resolve', '--s'])).includes('--summary'));
    assert.deepEqual(await complete(['strata', 'cat', path.join(box, 'disk.q')]), [path.join(box, 'disk.qcow2')]);
    const registered = await run('bash', ['-c', `source '${script}'; complete -p strata`]);
    assert.match(registered, /complete -F _strata strata/);
  });

  test('zsh completion: a script zsh parses and registers for strata', async () => {
    const dir = path.join(box, 'zfuncs');
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, '_strata'), (await strata(['completion', 'zsh'])).stdout);
    await run('zsh', ['-n', path.join(dir, '_strata')]);
    const out = await run('zsh', [
      '-f',
      '-c',
      `fpath=('${dir}' $fpath); autoload -Uz compinit; compinit -u -d '${path.join(box, 'zcompdump')}'; print -r -- $_comps[strata]`,
    ]);
    assert.equal(out.trim(), '_strata');
  });

  test('the man page is the help text, and groff reads it without a warning', async () => {
    const page = path.join(ROOT, 'dist', 'man', 'strata.1');
    const lint = await run('sh', ['-c', `groff -man -Tutf8 -ww -z '${page}' 2>&1`]);
    assert.equal(lint, '');
    const text = (await run('sh', ['-c', `MANWIDTH=200 man -l '${page}' 2>&1 | col -b`])).replace(/\s+/g, ' ');
    for (const p of await commandPaths()) {
      const help = (await strata([...(p ? p.split(' ') : []), '--help'])).stdout;
      for (const e of examplesOf(help)) assert.ok(text.includes(`$ ${e}`), `man page lacks example: ${e}`);
      const desc = help.split('\n')[2]?.trim();
      if (desc) assert.ok(text.includes(desc.replace(/\s+/g, ' ')), `man page lacks: ${desc}`);
    }
  });
});
