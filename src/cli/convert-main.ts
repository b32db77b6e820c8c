#!/usr/bin/env node
import * as nodeModule from 'node:module';
import { CONVERT_GROUP } from './image-groups.js';
import { mainWith } from './program.js';

/**
 * `strata convert` as a program of its own, bundled apart (dist/cli/strata-convert.cjs, which
 * launch.ts runs for that verb): the image bundle (info, map and convert; 0.7 MB) also carries
 * the file-system readers that info describes, and a short convert is mostly start-up (issue
 * 26). A bundle of 0.4 MB took ~5 ms less CPU per 1 MiB convert (52.8 against 57.9 ms, seven
 * interleaved rounds of ten runs; `node -e 0` 28.8 ms).
 */
(nodeModule as { enableCompileCache?: () => unknown }).enableCompileCache?.();

mainWith([CONVERT_GROUP], process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
