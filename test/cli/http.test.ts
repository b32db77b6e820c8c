import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { strata } from '../helpers/cli.js';
import { startRangeServer } from '../helpers/range-server.js';
import { scratch } from '../helpers/tools.js';

test('info and map of a 1 GiB raw image served over HTTP answer without reading it', async () => {
  const dir = scratch('cli-http');
  const f = path.join(dir, 'big.raw');
  execFileSync('truncate', ['-s', '1G', f]);
  writeFileSync(f, Buffer.from('not a partition table'), { flag: 'r+' });
  const server = await startRangeServer({ 'big.raw': f });
  try {
    const info = await strata(['info', '--json', server.url('big.raw')]);
    assert.equal(info.code, 0, info.stderr);
    const j = JSON.parse(info.stdout) as { format: string; virtualSize: number };
    assert.equal(j.format, 'raw');
    assert.equal(j.virtualSize, 1024 ** 3);
    const map = await strata(['map', '--json', server.url('big.raw')]);
    assert.equal(map.code, 0, map.stderr);
    // one JSON array, or one record per line (the CLI's --json convention is being settled)
    const text = map.stdout.trim();
    const ranges = (text.startsWith('[') ? JSON.parse(text) : text.split('\n').map((l) => JSON.parse(l))) as Array<{
      start: number;
      length: number;
      data: boolean;
    }>;
    assert.deepEqual(
      ranges.map((r) => [r.start, r.length, r.data]),
      [[0, 1024 ** 3, true]],
    );
    assert.ok(server.bytesSent < 64 << 20, `sent ${server.bytesSent} bytes for info and map`);
  } finally {
    await server.close();
  }
});
