/**
 * The verbs that run from the image bundle (dist/cli/strata-image.cjs): launch.ts picks the
 * bundle by this list without loading any command, and image-main.ts's groups must register
 * exactly these (test/cli/convert.test.ts checks).
 */
export const IMAGE_VERBS: readonly string[] = ['convert', 'info', 'map'];
