/**
 * The `strata` command's entry (bundled as dist/cli/strata.cjs): loads the bundled CLI with
 * V8's code cache, because compiling a bundle of a megabyte is ~15 ms of every run and a
 * short command is mostly start-up.
 *
 * Node >= 22.1 has its own cache (module.enableCompileCache, kept under the OS temporary
 * folder), enabled here for the whole process. On Node 20, requireCached (src/util/code-cache.ts)
 * compiles the bundle through vm.Script with cached data in the user's cache folder.
 */
import * as nodeModule from 'node:module';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { requireCached } from '../util/code-cache.js';
import { IMAGE_VERBS } from './image-verbs.js';

// convert runs from a bundle holding only it (src/cli/convert-main.ts), info and map from one
// holding the image verbs (src/cli/image-main.ts): a short convert is mostly start-up, and the
// whole CLI's bundle is ~1.3 MB to read and deserialize
const verb = process.argv[2] ?? '';
const bundle = verb === 'convert' ? 'strata-convert' : IMAGE_VERBS.includes(verb) ? 'strata-image' : 'strata-main';
(nodeModule as { enableCompileCache?: () => unknown }).enableCompileCache?.();
requireCached(path.join(path.dirname(fileURLToPath(import.meta.url)), `${bundle}.cjs`));
