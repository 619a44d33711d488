// Property values as the device tree encodes them: big-endian 32-bit cells, 64-bit values as
// two cells, NUL-terminated strings and string lists. Encoders refuse what a cell cannot hold.

import { FdtError } from './fdt-format.ts';

const TWO_32 = 2 ** 32;

function checkCell(value: number, what: string): void {
  if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
    throw new FdtError('EINVAL', `${what}: ${value} is not a 32-bit cell`);
  }
}

/** One cell per value (`<a b c>`). */
export function fdtU32(...values: number[]): Uint8Array {
  const out = new Uint8Array(values.length * 4);
  const view = new DataView(out.buffer);
  values.forEach((v, i) => {
    checkCell(v, 'u32 cell');
    view.setUint32(i * 4, v, false);
  });
  return out;
}

/** Two cells per value, high cell first (`/bits/ 64 <a>`, or `<0 a>` with #*-cells = 2). */
export function fdtU64(...values: (number | bigint)[]): Uint8Array {
  const out = new Uint8Array(values.length * 8);
  const view = new DataView(out.buffer);
  values.forEach((v, i) => {
    if (typeof v === 'bigint') {
      if (v < 0n || v >= 1n << 64n) throw new FdtError('EINVAL', `u64 value ${v} does not fit in 64 bits`);
      view.setBigUint64(i * 8, v, false);
    } else {
      if (!Number.isSafeInteger(v) || v < 0) throw new FdtError('EINVAL', `u64 value ${v} is not a safe non-negative integer`);
      view.setUint32(i * 8, Math.floor(v / TWO_32), false);
      view.setUint32(i * 8 + 4, v % TWO_32, false);
    }
  });
  return out;
}

const utf8 = new TextEncoder();

/** A NUL-terminated string; embedded NULs are refused (they would split it into a list). */
export function fdtString(s: string): Uint8Array {
  return fdtStringList([s]);
}

/** Several NUL-terminated strings back to back (`"a", "b"`). */
export function fdtStringList(list: readonly string[]): Uint8Array {
  const parts = list.map((s) => {
    if (s.includes('\0')) throw new FdtError('EINVAL', `string ${JSON.stringify(s)} contains a NUL`);
    return utf8.encode(s);
  });
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length + 1, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length + 1;
  }
  return out;
}

/** Big-endian cells of a property as numbers; null unless the length is a multiple of 4. */
export function readCells(value: Uint8Array): number[] | null {
  if (value.length % 4 !== 0) return null;
  const view = new DataView(value.buffer, value.byteOffset, value.byteLength);
  const cells: number[] = [];
  for (let i = 0; i < value.length; i += 4) cells.push(view.getUint32(i, false));
  return cells;
}

/** A value of `cellCount` cells (1 or 2) starting at cell `index`, as a bigint. */
export function readNumber(cells: readonly number[], index: number, cellCount: number): bigint {
  let v = 0n;
  for (let i = 0; i < cellCount; i++) v = (v << 32n) | BigInt(cells[index + i] ?? 0);
  return v;
}

const utf8Decoder = new TextDecoder('utf-8', { fatal: false });

/** The strings of a string-list property; null unless it is one or more NUL-terminated strings. */
export function readStringList(value: Uint8Array): string[] | null {
  if (value.length === 0 || value[value.length - 1] !== 0) return null;
  const out: string[] = [];
  let start = 0;
  for (let i = 0; i < value.length; i++) {
    if (value[i] === 0) {
      out.push(utf8Decoder.decode(value.subarray(start, i)));
      start = i + 1;
    }
  }
  return out;
}

/** A single-string property; null unless it is exactly one NUL-terminated string. */
export function readString(value: Uint8Array): string | null {
  const list = readStringList(value);
  return list !== null && list.length === 1 ? list[0]! : null;
}
