#!/usr/bin/env node
import * as nodeModule from 'node:module';
import { IMAGE_GROUPS } from './image-groups.js';
import { mainWith } from './program.js';

/**
 * `strata convert`, `info` and `map` as a program of their own, bundled apart
 * (dist/cli/strata-image.cjs, which launch.ts runs for these verbs): the whole CLI's bundle
 * is ~1.3 MB that V8 parses (or deserializes from the code cache) on every run, and a short
 * convert is mostly start-up (issue 26: qemu-img's whole command is ~5 ms of CPU).
 * Its groups (image-groups.ts) are also the whole CLI's; launch.ts picks this bundle by IMAGE_VERBS.
 */
(nodeModule as { enableCompileCache?: () => unknown }).enableCompileCache?.();

mainWith(IMAGE_GROUPS, process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
