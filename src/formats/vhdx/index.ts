import { unsupported } from '../../util/errors.js';
import type { FormatDriver } from '../types.js';

// Placeholder until the vhdx reader lands: never claims a file.
export const vhdxDriver: FormatDriver = {
  name: 'vhdx',
  probe: () => false,
  open: async (ctx) => {
    throw unsupported('vhdx reader not implemented yet', { file: ctx.location });
  },
};
