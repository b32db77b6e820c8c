import type { FastifyInstance, FastifyRequest } from 'fastify';
import { type Access, parseDuration, type Role, type Scope } from '../../catalog/access.js';
import { HttpProblem } from './problem.js';
import { arr, bool, nullable, obj, PROJECT, str } from './schemas.js';

/**
 * Accounts over the API: what `strata user add`, `project add` and `token
 * create|list|revoke` do on the library directory, for callers with a token.
 *
 * - users and projects: a server admin (write token) adds them and lists them; a project
 *   admin (write token of that project) gives and takes roles in it;
 * - tokens: anybody with a write token makes tokens for themselves in their token's project,
 *   never wider than the token they use (a read token makes no tokens); a server admin makes
 *   them for anybody; a caller sees and revokes its own tokens, a server admin everybody's.
 *   A token another user holds is answered like one that does not exist (404).
 */
const USER = '^[a-z0-9][a-z0-9._-]{0,63}$';
const ROLE = { type: 'string', enum: ['admin', 'member', 'reader'] };
const SCOPE = { type: 'string', enum: ['read', 'write'] };

const User = obj({
  name: str(),
  admin: bool(),
  projects: arr(obj({ project: str(), role: ROLE })),
});
const Token = obj({
  id: str(),
  user: str(),
  project: nullable(str()),
  scope: SCOPE,
  created: str(),
  expires: nullable(str()),
  revoked: nullable(str()),
});

function needServerAdmin(req: FastifyRequest, what: string): void {
  const p = req.principal;
  if (p.admin && p.scope === 'write') return;
  throw new HttpProblem(p.user === null ? 401 : 403, `${what} needs a server admin's write token`);
}

function needUser(req: FastifyRequest, what: string): void {
  const p = req.principal;
  if (p.user === null) throw new HttpProblem(401, `${what} needs a token`);
  if (p.scope !== 'write') throw new HttpProblem(403, `${what} needs a write token`);
}

export function registerAccountRoutes(app: FastifyInstance, access: Access): void {
  const userView = async (name: string) => {
    const u = (await access.users()).find((x) => x.name === name);
    if (!u) throw new HttpProblem(404, `no user ${name}`);
    return u;
  };

  app.get(
    '/v1/users',
    { config: { op: 'users.list' }, schema: { response: { 200: obj({ items: arr(User) }) } } },
    async (req) => {
      const p = req.principal;
      if (!p.admin) throw new HttpProblem(p.user === null ? 401 : 403, "listing users needs a server admin's token");
      return { items: await access.users() };
    },
  );

  app.post(
    '/v1/users',
    {
      config: { op: 'users.add' },
      schema: {
        body: obj({ name: str({ pattern: USER }), admin: bool() }, ['name']),
        response: { 201: User },
      },
    },
    async (req, reply) => {
      needServerAdmin(req, 'adding a user');
      const b = req.body as { name: string; admin?: boolean };
      if (await access.user(b.name)) throw new HttpProblem(409, `user ${b.name} exists`);
      await access.addUser(b.name, { admin: b.admin ?? false });
      reply.code(201);
      return userView(b.name);
    },
  );

  app.get(
    '/v1/projects',
    { config: { op: 'projects.list' }, schema: { response: { 200: obj({ items: arr(str()) }) } } },
    async (req) => {
      const p = req.principal;
      if (p.admin) return { items: await access.projects() };
      return { items: p.project ? [p.project] : [] };
    },
  );

  app.post(
    '/v1/projects',
    {
      config: { op: 'projects.add' },
      schema: { body: obj({ name: str({ pattern: PROJECT }) }), response: { 201: obj({ name: str() }) } },
    },
    async (req, reply) => {
      needServerAdmin(req, 'adding a project');
      const { name } = req.body as { name: string };
      if (await access.projectExists(name)) throw new HttpProblem(409, `project ${name} exists`);
      await access.addProject(name);
      reply.code(201);
      return { name };
    },
  );

  /** A server admin, or an admin of `project` acting through a write token of it. */
  const manageProject = (req: FastifyRequest, project: string) => {
    const p = req.principal;
    if (p.admin && p.scope === 'write') return;
    if (p.user === null) throw new HttpProblem(401, `managing project ${project} needs a token`);
    if (p.project === project && p.role === 'admin' && p.scope === 'write') return;
    throw new HttpProblem(403, `managing project ${project} needs a write token of one of its admins`);
  };

  const roleParams = obj({ project: str({ pattern: PROJECT }), user: str({ pattern: USER }) });

  app.put(
    '/v1/projects/:project/users/:user',
    {
      config: { op: 'projects.setRole' },
      schema: { params: roleParams, body: obj({ role: ROLE }), response: { 200: User } },
    },
    async (req) => {
      const { project, user } = req.params as { project: string; user: string };
      manageProject(req, project);
      if (!(await access.projectExists(project))) throw new HttpProblem(404, `no project ${project}`);
      if (!(await access.user(user))) throw new HttpProblem(404, `no user ${user}`);
      await access.setRole(project, user, (req.body as { role: Role }).role);
      return userView(user);
    },
  );

  app.delete(
    '/v1/projects/:project/users/:user',
    {
      config: { op: 'projects.removeRole' },
      schema: { params: roleParams, response: { 204: { type: 'null', description: 'removed' } } },
    },
    async (req, reply) => {
      const { project, user } = req.params as { project: string; user: string };
      manageProject(req, project);
      if (!(await access.role(project, user))) throw new HttpProblem(404, `${user} has no role in ${project}`);
      await access.removeRole(project, user);
      reply.code(204);
      return null;
    },
  );

  app.get(
    '/v1/tokens',
    {
      config: { op: 'tokens.list' },
      schema: {
        querystring: obj({ user: str({ pattern: USER }) }, []),
        response: { 200: obj({ items: arr(Token) }) },
      },
    },
    async (req) => {
      const p = req.principal;
      if (p.user === null) throw new HttpProblem(401, 'listing tokens needs a token');
      const q = req.query as { user?: string };
      if (p.admin) return { items: await access.tokens(q.user) };
      if (q.user !== undefined && q.user !== p.user) return { items: [] };
      return { items: await access.tokens(p.user) };
    },
  );

  app.post(
    '/v1/tokens',
    {
      config: { op: 'tokens.create' },
      schema: {
        body: obj(
          {
            user: str({ pattern: USER }),
            project: nullable(str({ pattern: PROJECT })),
            scope: SCOPE,
            expires: str({ pattern: '^\\d{1,6}[smhdw]$' }),
          },
          [],
        ),
        response: {
          201: obj({ ...(Token.properties as object), token: str({ description: 'the secret, shown once' }) } as never),
        },
      },
    },
    async (req, reply) => {
      needUser(req, 'making a token');
      const p = req.principal;
      const b = req.body as { user?: string; project?: string | null; scope?: Scope; expires?: string };
      const user = b.user ?? (p.user as string);
      const project: string | null = b.project === undefined ? p.project : b.project;
      const scope = b.scope ?? 'read';
      if (!p.admin) {
        if (user !== p.user) throw new HttpProblem(403, 'only a server admin makes tokens for somebody else');
        if (project !== p.project) {
          throw new HttpProblem(403, `a token of project ${p.project} makes tokens of that project only`);
        }
      }
      if (!(await access.user(user))) throw new HttpProblem(404, `no user ${user}`);
      if (project !== null && !(await access.role(project, user))) {
        throw new HttpProblem(400, `user ${user} has no role in project ${project}`);
      }
      const r = await access.createToken({
        user,
        project: project ?? undefined, // none: a server admin's own (createToken refuses others)
        scope,
        expiresInMs: b.expires ? parseDuration(b.expires) : undefined,
      });
      reply.code(201);
      return { ...r.row, token: r.token };
    },
  );

  app.delete(
    '/v1/tokens/:id',
    {
      config: { op: 'tokens.revoke' },
      schema: {
        params: obj({ id: str({ pattern: '^[0-9a-f]{16}$' }) }),
        response: { 204: { type: 'null', description: 'revoked' } },
      },
    },
    async (req, reply) => {
      needUser(req, 'revoking a token');
      const p = req.principal;
      const { id } = req.params as { id: string };
      const row = (await access.tokens()).find((t) => t.id === id);
      // somebody else's token is answered like a missing one
      if (!row || row.revoked !== null || (!p.admin && row.user !== p.user)) {
        throw new HttpProblem(404, `no live token ${id}`);
      }
      await access.revokeToken(id);
      reply.code(204);
      return null;
    },
  );
}
