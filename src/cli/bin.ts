#!/usr/bin/env node
import * as nodeModule from 'node:module';
import { main } from './main.js';

// Node >= 22.1 can cache compiled code between runs; a short command is mostly start-up.
(nodeModule as { enableCompileCache?: () => unknown }).enableCompileCache?.();

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
