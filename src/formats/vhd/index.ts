import { unsupported } from '../../util/errors.js';
import type { FormatDriver } from '../types.js';

// Placeholder until the vhd reader lands: never claims a file.
export const vhdDriver: FormatDriver = {
  name: 'vhd',
  probe: () => false,
  open: async (ctx) => {
    throw unsupported('vhd reader not implemented yet', { file: ctx.location });
  },
};
