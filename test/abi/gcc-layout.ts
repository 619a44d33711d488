// Struct layouts as gcc reported them (the recorded tables, which the ABI tests hold equal to the
// compiler), for laying out test buffers "like the C struct" independently of the koffi types.
import { parseTable, type AbiTable } from './c-probe.ts';

export interface GccLayout {
  size(struct: string): number;
  offset(struct: string, path: string): number;
  /** offsetof(struct, entries) of a flexible array member (recorded as a flexoffset key). */
  flexOffset(struct: string): number;
  /** Reads an unsigned little-endian field of the C struct at its gcc offset and width. */
  read(view: DataView, struct: string, path: string): bigint;
  /** Writes an unsigned little-endian field of the C struct at its gcc offset and width. */
  write(view: DataView, struct: string, path: string, value: number | bigint): void;
}

export function gccLayout(recordedText: string): GccLayout {
  const table: AbiTable = parseTable(recordedText);
  const get = (key: string): number => {
    const v = table.get(key);
    if (v === undefined) throw new Error(`gcc-layout: no recorded ${key}`);
    return v;
  };
  const offset = (s: string, p: string) => get(`offset ${s}.${p}`);
  const width = (s: string, p: string) => get(`fsize ${s}.${p}`);
  return {
    size: (s) => get(`size ${s}`),
    offset,
    flexOffset: (s) => get(`flexoffset ${s}.entries`),
    read(view, s, p) {
      let v = 0n;
      for (let i = width(s, p) - 1; i >= 0; i--) v = (v << 8n) | BigInt(view.getUint8(offset(s, p) + i));
      return v;
    },
    write(view, s, p, value) {
      let v = BigInt(value);
      const n = width(s, p);
      if (v < 0n) v += 1n << BigInt(8 * n);
      for (let i = 0; i < n; i++, v >>= 8n) view.setUint8(offset(s, p) + i, Number(v & 0xffn));
      if (v !== 0n) throw new Error(`gcc-layout: ${value} does not fit ${s}.${p}`);
    },
  };
}
