/**
 * Windows: SOFTWARE and SYSTEM hives made by the real hivex tools (`hivexregedit --merge` of
 * .reg text into an empty seed hive that test/helpers/empty-hive.ts writes from the format's
 * published layout: hivex writes every key and value), placed in an ext4 image laid out like a Windows
 * root (/Windows/System32/config). Values are checked against `hivexget` and the program
 * list against `hivexregedit --export`. A corrupted hive gives warnings, never a crash.
 */
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { Hive, valueText } from '../../src/inspect/hive.js';
import { inspectImage } from '../../src/inspect/inspect.js';
import { StrataError } from '../../src/util/errors.js';
import { strata } from '../helpers/cli.js';
import { emptyHive } from '../helpers/empty-hive.js';
import { withNtfsMount } from '../helpers/ntfs-images.js';
import { fixture, run, scratch } from '../helpers/tools.js';
import {
  BIG,
  CV,
  letterDisks,
  PROGRAMS,
  regText,
  softwareKeys,
  UNINSTALL,
  windowsImage,
} from '../helpers/windows-images.js';

const hivexget = async (hive: string, key: string, value: string) =>
  (await run('hivexget', [hive, `\\${key}`, value])).replace(/\n$/, '');

/** DisplayName/DisplayVersion/Publisher of every subkey of an Uninstall key, from hivexregedit --export. */
async function exportedPrograms(hive: string, key: string): Promise<string[]> {
  const text = await run('hivexregedit', ['--export', '--prefix', 'HKLM', hive, `\\${key}`]).catch(() => '');
  const out: string[] = [];
  for (const sec of text.split(/\n(?=\[)/)) {
    const field = (n: string) => new RegExp(`^"${n}"=(.*)$`, 'm').exec(sec)?.[1];
    const name = field('DisplayName');
    if (!name) continue;
    out.push([name, field('DisplayVersion') ?? '', field('Publisher') ?? ''].join('|'));
  }
  return out;
}

/** hivexregedit exports REG_SZ as hex(1):... (UTF-16LE with NUL); decode to text. */
function regString(v: string): string {
  if (v === '') return '';
  if (v.startsWith('"')) return JSON.parse(v);
  const m = /^hex\(1\):(.*)$/.exec(v);
  if (!m) throw new Error(`unexpected export ${v}`);
  const bytes = Buffer.from(m[1].split(',').map((x) => Number.parseInt(x, 16)));
  return bytes.toString('utf16le').replace(/\0+$/, '');
}

/** The same Windows tree copied through ntfs-3g onto a volume made by mkntfs. */
async function windowsNtfsImage(): Promise<{ img: string; software: string; system: string }> {
  const w = await windowsImage();
  const tree = path.join(path.dirname(w.img), 'tree');
  const img = await fixture('inspect-windows-ntfs-v4.img', async (out) => {
    await run('truncate', ['-s', '32M', out]);
    await run('mkntfs', ['-F', '-Q', out]);
    await withNtfsMount(out, 'rw', async (m) => {
      await run('cp', ['-r', `${tree}/.`, m]);
    });
  });
  return { ...w, img };
}

async function checkWindows(w: { img: string; software: string; system: string }): Promise<void> {
  const r = await inspectImage(w.img);
  assert.equal(r.roots.length, 1);
  const os = r.roots[0];
  assert.equal(os.osType, 'windows');
  assert.equal(os.productName, await hivexget(w.software, CV, 'ProductName'));
  assert.equal(os.windows?.edition, await hivexget(w.software, CV, 'EditionID'));
  assert.equal(os.windows?.build, await hivexget(w.software, CV, 'CurrentBuild'));
  assert.equal(os.windows?.currentVersion, await hivexget(w.software, CV, 'CurrentVersion'));
  assert.equal(os.versionMajor, Number(await hivexget(w.software, CV, 'CurrentMajorVersionNumber')));
  assert.equal(os.versionMinor, Number(await hivexget(w.software, CV, 'CurrentMinorVersionNumber')));
  const current = Number(await hivexget(w.system, 'Select', 'Current'));
  const set = `ControlSet${String(current).padStart(3, '0')}`;
  assert.equal(os.hostname, await hivexget(w.system, `${set}\\Control\\ComputerName\\ComputerName`, 'ComputerName'));
  const want = [
    ...(await exportedPrograms(w.software, UNINSTALL)),
    ...(await exportedPrograms(w.software, `WOW6432Node\\${UNINSTALL}`)),
  ]
    .map((l) => l.split('|').map(regString).join('|'))
    .sort();
  assert.equal(want.length, PROGRAMS + 1);
  // the hive holds the recipe's UTF-8 text, not its bytes read as Latin-1 ("fÃ¼r")
  const first = `${UNINSTALL}\\{00000000-STRATA}`;
  assert.equal(softwareKeys()[first].DisplayName, 'Programme 0 für Straße');
  assert.equal(await hivexget(w.software, first, 'DisplayName'), 'Programme 0 für Straße');
  assert.ok(want.includes('Programme 0 für Straße|0.0.0|Vendor 0'), want.join('\n'));
  const got = (os.windows?.programs ?? []).map((p) => [p.name, p.version ?? '', p.publisher ?? ''].join('|')).sort();
  assert.deepEqual(got, want);
  assert.deepEqual(os.warnings, []);
}

/** \\DosDevices\\X: values of MountedDevices as hivexregedit --export gives them (letter -> bytes). */
async function exportedLetters(system: string): Promise<Map<string, Buffer>> {
  const text = await run('hivexregedit', ['--export', '--prefix', 'HKLM', system, '\\MountedDevices']);
  const out = new Map<string, Buffer>();
  for (const m of text
    .replace(/\\\r?\n\s*/g, '')
    .matchAll(/^"\\\\DosDevices\\\\([A-Z]:)"=hex(?:\(3\))?:([0-9a-f,]*)$/gm))
    out.set(m[1], Buffer.from(m[2].split(',').map((x) => Number.parseInt(x, 16))));
  return out;
}

describe('inspect Windows hives', () => {
  test('product, version, build, edition, hostname and programs match hivexget / hivexregedit --export', async () => {
    await checkWindows(await windowsImage());
  });

  test('the same on NTFS (mkntfs, filled through ntfs-3g): inspect reaches Windows/System32/config', async () => {
    await checkWindows(await windowsNtfsImage());
  });

  test('the NTFS image in the library: checkin, a byte-identical checkout, and a diff naming the added file, the changed hive and the program it gained', async () => {
    const w = await windowsNtfsImage();
    const dir = scratch('windows-library');
    try {
      const env = { STRATA_LIBRARY: path.join(dir, 'lib') };
      const ok = async (args: string[]) => {
        const r = await strata(args, { env });
        assert.equal(r.code, 0, `strata ${args.join(' ')}: ${r.stderr}`);
        return r.stdout;
      };
      // version 2: a file added and a program installed (the SOFTWARE hive merged by hivexregedit), through ntfs-3g
      const v2 = path.join(dir, 'v2.img');
      await run('cp', ['--sparse=always', w.img, v2]);
      const reg = path.join(dir, 'new.reg');
      writeFileSync(
        reg,
        regText('HKEY_LOCAL_MACHINE\\SOFTWARE', {
          [`${UNINSTALL}\\{NEW-STRATA}`]: {
            DisplayName: 'Newly Installed',
            DisplayVersion: '2.0',
            Publisher: 'Strata',
          },
        }),
      );
      await withNtfsMount(v2, 'rw', async (m) => {
        writeFileSync(path.join(m, 'Windows', 'added.txt'), 'added\r\n');
        const hive = path.join(m, 'Windows', 'System32', 'config', 'SOFTWARE');
        await run('hivexregedit', ['--merge', '--prefix', 'HKEY_LOCAL_MACHINE\\SOFTWARE', hive, reg]);
      });
      await ok(['init']);
      await ok(['checkin', w.img, '--name', 'win']);
      await ok(['checkin', v2, '--name', 'win']);
      const out = path.join(dir, 'out.raw');
      await ok(['checkout', 'win@2', out]);
      // free clusters are not stored (hivexregedit left the old hive's data in some): the oracle
      // is ntfsclone's copy, which writes only the clusters $Bitmap marks used and the boot sectors
      const clone = path.join(dir, 'clone.raw');
      await run('ntfsclone', ['-q', '--overwrite', clone, v2]);
      assert.match(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', clone, out]), /Images are identical/);
      // and with --exact, every byte
      await ok(['checkin', v2, '--name', 'win-exact', '--exact']);
      const exact = path.join(dir, 'exact.raw');
      await ok(['checkout', 'win-exact@1', exact]);
      assert.match(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', v2, exact]), /Images are identical/);
      const d = JSON.parse(await strata(['diff', 'win@1', 'win@2', '--json'], { env }).then((r) => r.stdout));
      const paths = (k: string) => (d.files[k] as Array<{ path: string }>).map((x) => x.path);
      assert.deepEqual(paths('added'), ['/Windows/added.txt']);
      assert.deepEqual(paths('removed'), []);
      assert.ok(paths('changed').includes('/Windows/System32/config/SOFTWARE'), paths('changed').join(' '));
      // the version's inspection finds the program hivexget finds in the changed hive
      const insp = JSON.parse(await ok(['inspect', 'win@2', '--json']));
      assert.equal(insp.osType, 'windows');
      const programs = (insp.windows?.programs ?? []) as Array<{ name: string; version?: string }>;
      const shown = programs.find((p) => p.name === 'Newly Installed');
      const hive = path.join(dir, 'SOFTWARE');
      await run('sh', ['-c', `ntfscat "${v2}" Windows/System32/config/SOFTWARE > "${hive}"`]);
      assert.equal(shown?.version, await hivexget(hive, `${UNINSTALL}\\{NEW-STRATA}`, 'DisplayVersion'));
      assert.equal(programs.length, PROGRAMS + 2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("drive letters from SYSTEM\\MountedDevices resolve to this disk's partitions as sfdisk and sgdisk lay them out (MBR signature + offset, GPT partition GUID); others stay device names", async () => {
    const d = await letterDisks();
    const letters = await exportedLetters(d.system);
    assert.deepEqual([...letters.keys()].sort(), ['C:', 'D:', 'E:', 'F:', 'G:', 'H:']);
    const table = (
      JSON.parse(await run('sfdisk', ['--json', d.mbr])) as {
        partitiontable: { id: string; partitions: Array<{ node: string; start: number }> };
      }
    ).partitiontable;
    const gptGuids = new Map<string, string>();
    for (const n of [1, 2]) {
      const info = await run('sgdisk', ['-i', String(n), d.gpt]);
      gptGuids.set(/Partition unique GUID: (\S+)/.exec(info)![1].toLowerCase(), String(n));
    }
    for (const [disk, scheme] of [
      [d.mbr, 'mbr'],
      [d.gpt, 'gpt'],
    ] as const) {
      const r = await inspectImage(disk);
      assert.deepEqual(
        r.roots.map((x) => [x.root, x.osType, x.hostname]),
        [
          [
            '1',
            'windows',
            await hivexget(d.system, 'ControlSet001\\Control\\ComputerName\\ComputerName', 'ComputerName'),
          ],
        ],
      );
      const got = r.roots[0].mountpoints;
      assert.deepEqual(Object.keys(got).sort(), [...letters.keys()].sort());
      let resolved = 0;
      for (const [letter, data] of letters) {
        let volume: string | undefined;
        if (data.length === 12) {
          const sig = `0x${data.readUInt32LE(0).toString(16).padStart(8, '0')}`;
          const start = Number(data.readBigUInt64LE(4));
          const p = table.partitions.find((x) => x.start * 512 === start);
          if (scheme === 'mbr' && sig === table.id.toLowerCase() && p) volume = /(\d+)$/.exec(p.node)![1];
        } else if (data.subarray(0, 8).toString('latin1') === 'DMIO:ID:') {
          const h = data.subarray(8).toString('hex');
          const rev = (x: string) => x.match(/../g)!.reverse().join('');
          const guid = `${rev(h.slice(0, 8))}-${rev(h.slice(8, 12))}-${rev(h.slice(12, 16))}-${h.slice(16, 20)}-${h.slice(20)}`;
          if (scheme === 'gpt') volume = gptGuids.get(guid);
        } else {
          assert.equal(got[letter].device, data.toString('utf16le'), letter);
        }
        assert.equal(got[letter].volume, volume, `${scheme} ${letter}`);
        if (volume) {
          assert.equal(got[letter].fstype, 'ntfs', `${scheme} ${letter}`);
          resolved++;
        }
      }
      assert.equal(resolved, 2, `${scheme}: C: and D: (or F: and G:) resolve`);
      assert.deepEqual(r.roots[0].warnings, []);
    }
  });

  test('a 40,000-byte value reads back as hivexget reads it', async () => {
    const w = await windowsImage();
    const h = Hive.open(readFileSync(w.software), 'SOFTWARE');
    const k = h.path(CV);
    assert.ok(k);
    const v = valueText(h.get(k, 'BigValue'));
    assert.equal(v, await hivexget(w.software, CV, 'BigValue'));
    assert.equal(v?.length, BIG.length);
  });

  test('corrupted hives: every traversal ends in a value or a StrataError, never another exception', async () => {
    const w = await windowsImage();
    const good = readFileSync(w.software);
    let seed = 0x5eed;
    const rand = () => {
      seed ^= seed << 13;
      seed >>>= 0;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      seed >>>= 0;
      return seed;
    };
    let errors = 0;
    for (let round = 0; round < 300; round++) {
      const b = Buffer.from(good);
      for (let i = 0; i < 1 + (round % 40); i++) b[4096 + (rand() % (b.length - 4096))] = rand() & 0xff;
      if (round % 10 === 0) b.writeUInt32LE(rand(), 0x24); // the root cell offset itself
      try {
        const h = Hive.open(b, `fuzz ${round}`);
        const todo = [h.root()];
        for (let n = 0; todo.length > 0 && n < 10_000; n++) {
          const k = todo.pop()!;
          for (const v of h.values(k)) valueText(v);
          todo.push(...h.subkeys(k));
        }
      } catch (e) {
        assert.ok(e instanceof StrataError, `round ${round}: ${(e as Error).stack}`);
        errors++;
      }
    }
    assert.ok(errors > 0, 'corruption must be noticed at least once');
  });

  test('a disk with two OS roots (Windows in GPT partition 1, a Linux tree in 2): both are found', async () => {
    const w = await windowsImage();
    const dir = await fixture('inspect-two-roots-v3', async (out) => {
      mkdirSync(out);
      const tree = path.join(out, 'linux');
      for (const d of ['etc', 'usr/bin']) mkdirSync(path.join(tree, d), { recursive: true });
      writeFileSync(
        path.join(tree, 'etc/os-release'),
        'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n',
      );
      await run('mkfs.ext4', ['-q', '-F', '-d', tree, path.join(out, 'linux.img'), '8M']);
      const disk = path.join(out, 'disk.img');
      await run('truncate', ['-s', '40M', disk]);
      await run('sgdisk', ['-o', '-n', '1:2048:+16M', '-t', '1:0700', '-n', '2:0:+8M', '-t', '2:8300', disk]);
      await run('dd', [`if=${w.img}`, `of=${disk}`, 'bs=1M', 'seek=1', 'conv=notrunc,sparse', 'status=none']);
      await run('dd', [
        `if=${path.join(out, 'linux.img')}`,
        `of=${disk}`,
        'bs=1M',
        'seek=17',
        'conv=notrunc,sparse',
        'status=none',
      ]);
    });
    const r = await inspectImage(path.join(dir, 'disk.img'));
    assert.deepEqual(
      r.roots.map((x) => [x.root, x.osType, x.productName]),
      [
        ['1', 'windows', await hivexget(w.software, CV, 'ProductName')],
        ['2', 'linux', 'Debian GNU/Linux 12 (bookworm)'],
      ],
    );
  });

  test('a garbage SOFTWARE hive in the image: a Windows root with a warning, not a failure', async () => {
    const dir = await fixture('inspect-windows-bad-v2', async (out) => {
      const config = path.join(out, 'tree', 'Windows', 'System32', 'config');
      mkdirSync(config, { recursive: true });
      const b = emptyHive();
      b.writeUInt32LE(0x7fff0000, 0x24); // root cell far outside the hive
      writeFileSync(path.join(config, 'SOFTWARE'), b);
      writeFileSync(path.join(config, 'SYSTEM'), Buffer.from('regf but not really'));
      await run('mkfs.ext4', ['-q', '-F', '-d', path.join(out, 'tree'), path.join(out, 'win.img'), '8M']);
    });
    const r = await inspectImage(path.join(dir, 'win.img'));
    assert.equal(r.roots.length, 1);
    assert.equal(r.roots[0].osType, 'windows');
    assert.equal(r.roots[0].productName, null);
    assert.ok(r.roots[0].warnings.some((x) => x.includes('SOFTWARE')));
    assert.ok(r.roots[0].warnings.some((x) => x.includes('SYSTEM')));
  });
});
