import { unsupported } from '../../util/errors.js';
import type { FormatDriver } from '../types.js';

// Placeholder until the vmdk reader lands: never claims a file.
export const vmdkDriver: FormatDriver = {
  name: 'vmdk',
  probe: () => false,
  open: async (ctx) => {
    throw unsupported('vmdk reader not implemented yet', { file: ctx.location });
  },
};
