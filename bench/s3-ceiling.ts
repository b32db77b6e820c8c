/**
 * bench:s3-ceiling — what the S3 server delivers for pack-sized objects, nothing else in the
 * way (issue 23: the ceiling of a cold checkout). JSON lines on stdout.
 *
 * Puts --objects (6) objects of --mib (45) MiB of random bytes (what a 256 MiB checkout of
 * incompressible data reads: six packs) through src/store's S3 backend, then reads them all
 * back with N ranged GETs in flight (N in --parallel, default 1,2,4,8,16) of --part sizes
 * (MiB; 0 = whole objects; default 0,16,4), bytes checked against what was put. For each:
 * wall seconds, MB/s, the client's CPU seconds, and the CPU seconds the server's processes
 * spent (Swift's proxy, object, container and account servers and memcached found under
 * STRATA_TEST_SERVICES in /proc: user + system), per MB moved.
 *
 * Runs against STRATA_TEST_SERVICES (source DIR/env of `scripts/test-services.sh start DIR`).
 * `node dist/bench/s3-ceiling.js [--objects K] [--mib M] [--parallel 1,2,4] [--part 0,16,4]`
 */
import { createHash, randomBytes } from 'node:crypto';
import { loadavg } from 'node:os';
import { S3Backend } from '../src/store/s3-backend.js';
import { opt, serviceCpuDelta, serviceCpuS } from './common.js';

const OBJECTS = Number(opt('--objects') ?? 6);
const MIB = Number(opt('--mib') ?? 45);
const PARALLEL = (opt('--parallel') ?? '1,2,4,8,16').split(',').map(Number);
const PARTS = (opt('--part') ?? '0,16,4').split(',').map(Number);
const emit = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);
async function main() {
  const dir = process.env.STRATA_TEST_SERVICES;
  const s3url = process.env.STRATA_TEST_S3;
  if (!dir || !s3url) throw new Error('source the env of scripts/test-services.sh start DIR first');
  const b = await S3Backend.open(`${s3url}/ceiling-${process.pid}`);
  const size = MIB * 1024 * 1024;
  const sums: string[] = [];
  for (let i = 0; i < OBJECTS; i++) {
    const data = randomBytes(size);
    sums.push(createHash('sha256').update(data).digest('hex'));
    await b.put(`packs/obj${i}`, data);
  }
  emit({
    bench: 's3-ceiling',
    objects: OBJECTS,
    mib: MIB,
    endpoint: process.env.AWS_ENDPOINT_URL,
    load1: loadavg()[0],
  });
  try {
    for (const part of PARTS) {
      for (const n of PARALLEL) {
        const p = part ? part * 1024 * 1024 : size;
        const jobs: Array<[number, number]> = [];
        for (let i = 0; i < OBJECTS; i++) for (let o = 0; o < size; o += p) jobs.push([i, o]);
        const bufs = Array.from({ length: OBJECTS }, () => Buffer.allocUnsafe(size));
        const cpu0 = process.cpuUsage();
        const srv0 = serviceCpuS(dir);
        const t0 = process.hrtime.bigint();
        let next = 0;
        await Promise.all(
          Array.from({ length: n }, async () => {
            while (next < jobs.length) {
              const [i, o] = jobs[next++];
              const len = Math.min(p, size - o);
              const got = await b.getRangeInto(`packs/obj${i}`, o, bufs[i].subarray(o, o + len));
              if (got !== len) throw new Error(`short read obj${i}@${o}: ${got} of ${len}`);
            }
          }),
        );
        const s = Number(process.hrtime.bigint() - t0) / 1e9;
        const cpu = process.cpuUsage(cpu0);
        const srv = serviceCpuDelta(srv0, serviceCpuS(dir));
        for (let i = 0; i < OBJECTS; i++)
          if (createHash('sha256').update(bufs[i]).digest('hex') !== sums[i]) throw new Error(`obj${i} differs`);
        const mb = (OBJECTS * size) / 1e6;
        emit({
          partMiB: part || MIB,
          parallel: n,
          requests: jobs.length,
          s: +s.toFixed(3),
          MBps: +(mb / s).toFixed(1),
          clientCpuS: +((cpu.user + cpu.system) / 1e6).toFixed(2),
          serverCpuS: srv.total,
          serverCpuMsPerMB: +((srv.total * 1000) / mb).toFixed(2),
          server: srv.by,
          load1: +loadavg()[0].toFixed(2),
        });
      }
    }
  } finally {
    for (let i = 0; i < OBJECTS; i++) await b.delete(`packs/obj${i}`).catch(() => {});
    await b.close();
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`bench:s3-ceiling: ${(e as Error).stack}\n`);
    process.exit(1);
  },
);
