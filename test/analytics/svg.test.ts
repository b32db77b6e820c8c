/**
 * `--svg FILE`: each plot parses as XML (python3's xml.etree, not our code) and has as many
 * marks as the data has points, counted from the log the test wrote; the same input draws
 * the same bytes.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { before, describe, test } from 'node:test';
import { strata } from '../helpers/cli.js';
import { run } from '../helpers/tools.js';
import { tempDir } from '../library/images.js';

/** Marks by class and polyline point counts, as python3's XML parser reads the file. */
async function marks(file: string): Promise<{ classes: Record<string, number>; polylines: number[]; root: string }> {
  const py = [
    'import sys, json, xml.etree.ElementTree as ET',
    'root = ET.parse(sys.argv[1]).getroot()',
    'classes = {}',
    'polys = []',
    'for e in root.iter():',
    '    c = e.get("class")',
    '    if c: classes[c] = classes.get(c, 0) + 1',
    '    if e.tag.endswith("polyline"): polys.append(len(e.get("points").split()))',
    'print(json.dumps({"classes": classes, "polylines": polys, "root": root.tag}))',
  ].join('\n');
  return JSON.parse(await run('python3', ['-c', py, file]));
}

let dir: string;
let log: string;
const DAYS = 9;
const IMAGES = 17;

describe('analytics --svg', { timeout: 300_000 }, () => {
  before(() => {
    dir = tempDir('analytics-svg');
    log = path.join(dir, 'log.jsonl');
    const lines: string[] = [];
    // image i (0..16) requested i+1 times, on day i % DAYS; the last three are facility images
    for (let i = 0; i < IMAGES; i++)
      for (let k = 0; k <= i; k++)
        lines.push(
          JSON.stringify({
            at: new Date(Date.UTC(2026, 4, 4 + (i % DAYS), k % 24)).toISOString(),
            user: `u${k % 3}`,
            project: `p${i % 4}`,
            image: `img-${i}`,
            version: 1,
            op: 'versions.download',
            bytes: 1000 * (i + 1),
            owner: i >= IMAGES - 3 ? 'facility' : `p${i % 4}`,
          }),
        );
    writeFileSync(log, `${lines.join('\n')}\n`);
  });

  test('popularity: one point per image, one fitted line per class; deterministic', async () => {
    const f = path.join(dir, 'pop.svg');
    const r = await strata(['analytics', 'popularity', '--log', log, '--svg', f]);
    assert.equal(r.code, 0, r.stderr);
    const m = await marks(f);
    assert.equal(m.root, '{http://www.w3.org/2000/svg}svg');
    assert.equal(m.classes.point, IMAGES);
    assert.equal(m.classes.fit, 2);
    const first = readFileSync(f);
    await strata(['analytics', 'popularity', '--log', log, '--svg', f]);
    assert.ok(readFileSync(f).equals(first));
  });

  test('working set: two series with a point per day with requests', async () => {
    const f = path.join(dir, 'ws.svg');
    const r = await strata(['analytics', 'working-set', '--log', log, '--svg', f]);
    assert.equal(r.code, 0, r.stderr);
    const m = await marks(f);
    assert.deepEqual(m.polylines, [DAYS, DAYS]);
  });

  test('lifespan, orgs, dedup: a bar per bucket and series', async () => {
    const lf = path.join(dir, 'life.svg');
    assert.equal((await strata(['analytics', 'lifespan', '--log', log, '--svg', lf])).code, 0);
    assert.equal((await marks(lf)).classes.bar, 7 * 2);
    const of = path.join(dir, 'orgs.svg');
    assert.equal((await strata(['analytics', 'orgs', '--log', log, '--svg', of])).code, 0);
    assert.equal((await marks(of)).classes.bar, 4);
    const df = path.join(dir, 'dedup.svg');
    assert.equal((await strata(['analytics', 'dedup', '--log', log, '--svg', df])).code, 0);
    assert.equal((await marks(df)).classes.bar, 2);
  });

  test('names with markup are escaped', async () => {
    const f = path.join(dir, 'esc.jsonl');
    writeFileSync(
      f,
      `${JSON.stringify({ at: '2026-01-01T00:00:00Z', user: 'u', project: 'a<b>&"c', image: 'x', op: 'o', bytes: 1 })}\n`,
    );
    const s = path.join(dir, 'esc.svg');
    assert.equal((await strata(['analytics', 'orgs', '--log', f, '--svg', s])).code, 0);
    assert.equal((await marks(s)).classes.bar, 1);
  });
});
