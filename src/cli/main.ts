import type { Command } from 'commander';
import { IMAGE_GROUPS } from './image-groups.js';
import { buildProgramWith, type CommandGroup, mainWith } from './program.js';

/**
 * The `strata` command with every verb (src/cli/program.ts wires them). A command group's
 * module (and the readers it pulls in) is loaded only when one of its verbs is asked for;
 * help and unknown verbs load every group. convert, info and map also run from a bundle of
 * their own (image-main.ts, chosen by launch.ts), which parses a fraction of this one.
 */
const GROUPS: CommandGroup[] = [
  ...IMAGE_GROUPS,
  {
    verbs: ['parts', 'fsinfo', 'ls', 'cat', 'stat', 'extract'],
    load: async () => (await import('./commands/fs.js')).registerFsCommands,
  },
  {
    verbs: ['whatis', 'blockmap', 'trace'],
    load: async () => (await import('./commands/blockmap.js')).registerBlockmapCommands,
  },
  {
    verbs: ['inspect', 'diff', 'search', 'reinspect'],
    load: async () => (await import('./commands/inspect.js')).registerInspectCommands,
  },
  {
    verbs: ['mount', 'umount', 'virtiofs', 'commit'],
    load: async () => (await import('./commands/mount.js')).registerMountCommands,
  },
  { verbs: ['nbd'], load: async () => (await import('./commands/nbd.js')).registerNbdCommand },
  { verbs: ['cache'], load: async () => (await import('./commands/cache.js')).registerCacheCommands },
  { verbs: ['deploy'], load: async () => (await import('./commands/deploy.js')).registerDeployCommand },
  { verbs: ['profile'], load: async () => (await import('./commands/profile.js')).registerProfileCommands },
  {
    verbs: ['preload', 'export-index'],
    load: async () => (await import('./commands/preload.js')).registerPreloadCommands,
  },
  {
    verbs: ['serve', 'user', 'project', 'token'],
    load: async () => (await import('./commands/serve.js')).registerServeCommands,
  },
  { verbs: ['db', 'migrate'], load: async () => (await import('./commands/scale.js')).registerScaleCommands },
  { verbs: ['rebase'], load: async () => (await import('./commands/rebase.js')).registerRebaseCommand },
  {
    verbs: ['analytics', 'simulate', 'bench'],
    load: async () => (await import('./commands/analytics.js')).registerAnalyticsCommands,
  },
  { verbs: ['demo'], load: async () => (await import('./commands/demo.js')).registerDemoCommand },
  {
    verbs: ['put', 'mkdir', 'ln', 'chmod', 'chown', 'edit', 'log'],
    load: async () => (await import('./commands/edit.js')).registerEditCommands,
  },
  {
    verbs: ['completion'],
    // handed buildProgram rather than importing this file (no import cycle; test/layers.test.ts)
    load: async () => {
      const { registerCompletionCommand } = await import('./commands/completion.js');
      return (program) => registerCompletionCommand(program, buildProgram);
    },
  },
  {
    verbs: ['init', 'checkin', 'checkout', 'images', 'versions', 'describe', 'tag', 'rm', 'gc', 'verify'],
    load: async () => (await import('./commands/library.js')).registerLibraryCommands,
  },
];

/** A program with the commands for `verb` (all of them when `verb` is not one we know). */
export function buildProgram(verb?: string): Promise<Command> {
  return buildProgramWith(GROUPS, verb);
}

export function main(argv: string[]): Promise<number> {
  return mainWith(GROUPS, argv);
}
