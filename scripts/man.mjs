// The man page, strata(1), generated from the same help text `strata --help` and
// `strata COMMAND --help` print (commander's help plus the examples of src/cli/help.ts).
// Run by `npm run man` (and `npm run build`): writes dist/man/strata.1.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'));
process.env.npm_package_version = pkg.version; // what `strata --version` says in the bundle
const { buildProgram } = await import(path.join(root, 'dist', 'src', 'cli', 'main.js'));
const { allCommands, commandKey, examplesText } = await import(path.join(root, 'dist', 'src', 'cli', 'help.js'));

/**
 * Text as roff: backslashes, minus signs and quotes escaped (so `--json` and 'bash>=5' come
 * out as typed, not as typographic dashes and quotes), other than ASCII as \[uXXXX], a line
 * starting with '.' kept literal.
 */
const roff = (s) =>
  s
    .replace(/\\/g, '\\e')
    .replace(/-/g, '\\-')
    .replace(/'/g, '\\(aq')
    .replace(/`/g, '\\(ga')
    // anything past ASCII by its code point (troff reads its input as Latin-1 otherwise)
    .replace(/[^\x00-\x7f]/gu, (c) => `\\[u${c.codePointAt(0).toString(16).toUpperCase().padStart(4, '0')}]`)
    .split('\n')
    .map((l) => (l.startsWith('.') ? `\\&${l}` : l))
    .join('\n');

// A fixed width, so the page does not depend on the terminal that built it.
const program = await buildProgram();
for (const c of allCommands(program)) c.configureOutput({ getOutHelpWidth: () => 78, getErrHelpWidth: () => 78 });
const help = (c) => `${c.helpInformation()}${examplesText(commandKey(c))}`.trimEnd();

const date = new Date(Number(process.env.SOURCE_DATE_EPOCH ?? 0) * 1000 || Date.now()).toISOString().slice(0, 10);
const out = [
  `.TH STRATA 1 "${date}" "strata ${pkg.version}" "User Commands"`,
  '.SH NAME',
  `strata \\- ${roff(pkg.description)}`,
  '.SH SYNOPSIS',
  '.B strata',
  '.I command',
  '[\\fIoptions\\fR] [\\fIarguments\\fR]',
  '.SH DESCRIPTION',
  '.nf',
  roff(help(program)),
  '.fi',
  '.SH COMMANDS',
];
for (const c of allCommands(program).slice(1)) {
  if (c.commands.length > 0 && c.registeredArguments.length === 0 && !c.description()) continue;
  out.push(`.SS "strata ${commandKey(c)}"`, '.nf', roff(help(c)), '.fi');
}
out.push(
  '.SH ENVIRONMENT',
  '.TP',
  '.B STRATA_LIBRARY',
  'The library a command uses when not given \\fB\\-\\-library\\fR (else ~/.local/share/strata/library).',
  '.TP',
  '.B STRATA_PROGRESS',
  'Set to 0 to turn the progress bar off on a terminal.',
  '.SH EXIT STATUS',
  '0 on success, 1 on failure, 2 on bad usage. \\fBdiff\\fR: 0 same, 1 different, 2 trouble;',
  '\\fBsearch\\fR: 0 found, 1 none, 2 trouble; \\fBinspect\\fR: 1 when no operating system is found.',
);
const dir = path.join(root, 'dist', 'man');
mkdirSync(dir, { recursive: true });
writeFileSync(path.join(dir, 'strata.1'), `${out.join('\n')}\n`);
console.log(`wrote ${path.relative(root, path.join(dir, 'strata.1'))}`);
