#!/usr/bin/env node
import * as nodeModule from 'node:module';
import { type CommandGroup, mainWith } from './program.js';

/**
 * `strata convert`, `info` and `map` as a program of their own, bundled apart
 * (dist/cli/strata-image.cjs, which launch.ts runs for these verbs): the whole CLI's bundle
 * is ~1.3 MB that V8 parses (or deserializes from the code cache) on every run, and a short
 * convert is mostly start-up (issue 26: qemu-img's whole command is ~5 ms of CPU).
 * Keep this list in step with IMAGE_VERBS in launch.ts and with main.ts's groups.
 */
export const IMAGE_GROUPS: CommandGroup[] = [
  { verbs: ['info', 'map'], load: async () => (await import('./commands/image.js')).registerImageCommands },
  { verbs: ['convert'], load: async () => (await import('./commands/convert.js')).registerConvertCommand },
];

(nodeModule as { enableCompileCache?: () => unknown }).enableCompileCache?.();

mainWith(IMAGE_GROUPS, process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
