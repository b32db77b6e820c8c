import { StrataError } from '../../util/errors.js';

/**
 * Errors as RFC 9457 problem details (application/problem+json): `type` names the kind
 * of problem (a URI reference under /problems/), `title` its short human name, `status`
 * the HTTP status, `detail` this occurrence.
 */
export const PROBLEM_TYPE = 'application/problem+json';

export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  instance?: string;
}

const TITLES: Record<number, [string, string]> = {
  400: ['bad-request', 'Bad request'],
  401: ['unauthorized', 'Not authenticated'],
  403: ['forbidden', 'Not allowed'],
  404: ['not-found', 'Not found'],
  405: ['method-not-allowed', 'Method not allowed'],
  409: ['conflict', 'Conflict'],
  413: ['too-large', 'Request too large'],
  415: ['unsupported-media-type', 'Unsupported media type'],
  416: ['range-not-satisfiable', 'Range not satisfiable'],
  422: ['unprocessable', 'Unprocessable content'],
  429: ['rate-limited', 'Too many requests'],
  500: ['internal', 'Internal error'],
  503: ['unavailable', 'Service unavailable'],
};

/** An error the API reports as it is: status and detail. */
export class HttpProblem extends Error {
  constructor(
    readonly status: number,
    detail: string,
    readonly slug?: string,
  ) {
    super(detail);
  }
}

export function problem(status: number, detail: string, slug?: string, instance?: string): Problem {
  const [s, title] = TITLES[status] ?? ['error', 'Error'];
  const p: Problem = { type: `/problems/${slug ?? s}`, title, status, detail };
  if (instance !== undefined) p.instance = instance;
  return p;
}

const CODE_STATUS: Record<string, number> = {
  NOT_FOUND: 404,
  USAGE: 400,
  DENIED: 403,
  LIMIT: 413,
  CORRUPT: 422,
  TRUNCATED: 422,
  UNSUPPORTED: 422,
  LOOP: 422,
  IO: 500,
};

/** Any thrown value as a problem (internal errors say no more than that). */
export function toProblem(e: unknown, instance?: string): Problem {
  if (e instanceof HttpProblem) return problem(e.status, e.message, e.slug, instance);
  if (e instanceof StrataError) return problem(CODE_STATUS[e.code] ?? 500, e.message, undefined, instance);
  const fe = e as { statusCode?: number; code?: string; message?: string; validation?: unknown };
  if (fe?.validation) return problem(400, fe.message ?? 'invalid request', 'invalid-request', instance);
  if (typeof fe?.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) {
    return problem(fe.statusCode, fe.message ?? 'bad request', undefined, instance);
  }
  return problem(500, 'internal error', undefined, instance);
}
