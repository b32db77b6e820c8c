/** The library service (HTTP) and its typed client. */

// the service's accounts (users, projects, roles, tokens), for its operator's commands
export {
  Access,
  type Principal,
  parseDuration,
  type Role,
  type Scope,
  type TokenRow,
  type Visibility,
} from '../../catalog/access.js';
export {
  encodeChunkRecords,
  type MemberRow,
  type Page,
  type RemoteCheckinOptions,
  type RemoteCheckinResult,
  type RemoteEditResult,
  RemoteError,
  type RemoteFileEntry,
  type RemoteImage,
  RemoteLibrary,
  RemoteSink,
  type RemoteVersion,
  remoteCheckin,
  remoteCheckout,
  type Usage,
} from './client.js';
export { demoLibrary } from './demo.js';
export { PROBLEM_TYPE, type Problem } from './problem.js';
export { buildServer, type RunningServer, type ServeOptions, startServer } from './server.js';
