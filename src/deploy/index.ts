/** The deploy layer's public surface: what the CLI and the layers above use. */
export { type DeployEvent, Deployer, type DeployOptions, type DeploySource } from './deployer.js';
export { blockSignatures, differingBlocks } from './diff.js';
export { type DeployHttpOptions, DeployHttpServer, parseByteRange, parseHostPort } from './http.js';
export { imageDeploySource, libraryDeploySource, openDeploySource } from './source.js';
export { type DeployHeader, loadState, STATE_SUFFIX } from './state.js';
