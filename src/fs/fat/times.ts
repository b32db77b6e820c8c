import type { Timestamp } from '../types.js';

/**
 * FAT and exFAT timestamps. FAT records local time with no zone: we read the fields as if
 * they were UTC (what `mdir` prints is then what `stat` shows), and info() says so. exFAT
 * records an optional UTC offset per timestamp; when it is marked valid it is honoured
 * (the result is true UTC), otherwise the fields are read as UTC too.
 */
export const FAT_TIME_ZONE_NOTE =
  'FAT times are local time with no zone recorded; read as UTC. Modification times have 2 s resolution, creation 10 ms, access dates 1 day.';
export const EXFAT_TIME_ZONE_NOTE =
  'exFAT times carry a UTC offset when the writer recorded one (honoured); without one they are read as UTC. Modification and creation times have 10 ms resolution, access 2 s.';

/** A FAT date (bits 15-9 year-1980, 8-5 month, 4-0 day) and time (15-11 h, 10-5 min, 4-0 s/2). */
export function fatTime(date: number, time: number, centis = 0): Timestamp | undefined {
  if (date === 0) return undefined;
  const day = date & 31;
  const month = (date >> 5) & 15;
  const year = 1980 + (date >> 9);
  const h = time >> 11;
  const m = (time >> 5) & 63;
  const s = (time & 31) * 2;
  if (day === 0 || month === 0 || month > 12) return undefined;
  const extra = Math.min(centis, 199);
  const sec = Date.UTC(year, month - 1, day, h, m, s) / 1000 + Math.floor(extra / 100);
  return { sec, nsec: (extra % 100) * 10_000_000 };
}

/** An exFAT timestamp (FAT date << 16 | FAT time), its 10 ms increment and its UTC-offset byte. */
export function exfatTime(stamp: number, centis: number, utcOffset: number): Timestamp | undefined {
  const t = fatTime(stamp >>> 16, stamp & 0xffff, centis);
  if (!t) return undefined;
  if (utcOffset & 0x80) {
    const quarter = utcOffset & 0x40 ? (utcOffset & 0x7f) - 0x80 : utcOffset & 0x7f;
    t.sec -= quarter * 15 * 60;
  }
  return t;
}
