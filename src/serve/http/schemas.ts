/**
 * JSON Schemas of the API (OpenAPI 3.1 is JSON Schema 2020-12): fastify validates
 * requests with them and serializes responses through them, @fastify/swagger turns them
 * into /openapi.json. Inline on purpose: every route's document stands on its own.
 */
type S = Record<string, unknown>;

export const str = (extra: S = {}): S => ({ type: 'string', ...extra });
export const int = (extra: S = {}): S => ({ type: 'integer', ...extra });
export const bool = (): S => ({ type: 'boolean' });
export const num = (): S => ({ type: 'number' });
export const arr = (items: S, extra: S = {}): S => ({ type: 'array', items, ...extra });
export const nullable = (s: S): S => ({ ...s, type: [s.type as string, 'null'] });
export const obj = (properties: Record<string, S>, required: string[] = Object.keys(properties), extra: S = {}): S => ({
  type: 'object',
  properties,
  required,
  additionalProperties: false,
  ...extra,
});
/** An object whose shape the route does not fix (manifests, inspections, diffs). */
export const anyObject = (description: string): S => ({ type: 'object', additionalProperties: true, description });

export const IMAGE_NAME = '^(?!.*[.][.])[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$';
export const TAG = '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$';
export const PROJECT = '^[a-z0-9][a-z0-9._-]{0,63}$';
export const DIGEST = '^[0-9a-f]{64}$';
export const VISIBILITY = { type: 'string', enum: ['private', 'shared', 'public'] };

export const Problem = obj(
  {
    type: str(),
    title: str(),
    status: int(),
    detail: str(),
    instance: str(),
  },
  ['type', 'title', 'status', 'detail'],
  { description: 'RFC 9457 problem details' },
);

export const problemResponses = {
  '4xx': { description: 'a problem with the request', content: { 'application/problem+json': { schema: Problem } } },
  '5xx': { description: 'a problem of the server', content: { 'application/problem+json': { schema: Problem } } },
};

export const binary = (description: string, type = 'application/octet-stream') => ({
  description,
  content: { [type]: { schema: { type: 'string', format: 'binary' } } },
});

export const VersionKey = obj({ image: str(), number: int() });

export const Image = obj({
  name: str(),
  description: nullable(str()),
  created: str(),
  project: str(),
  visibility: VISIBILITY,
  versions: int(),
  latest: nullable(int()),
  tags: arr(str()),
});

export const Version = obj({
  image: str(),
  number: int(),
  ref: str(),
  manifest: str(),
  created: str(),
  createdBy: nullable(str()),
  sourceName: nullable(str()),
  sourceFormat: nullable(str()),
  virtualSize: int(),
  usedBytes: int(),
  storedBytes: int(),
  newBytes: int(),
  exact: bool(),
  parents: arr(VersionKey),
  tags: arr(str()),
});

export const page = (items: S) => obj({ items: arr(items), total: int(), limit: int(), offset: int() });
export const pageQuery = {
  limit: int({ minimum: 1, maximum: 1000, default: 100 }),
  offset: int({ minimum: 0, default: 0 }),
};

export const FileEntry = obj(
  {
    path: str(),
    type: str(),
    mode: int(),
    uid: int(),
    gid: int(),
    size: int(),
    nlink: int(),
    ino: int(),
    mtime: nullable(str()),
    atime: nullable(str()),
    ctime: nullable(str()),
    crtime: str(),
    target: str(),
    rdev: obj({ major: int(), minor: int() }),
    xattrs: arr(str()),
    digest: str(),
  },
  ['path', 'type', 'mode', 'uid', 'gid', 'size', 'nlink', 'ino', 'mtime', 'xattrs'],
);

export const FileExtents = obj(
  {
    path: str(),
    volume: str(),
    volumeDiskOffset: nullable(int()),
    crtime: nullable(str()),
    allocatedBytes: int(),
    flags: int(),
    extents: arr(
      obj(
        {
          fileOffset: int(),
          length: int(),
          volumeOffset: int(),
          diskOffset: nullable(int()),
          flags: arr(str()),
          diskLength: int(),
        },
        ['fileOffset', 'length', 'volumeOffset', 'diskOffset', 'flags'],
      ),
    ),
  },
  ['path', 'volume', 'volumeDiskOffset', 'crtime', 'extents'],
);

export const Member = obj({
  image: str(),
  project: str(),
  status: str({ enum: ['pending', 'accepted', 'rejected'] }),
  created: str(),
  updated: str(),
});

export const Usage = obj({
  name: str(),
  versions: int(),
  logicalBytes: int(),
  usedBytes: int(),
  storedBytes: int(),
  dedupRatio: num(),
});
