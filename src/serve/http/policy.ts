import type { Access, ImageAccess, Principal, Visibility } from '../../catalog/access.js';
import type { SqlValue } from '../../catalog/db.js';
import type { Library } from '../../library/library.js';
import { HttpProblem } from './problem.js';

/**
 * Who may do what to an image. Reading: a server admin; anyone when the image is public;
 * the owning project's members (any role); a project the image is shared with, once it
 * accepted. Writing (versions, tags, description): the owning project's admins and
 * members through a write-scoped token. Managing (visibility, members, deleting the
 * image): the owning project's admins. An image a caller may not read does not exist for
 * that caller: every route answers 404 with the same words as for a missing one.
 */
export interface ImageGuard {
  image: string;
  project: string;
  visibility: Visibility;
}

export class Policy {
  private accepted?: Set<string>;
  private owners?: Map<string, ImageAccess>;
  private readonly one = new Map<string, ImageAccess | undefined>();

  constructor(
    readonly p: Principal,
    private readonly access: Access,
    /** Owner of images checked in locally and never given one. */
    private readonly defaults: { project: string; visibility: Visibility },
  ) {}

  /**
   * Who owns `image`, and its visibility. One row is read for one image (a request about
   * one image used to read the whole table, which grows with the library); a route that
   * goes over many images calls `loadAll()` first and reads it once.
   */
  async ownerOf(image: string): Promise<ImageGuard> {
    let a: ImageAccess | undefined;
    if (this.owners) a = this.owners.get(image);
    else if (this.one.has(image)) a = this.one.get(image);
    else {
      a = await this.access.imageAccess(image);
      this.one.set(image, a);
    }
    return a ?? { image, ...this.defaults };
  }

  /** Access.readableWhere for this caller: the catalog filters lists and searches by it. */
  readableSql(col: string): { sql: string; params: SqlValue[]; join?: string } {
    if (this.p.admin) return this.access.readableWhere(this.p, this.defaults, col);
    // each row's owner joined once (a subquery per use read it up to three times a row)
    return {
      join: `LEFT JOIN image_access ra ON ra.image = ${col}`,
      ...this.access.readableWhere(this.p, this.defaults, col, 'ra'),
    };
  }

  /** A page of the images this caller may read (Access.readableImages), one catalog query and a count. */
  readableImages(q: { prefix?: string; project?: string; visibility?: string; limit: number; offset: number }) {
    return this.access.readableImages(this.p, this.defaults, q);
  }

  /** Read every image's owner and visibility at once (for routes over many images). */
  async loadAll(): Promise<this> {
    this.owners ??= await this.access.allImageAccess();
    return this;
  }

  private async acceptedSet(): Promise<Set<string>> {
    if (!this.accepted) {
      this.accepted = this.p.project ? await this.access.acceptedImages(this.p.project) : new Set();
    }
    return this.accepted;
  }

  async canRead(image: string): Promise<boolean> {
    const g = await this.ownerOf(image);
    if (this.p.admin || g.visibility === 'public') return true;
    if (this.p.project !== null && this.p.project === g.project && this.p.role !== null) return true;
    if (g.visibility !== 'shared' || this.p.project === null) return false;
    // one row for one image; the project's whole accepted list once a route goes over many
    if (this.owners || this.accepted) return (await this.acceptedSet()).has(image);
    return this.access.isAccepted(image, this.p.project);
  }

  /** May write into `project` (create images there, upload chunks). */
  canWriteProject(project: string | null): boolean {
    if (this.p.scope !== 'write') return false;
    if (this.p.admin) return true;
    return project !== null && this.p.project === project && (this.p.role === 'admin' || this.p.role === 'member');
  }

  async canWrite(image: string): Promise<boolean> {
    return this.canWriteProject((await this.ownerOf(image)).project);
  }

  async canManage(image: string): Promise<boolean> {
    if (this.p.scope !== 'write') return false;
    if (this.p.admin) return true;
    const g = await this.ownerOf(image);
    return this.p.project === g.project && this.p.role === 'admin';
  }

  /** The image, when it exists and the caller may read it; else the one 404 everybody gets. */
  async readable(lib: Library, image: string): Promise<ImageGuard> {
    if (!(await lib.catalog.imageExists(image)) || !(await this.canRead(image))) throw notFound(image);
    return this.ownerOf(image);
  }

  async writable(lib: Library, image: string): Promise<ImageGuard> {
    const g = await this.readable(lib, image);
    if (!(await this.canWrite(image))) throw forbidden(this.p, 'write to', image);
    return g;
  }

  async manageable(lib: Library, image: string): Promise<ImageGuard> {
    const g = await this.readable(lib, image);
    if (!(await this.canManage(image))) throw forbidden(this.p, 'manage', image);
    return g;
  }
}

export const notFound = (image: string) => new HttpProblem(404, `no such image: ${image}`);
export const noVersion = (ref: string) => new HttpProblem(404, `no such version: ${ref}`);

function forbidden(p: Principal, what: string, image: string): HttpProblem {
  if (p.user === null) return new HttpProblem(401, `sign in (a bearer token) to ${what} ${image}`);
  return new HttpProblem(
    403,
    `${p.user}${p.project ? ` (project ${p.project}, ${p.role}, ${p.scope} token)` : ''} may not ${what} ${image}`,
  );
}
