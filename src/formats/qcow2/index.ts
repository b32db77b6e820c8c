import { unsupported } from '../../util/errors.js';
import type { FormatDriver } from '../types.js';

// Placeholder until the qcow2 reader lands: never claims a file.
export const qcow2Driver: FormatDriver = {
  name: 'qcow2',
  probe: () => false,
  open: async (ctx) => {
    throw unsupported('qcow2 reader not implemented yet', { file: ctx.location });
  },
};
