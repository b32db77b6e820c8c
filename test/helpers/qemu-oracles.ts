/** qemu-img as the oracle of what Strata writes: `check` of a qcow2 and `compare` of two disks. */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { run } from './tools.js';

const pexec = promisify(execFile);

export interface CheckJson {
  'check-errors': number;
  corruptions?: number;
  leaks?: number;
  'compressed-clusters'?: number;
  'allocated-clusters'?: number;
}

/** `qemu-img check` of a qcow2 must exit 0 and report no errors, corruptions or leaks. */
export async function qemuCheck(file: string): Promise<CheckJson> {
  const j = JSON.parse(await run('qemu-img', ['check', '--output=json', '-f', 'qcow2', file])) as CheckJson;
  assert.equal(j['check-errors'], 0, `check errors in ${file}`);
  assert.equal(j.corruptions ?? 0, 0, `corruptions in ${file}`);
  assert.equal(j.leaks ?? 0, 0, `leaked clusters in ${file}`);
  return j;
}

/** `qemu-img compare` exits 0 only when both disks read the same (a format left undefined is probed). */
export async function qemuCompare(
  a: string,
  aFmt: string | undefined,
  b: string,
  bFmt: string | undefined,
): Promise<void> {
  const fmts = [...(aFmt ? ['-f', aFmt] : []), ...(bFmt ? ['-F', bFmt] : [])];
  try {
    await pexec('qemu-img', ['compare', ...fmts, a, b]);
  } catch (e) {
    const err = e as { stdout?: string; stderr?: string };
    assert.fail(`qemu-img compare ${a} ${b}: ${err.stdout ?? ''}${err.stderr ?? ''}`);
  }
}
