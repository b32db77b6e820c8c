/** The deploy layer's public surface: what the CLI and the layers above use. */
export { type DeployEvent, type DeployOptions, Deployer, type DeploySource } from './deployer.js';
export { blockSignatures, differingBlocks } from './diff.js';
export { imageDeploySource, libraryDeploySource, openDeploySource } from './source.js';
export { type DeployHeader, loadState, STATE_SUFFIX } from './state.js';
