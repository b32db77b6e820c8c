/**
 * Every failure Strata reports on purpose is a StrataError: it names the file (or
 * source), the on-disk structure and the byte offset where the problem was seen, so a
 * user can tell a corrupt image from a bug. Anything else escaping a parser is a bug.
 */
export type ErrorCode =
  | 'CORRUPT' // a structure is inconsistent or out of bounds
  | 'TRUNCATED' // the source ends before a structure does
  | 'UNSUPPORTED' // valid but not something we read (encryption, odd segment types ...)
  | 'DENIED' // refused by policy (path outside allowed root)
  | 'NOT_FOUND' // path or object does not exist
  | 'LOOP' // a cycle in a chain, tree or directory graph
  | 'LIMIT' // a declared size or count above what we allow
  | 'IO' // the underlying read failed
  | 'USAGE'; // the caller asked for something impossible

export interface ErrorWhere {
  /** The file, URL or source name the structure was read from. */
  file?: string;
  /** The structure being parsed, e.g. "qcow2 L1 table" or "ext4 inode 12". */
  structure?: string;
  /** Byte offset of the structure inside `file` (or the virtual disk, as stated). */
  offset?: number;
}

export class StrataError extends Error {
  readonly code: ErrorCode;
  readonly file?: string;
  readonly structure?: string;
  readonly offset?: number;

  constructor(code: ErrorCode, message: string, where: ErrorWhere = {}, options?: { cause?: unknown }) {
    super(formatMessage(message, where), options);
    this.name = 'StrataError';
    this.code = code;
    this.file = where.file;
    this.structure = where.structure;
    this.offset = where.offset;
  }
}

function formatMessage(message: string, where: ErrorWhere): string {
  const parts: string[] = [];
  if (where.file !== undefined) parts.push(where.file);
  if (where.structure !== undefined) parts.push(where.structure);
  if (where.offset !== undefined) parts.push(`offset ${where.offset} (0x${where.offset.toString(16)})`);
  return parts.length > 0 ? `${parts.join(': ')}: ${message}` : message;
}

export const corrupt = (message: string, where: ErrorWhere = {}) => new StrataError('CORRUPT', message, where);
export const unsupported = (message: string, where: ErrorWhere = {}) => new StrataError('UNSUPPORTED', message, where);

export function isStrataError(e: unknown): e is StrataError {
  return e instanceof StrataError;
}
