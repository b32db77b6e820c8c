/** The library service (HTTP) and its typed client. */
export {
  encodeChunkRecords,
  type MemberRow,
  type Page,
  type RemoteCheckinOptions,
  type RemoteCheckinResult,
  RemoteError,
  type RemoteFileEntry,
  type RemoteImage,
  RemoteLibrary,
  RemoteSink,
  type RemoteVersion,
  remoteCheckin,
  type Usage,
} from './client.js';
export { PROBLEM_TYPE, type Problem } from './problem.js';
export { buildServer, type RunningServer, type ServeOptions, startServer } from './server.js';
