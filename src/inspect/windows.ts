import type { OsTree } from './tree.js';
import type { OsInspection } from './types.js';

/** Placeholder until the hive reader lands: a Windows root with nothing read. */
export async function inspectWindows(tree: OsTree, root: string): Promise<OsInspection> {
  return {
    root,
    osType: 'windows',
    distro: null,
    productName: null,
    versionMajor: null,
    versionMinor: null,
    arch: null,
    hostname: null,
    packageFormat: null,
    packageManager: null,
    packages: [],
    kernels: [],
    users: [],
    groups: [],
    initSystem: null,
    mountpoints: {},
    warnings: tree.warnings,
  };
}
