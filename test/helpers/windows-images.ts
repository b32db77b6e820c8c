/**
 * A Windows-like tree for inspect: SOFTWARE and SYSTEM hives made by the real hivex tools
 * (`hivexregedit --merge` of .reg text into the seed hive of empty-hive.ts) under
 * /Windows/System32/config, with System32/cmd.exe (libguestfs looks for it), as ext4; and
 * the same tree on NTFS in partition 1 of an MBR disk (sfdisk) and of a GPT disk (sgdisk)
 * with an NTFS data volume in partition 2, the SYSTEM hive naming both in MountedDevices.
 * Used by test/inspect/windows.test.ts and bench/inspect.ts.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { emptyHive } from './empty-hive.js';
import { withNtfsMount } from './ntfs-images.js';
import { fixture, run } from './tools.js';

/**
 * The headers of an x86-64 console program from the PE/COFF layout, no code: libguestfs takes
 * a Windows root's architecture from System32/cmd.exe (`file` says "PE32+ executable
 * (console) x86-64").
 */
function peHeader(): Buffer {
  const b = Buffer.alloc(1024);
  b.write('MZ', 0, 'latin1');
  b.writeUInt32LE(0x80, 0x3c); // e_lfanew
  b.write('PE\0\0', 0x80, 'latin1');
  b.writeUInt16LE(0x8664, 0x84); // Machine: AMD64
  b.writeUInt16LE(240, 0x94); // SizeOfOptionalHeader
  b.writeUInt16LE(0x22, 0x96); // Characteristics: executable, large-address aware
  b.writeUInt16LE(0x20b, 0x98); // optional header magic: PE32+
  b.writeUInt16LE(3, 0x98 + 68); // Subsystem: Windows console
  return b;
}

export const PROGRAMS = 40;
export const BIG = 'B'.repeat(40_000);

export type Values = Record<string, string | number | Buffer>;

/**
 * .reg text for `keys` (every ancestor gets its own section first, as hivexregedit requires).
 * hivexregedit opens the .reg file without a decoding layer, so Perl takes its bytes as
 * Latin-1 and a quoted UTF-8 "für" lands in the hive as "fÃ¼r". A string with anything past
 * ASCII is therefore written as `hex(1):` (REG_SZ given as its UTF-16LE bytes with the
 * terminating NUL, as regedit exports strings it cannot quote): the hive holds the intended text.
 */
export function regText(prefix: string, keys: Record<string, Values>): string {
  const sections = new Map<string, Values>();
  for (const k of Object.keys(keys)) {
    const parts = k.split('\\');
    for (let i = 1; i <= parts.length; i++) {
      const p = parts.slice(0, i).join('\\');
      if (!sections.has(p)) sections.set(p, {});
    }
  }
  for (const [k, v] of Object.entries(keys)) sections.set(k, v);
  const quote = (s: string) => `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
  const hex = (b: Buffer) => [...b].map((x) => x.toString(16).padStart(2, '0')).join(',');
  const str = (s: string) => (/^[\x20-\x7e]*$/.test(s) ? quote(s) : `hex(1):${hex(Buffer.from(`${s}\0`, 'utf16le'))}`);
  let out = 'Windows Registry Editor Version 5.00\n\n';
  for (const [k, vals] of sections) {
    out += `[${prefix}\\${k}]\n`;
    for (const [n, v] of Object.entries(vals)) {
      const text =
        typeof v === 'number'
          ? `dword:${v.toString(16).padStart(8, '0')}`
          : Buffer.isBuffer(v)
            ? `hex:${hex(v)}`
            : str(v);
      out += `${quote(n)}=${text}\n`;
    }
    out += '\n';
  }
  return out;
}

export const CV = 'Microsoft\\Windows NT\\CurrentVersion';
export const UNINSTALL = 'Microsoft\\Windows\\CurrentVersion\\Uninstall';

export function softwareKeys(): Record<string, Values> {
  const keys: Record<string, Values> = {
    [CV]: {
      ProductName: 'Windows Server 2022 Datacenter',
      CurrentVersion: '6.3',
      CurrentBuild: '20348',
      CurrentBuildNumber: '20348',
      EditionID: 'ServerDatacenter',
      CurrentMajorVersionNumber: 10,
      CurrentMinorVersionNumber: 0,
      BigValue: BIG,
    },
    [`${UNINSTALL}\\NoDisplayName`]: { Publisher: 'nobody' },
    'WOW6432Node\\Microsoft\\Windows\\CurrentVersion\\Uninstall\\{WOW-1}': {
      DisplayName: 'Legacy 32-bit Tool',
      DisplayVersion: '1.0',
    },
  };
  for (let i = 0; i < PROGRAMS; i++) {
    keys[`${UNINSTALL}\\{${String(i).padStart(8, '0')}-STRATA}`] = {
      DisplayName: `Programme ${i} für Straße`,
      DisplayVersion: `${i}.${i % 7}.${i * 3}`,
      Publisher: `Vendor ${i % 5}`,
    };
  }
  return keys;
}

export async function windowsImage(): Promise<{ img: string; software: string; system: string }> {
  const dir = await fixture('inspect-windows-v5', async (out) => {
    const config = path.join(out, 'tree', 'Windows', 'System32', 'config');
    mkdirSync(config, { recursive: true });
    mkdirSync(path.join(out, 'tree', 'Windows', 'System32', 'drivers'));
    writeFileSync(path.join(out, 'tree', 'Windows', 'System32', 'cmd.exe'), peHeader());
    const software = path.join(config, 'SOFTWARE');
    const system = path.join(config, 'SYSTEM');
    writeFileSync(software, emptyHive());
    writeFileSync(system, emptyHive());
    writeFileSync(path.join(out, 'software.reg'), regText('HKEY_LOCAL_MACHINE\\SOFTWARE', softwareKeys()));
    writeFileSync(
      path.join(out, 'system.reg'),
      regText('HKEY_LOCAL_MACHINE\\SYSTEM', {
        Select: { Current: 2, Default: 2 },
        'ControlSet001\\Control\\ComputerName\\ComputerName': { ComputerName: 'OLD-SET' },
        'ControlSet002\\Control\\ComputerName\\ComputerName': { ComputerName: 'WIN-STRATA' },
      }),
    );
    await run('hivexregedit', [
      '--merge',
      '--prefix',
      'HKEY_LOCAL_MACHINE\\SOFTWARE',
      software,
      path.join(out, 'software.reg'),
    ]);
    await run('hivexregedit', [
      '--merge',
      '--prefix',
      'HKEY_LOCAL_MACHINE\\SYSTEM',
      system,
      path.join(out, 'system.reg'),
    ]);
    await run('mkfs.ext4', ['-q', '-F', '-d', path.join(out, 'tree'), path.join(out, 'win.img'), '16M']);
  });
  const config = path.join(dir, 'tree', 'Windows', 'System32', 'config');
  return {
    img: path.join(dir, 'win.img'),
    software: path.join(config, 'SOFTWARE'),
    system: path.join(config, 'SYSTEM'),
  };
}

/** MountedDevices data as Windows writes it: MBR signature + partition offset, or DMIO:ID: + GPT partition GUID. */
export const mbrDevice = (sig: number, offset: number) => {
  const b = Buffer.alloc(12);
  b.writeUInt32LE(sig, 0);
  b.writeBigUInt64LE(BigInt(offset), 4);
  return b;
};
export const gptDevice = (guid: string) => {
  const h = guid.replace(/-/g, '');
  const le = (s: string) => Buffer.from(s, 'hex').reverse();
  return Buffer.concat([
    Buffer.from('DMIO:ID:', 'latin1'),
    le(h.slice(0, 8)),
    le(h.slice(8, 12)),
    le(h.slice(12, 16)),
    Buffer.from(h.slice(16), 'hex'),
  ]);
};
export const SIG = 0x5354524a;
export const GUIDS = ['0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0', '11223344-5566-7788-99aa-bbccddeeff00'];
export const CDROM = '\\??\\IDE#CdRomQEMU_QEMU_DVD-ROM_2.5+#5&1e8b1a3&0&1.0.0#{53f56308-b6bf-11d0-94f2-00a0c91efb8b}';
/** Sectors of the two partitions (C: holds Windows, D: data), the same on the MBR and the GPT disk. */
export const PARTS = [
  { start: 2048, sectors: 65536 },
  { start: 67584, sectors: 32768 },
];

/**
 * The Windows tree (SYSTEM now with MountedDevices) on NTFS in partition 1 and an NTFS data
 * volume in partition 2, on an MBR disk (sfdisk) and on a GPT disk (sgdisk). The hive names
 * both disks' partitions, as a Windows hive keeps letters of disks no longer attached.
 */
export async function letterDisks(): Promise<{ mbr: string; gpt: string; system: string }> {
  const w = await windowsImage();
  const dir = await fixture('inspect-windows-letters-v4', async (out) => {
    mkdirSync(out);
    const tree = path.join(out, 'tree');
    await run('cp', ['-r', path.join(path.dirname(w.img), 'tree'), tree]);
    const system = path.join(tree, 'Windows', 'System32', 'config', 'SYSTEM');
    writeFileSync(system, emptyHive());
    writeFileSync(
      path.join(out, 'system.reg'),
      regText('HKEY_LOCAL_MACHINE\\SYSTEM', {
        Select: { Current: 1, Default: 1 },
        'ControlSet001\\Control\\ComputerName\\ComputerName': { ComputerName: 'WIN-LETTERS' },
        MountedDevices: {
          '\\DosDevices\\C:': mbrDevice(SIG, PARTS[0].start * 512),
          '\\DosDevices\\D:': mbrDevice(SIG, PARTS[1].start * 512),
          '\\DosDevices\\E:': Buffer.from(CDROM, 'utf16le'),
          '\\DosDevices\\F:': gptDevice(GUIDS[0]),
          '\\DosDevices\\G:': gptDevice(GUIDS[1]),
          '\\DosDevices\\H:': mbrDevice(0x0badf00d, PARTS[0].start * 512),
          '\\??\\Volume{0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0}': gptDevice(GUIDS[0]),
        },
      }),
    );
    await run('hivexregedit', [
      '--merge',
      '--prefix',
      'HKEY_LOCAL_MACHINE\\SYSTEM',
      system,
      path.join(out, 'system.reg'),
    ]);
    const c = path.join(out, 'c.img');
    const d = path.join(out, 'd.img');
    await run('truncate', ['-s', `${PARTS[0].sectors * 512}`, c]);
    await run('mkntfs', ['-F', '-Q', '-L', 'WINDOWS', c]);
    await withNtfsMount(c, 'rw', async (m) => {
      await run('cp', ['-r', `${tree}/.`, m]);
    });
    await run('truncate', ['-s', `${PARTS[1].sectors * 512}`, d]);
    await run('mkntfs', ['-F', '-Q', '-L', 'DATA', d]);
    const place = async (disk: string) => {
      for (const [i, img] of [c, d].entries())
        await run('dd', [
          `if=${img}`,
          `of=${disk}`,
          'bs=512',
          `seek=${PARTS[i].start}`,
          'conv=notrunc,sparse',
          'status=none',
        ]);
    };
    const mbr = path.join(out, 'mbr.img');
    await run('truncate', ['-s', '56M', mbr]);
    writeFileSync(
      path.join(out, 'mbr.sfdisk'),
      `label: dos\nlabel-id: 0x${SIG.toString(16)}\n${PARTS.map((p) => `start=${p.start}, size=${p.sectors}, type=7`).join('\n')}\n`,
    );
    await run('sh', ['-c', 'sfdisk -q "$1" < "$2"', 'sh', mbr, path.join(out, 'mbr.sfdisk')]);
    await place(mbr);
    const gpt = path.join(out, 'gpt.img');
    await run('truncate', ['-s', '56M', gpt]);
    const args = ['-o'];
    for (const [i, p] of PARTS.entries())
      args.push(
        '-n',
        `${i + 1}:${p.start}:${p.start + p.sectors - 1}`,
        '-t',
        `${i + 1}:0700`,
        '-u',
        `${i + 1}:${GUIDS[i]}`,
      );
    await run('sgdisk', [...args, gpt]);
    await place(gpt);
    rmSync(c);
    rmSync(d);
  });
  return {
    mbr: path.join(dir, 'mbr.img'),
    gpt: path.join(dir, 'gpt.img'),
    system: path.join(dir, 'tree', 'Windows', 'System32', 'config', 'SYSTEM'),
  };
}
