import type { CommandGroup } from './program.js';

/**
 * convert, info and map: the command groups of the image bundle (image-main.ts), and the
 * first groups of the whole CLI (main.ts). One list for both; their verbs are IMAGE_VERBS
 * (image-verbs.ts), which launch.ts reads without loading these modules. CONVERT_GROUP alone
 * is the convert bundle's (convert-main.ts).
 */
export const CONVERT_GROUP: CommandGroup = {
  verbs: ['convert'],
  load: async () => (await import('./commands/convert.js')).registerConvertCommand,
};

export const IMAGE_GROUPS: CommandGroup[] = [
  { verbs: ['info', 'map'], load: async () => (await import('./commands/image.js')).registerImageCommands },
  CONVERT_GROUP,
];
