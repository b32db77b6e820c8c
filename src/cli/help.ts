import type { Command } from 'commander';

/**
 * Examples for every command's `--help`, and from the same text the man page
 * (scripts/man.mjs) and the test that runs each example (test/cli/help-examples.test.ts,
 * in a folder holding disk.qcow2, old.qcow2, new.qcow2, trace.csv, empty mnt/ and mnt-rw/ and a library with
 * debian@1 tagged 12). Keyed by the command's path below `strata`.
 */
export const EXAMPLES: Record<string, string[]> = {
  '': ['strata info disk.qcow2', 'strata ls disk.qcow2 /etc -l', 'strata checkin disk.qcow2 --name debian'],
  info: ['strata info disk.qcow2', 'strata info debian:12 --json'],
  map: ['strata map disk.qcow2', 'strata map disk.qcow2 --used --json'],
  convert: [
    'strata convert disk.qcow2 disk.raw -O raw',
    'strata convert disk.qcow2 small.qcow2 -O qcow2 --compression-type zstd',
  ],
  parts: ['strata parts disk.qcow2'],
  fsinfo: ['strata fsinfo disk.qcow2 --part 2'],
  ls: ['strata ls disk.qcow2 /etc -l', 'strata ls debian:12 /etc/apt -R --json'],
  cat: ['strata cat disk.qcow2 /etc/os-release', 'strata cat ref:debian@1 /etc/hostname'],
  stat: ['strata stat disk.qcow2 /bin/bash', 'strata stat disk.qcow2 /etc/os-release --no-follow --json'],
  extract: ['strata extract disk.qcow2 /etc ./etc-copy', 'strata extract disk.qcow2 /etc ./etc-copy --no-clobber'],
  whatis: ['strata whatis disk.qcow2 0x1200000+4096'],
  blockmap: ['strata blockmap disk.qcow2 --summary', 'strata blockmap disk.qcow2 --save disk.bm > disk.blocks'],
  trace: ['strata trace resolve disk.qcow2 trace.csv --summary'],
  'trace resolve': [
    'strata trace resolve disk.qcow2 trace.csv --summary',
    'strata trace resolve disk.qcow2 - < trace.csv',
  ],
  inspect: ['strata inspect disk.qcow2', 'strata inspect debian:12 --json'],
  diff: ['strata diff old.qcow2 new.qcow2', 'strata diff debian@1 new.qcow2 --packages'],
  search: ["strata search --package 'bash>=5'", "strata search --path '/etc/**/*.conf' --user root --json"],
  reinspect: ['strata reinspect --missing'],
  mount: ['strata mount disk.qcow2 mnt --background', 'strata mount debian:12 mnt-rw --rw --upper edits --background'],
  commit: ['strata commit mnt-rw --dry-run', 'strata commit edits --dry-run --json'],
  umount: ['strata umount mnt', 'strata umount mnt-rw'],
  virtiofs: ['strata virtiofs debian:12 --socket vfs.sock --tag root'],
  // the second writes stats.json when stopped, which `cache stats` then reads
  nbd: [
    'strata nbd disk.qcow2 --port 0',
    'strata nbd disk.qcow2 --port 0 --cache-policy introspective --prefetch meta,file --cache-stats stats.json',
  ],
  cache: ['strata cache stats stats.json'],
  'cache stats': ['strata cache stats stats.json', 'strata cache stats stats.json --json'],
  deploy: ['strata deploy debian:12 --to deployed.raw --port 0 --exit-when-complete'],
  analytics: [
    'strata analytics generate --requests 20000 --seed 1 > requests.jsonl',
    'strata analytics popularity --log requests.jsonl --svg popularity.svg',
    'strata analytics working-set --log requests.jsonl --since 2026-02-01 --json',
  ],
  simulate: [
    'strata simulate --log requests.jsonl --cache 64G --policy two-tier',
    'strata simulate --log requests.jsonl --cache 64G --preload --idle-capacity 32G --json',
  ],
  bench: [
    'strata bench run workloads/emulab-day.wml --remote http://127.0.0.1:8080 --set "versions=debian@1;debian@2" --check',
  ],
  'bench run': [
    'strata bench run workloads/ci-farm.wml --remote http://127.0.0.1:8080 --set log=requests.jsonl --check',
  ],
  profile: ['strata profile record debian:12 --trace trace.csv', 'strata profile show debian:12'],
  'profile record': ['strata profile record debian:12 --trace trace.csv --json'],
  'profile show': ['strata profile show debian:12 --json'],
  preload: [
    'strata preload debian:12 --cache chunk-cache',
    'strata preload --auto --cache chunk-cache --cache-size 40G --idle-capacity 20G --dry-run',
  ],
  'export-index': ['strata export-index'],
  serve: ['strata serve --listen 127.0.0.1:0 --quiet'],
  user: ['strata user add alice --project ops --role member', 'strata user list'],
  'user add': ['strata user add alice --project ops --role member', 'strata user add root --admin'],
  'user list': ['strata user list --json'],
  project: ['strata project add ops'],
  'project add': ['strata project add ops'],
  token: ['strata token create --user alice --project ops --scope write --expires 30d', 'strata token list'],
  'token create': ['strata token create --user alice --project ops --scope write --expires 30d'],
  'token revoke': ['strata token revoke "$(strata token list --user alice | head -1 | cut -d\' \' -f1)"'],
  'token list': ['strata token list --user alice'],
  demo: ['strata demo --dir ./demo'],
  init: ['strata init ./my-library'],
  checkin: ['strata checkin disk.qcow2 --name debian --tag 12'],
  checkout: ['strata checkout debian:12 debian.raw', 'strata checkout debian@1 debian.qcow2 -O qcow2'],
  images: ['strata images'],
  versions: ['strata versions debian'],
  describe: ['strata describe debian@1'],
  tag: ['strata tag debian@1 debian:stable'],
  // the help test's library holds one version: rebasing it onto itself plans nothing, and runs
  rebase: [
    'strata rebase debian:12 --from debian@1 --to debian:12 --dry-run',
    'strata rebase debian@1 --from debian@1 --to debian@1 --dry-run --json',
  ],
  rm: ['strata rm debian@1'],
  put: ['strata put debian:12 /etc/motd motd.txt --mode 644 -m "welcome text"'],
  mkdir: ['strata mkdir debian:12 /srv/www/html -p'],
  ln: ['strata ln -s /srv/www debian:12 /var/www-link'],
  chmod: ['strata chmod 600 debian:12 /etc/hostname'],
  chown: ['strata chown 1000:1000 debian:12 /etc/hostname --json'],
  edit: ['strata edit debian:12 --script edits.txt -m "web root"'],
  log: ['strata log debian', 'strata log debian --json --limit 3'],
  gc: ['strata gc'],
  verify: ['strata verify'],
  completion: ['strata completion bash > strata.bash', 'strata completion zsh > _strata'],
  db: ['strata db migrate'],
  'db migrate': ['strata db migrate --json'],
  // where to move the library: a postgres:// URL and an s3:// URL (or local, to move it back)
  migrate: ['strata migrate --to "$CATALOG_URL" --store "$STORE_URL"'],
};

/** The examples block as `--help` prints it after the options. */
export function examplesText(key: string): string {
  const ex = EXAMPLES[key];
  if (!ex?.length) return '';
  return `\nExamples:\n${ex.map((l) => `  $ ${l}`).join('\n')}\n`;
}

/** The path of a command below `strata`: '' for the program, 'trace resolve' for a subcommand. */
export function commandKey(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c?.parent; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

/** Every command of `program` (depth first, the program itself first). */
export function allCommands(program: Command): Command[] {
  const out: Command[] = [program];
  for (const c of program.commands) out.push(...allCommands(c));
  return out;
}

/** Put each command's examples under its `--help`. */
export function addExamples(program: Command): void {
  for (const c of allCommands(program)) {
    const text = examplesText(commandKey(c));
    if (text) c.addHelpText('after', text);
  }
}
