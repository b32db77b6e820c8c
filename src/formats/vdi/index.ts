import { unsupported } from '../../util/errors.js';
import type { FormatDriver } from '../types.js';

// Placeholder until the vdi reader lands: never claims a file.
export const vdiDriver: FormatDriver = {
  name: 'vdi',
  probe: () => false,
  open: async (ctx) => {
    throw unsupported('vdi reader not implemented yet', { file: ctx.location });
  },
};
