// Reads a flattened device tree blob back into nodes and properties (versions 16 and 17), the
// way a firmware or resource manager would: every offset, size, token and name is checked
// against the blob, so a malformed or hostile blob ends as an FdtError, never a wrong tree.

import {
  FDT_BEGIN_NODE, FDT_END, FDT_END_NODE, FDT_HEADER_SIZE, FDT_LAST_COMP_VERSION, FDT_MAGIC, FDT_NOP, FDT_PROP,
  FDT_RESERVE_ENTRY_SIZE, FDT_VERSION, FdtError, HEADER, align4,
} from './fdt-format.ts';
import { readCells, readString, readStringList } from './fdt-values.ts';

/** Deepest nesting accepted (real trees are a handful of levels deep). */
const MAX_DEPTH = 64;

export class FdtNode {
  readonly properties = new Map<string, Uint8Array>();
  readonly children: FdtNode[] = [];

  constructor(readonly name: string, readonly path: string) {}

  child(name: string): FdtNode | undefined {
    return this.children.find((c) => c.name === name);
  }

  /** The node at `path` relative to this one ('a/b'), or undefined. */
  find(path: string): FdtNode | undefined {
    let node: FdtNode | undefined = this;
    for (const part of path.split('/').filter((p) => p !== '')) {
      node = node.child(part);
      if (node === undefined) return undefined;
    }
    return node;
  }

  has(name: string): boolean {
    return this.properties.has(name);
  }

  /** Cells of a property (null if absent or not a whole number of cells). */
  cells(name: string): number[] | null {
    const v = this.properties.get(name);
    return v === undefined ? null : readCells(v);
  }

  /** A one-cell property, or null. */
  u32(name: string): number | null {
    const c = this.cells(name);
    return c !== null && c.length === 1 ? c[0]! : null;
  }

  string(name: string): string | null {
    const v = this.properties.get(name);
    return v === undefined ? null : readString(v);
  }

  strings(name: string): string[] | null {
    const v = this.properties.get(name);
    return v === undefined ? null : readStringList(v);
  }
}

export interface FdtTree {
  readonly version: number;
  readonly lastCompVersion: number;
  readonly bootCpuidPhys: number;
  /** Bytes the header claims (the blob may be followed by free space). */
  readonly totalSize: number;
  readonly reservations: readonly { address: bigint; size: bigint }[];
  readonly root: FdtNode;
}

const utf8 = new TextDecoder('utf-8', { fatal: false });

/** The header's totalsize if `blob` starts with an FDT header, else null (no other checks). */
export function fdtTotalSize(blob: Uint8Array): number | null {
  if (blob.length < FDT_HEADER_SIZE) return null;
  const view = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  return view.getUint32(HEADER.magic, false) === FDT_MAGIC ? view.getUint32(HEADER.totalsize, false) : null;
}

export function parseFdt(blob: Uint8Array): FdtTree {
  const fail = (what: string): never => { throw new FdtError('EINVAL', `FDT: ${what}`); };
  if (blob.length < FDT_HEADER_SIZE) fail(`${blob.length} bytes is shorter than the header`);
  const view = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  const u32 = (at: number) => view.getUint32(at, false);
  if (u32(HEADER.magic) !== FDT_MAGIC) fail(`bad magic 0x${u32(HEADER.magic).toString(16)}`);
  const totalSize = u32(HEADER.totalsize);
  const version = u32(HEADER.version);
  const lastCompVersion = u32(HEADER.lastCompVersion);
  if (totalSize < FDT_HEADER_SIZE || totalSize > blob.length) fail(`totalsize ${totalSize} outside the ${blob.length}-byte blob`);
  if (version < FDT_LAST_COMP_VERSION || lastCompVersion > FDT_VERSION) {
    fail(`version ${version} (compatible with ${lastCompVersion}) is not readable as version ${FDT_VERSION}`);
  }
  const structOffset = u32(HEADER.offDtStruct);
  const stringsOffset = u32(HEADER.offDtStrings);
  const rsvOffset = u32(HEADER.offMemRsvmap);
  const stringsSize = u32(HEADER.sizeDtStrings);
  const structSize = version >= 17 ? u32(HEADER.sizeDtStruct) : totalSize - structOffset;
  const inside = (offset: number, size: number) => offset <= totalSize && size <= totalSize - offset;
  if (!inside(structOffset, structSize) || structOffset % 4 !== 0) fail('struct block outside the blob or misaligned');
  if (!inside(stringsOffset, stringsSize)) fail('strings block outside the blob');
  if (rsvOffset % 8 !== 0 || !inside(rsvOffset, FDT_RESERVE_ENTRY_SIZE)) fail('memory reservation block outside the blob or misaligned');

  const reservations: { address: bigint; size: bigint }[] = [];
  for (let at = rsvOffset; ; at += FDT_RESERVE_ENTRY_SIZE) {
    if (!inside(at, FDT_RESERVE_ENTRY_SIZE)) fail('memory reservation block not terminated');
    const address = view.getBigUint64(at, false);
    const size = view.getBigUint64(at + 8, false);
    if (address === 0n && size === 0n) break;
    reservations.push({ address, size });
  }

  const structEnd = structOffset + structSize;
  let at = structOffset;
  const next = (): number => {
    if (at + 4 > structEnd) fail('struct block ends inside a token');
    const token = u32(at);
    at += 4;
    return token;
  };
  const stringAt = (offset: number): string => {
    if (offset >= stringsSize) fail(`property name offset ${offset} outside the strings block`);
    const start = stringsOffset + offset;
    const nul = blob.indexOf(0, start);
    if (nul < 0 || nul >= stringsOffset + stringsSize) fail(`property name at ${offset} not terminated`);
    return utf8.decode(blob.subarray(start, nul));
  };

  let token = next();
  while (token === FDT_NOP) token = next();
  if (token !== FDT_BEGIN_NODE) fail(`struct block starts with token ${token}, not FDT_BEGIN_NODE`);
  const readName = (): string => {
    const nul = blob.indexOf(0, at);
    if (nul < 0 || nul >= structEnd) fail('node name not terminated');
    const name = utf8.decode(blob.subarray(at, nul));
    at += align4(nul - at + 1);
    return name;
  };
  const rootName = readName();
  if (rootName !== '') fail(`root node is named '${rootName}'`);
  const root = new FdtNode('', '/');
  const stack: FdtNode[] = [root];
  while (stack.length > 0) {
    const node = stack[stack.length - 1]!;
    token = next();
    switch (token) {
      case FDT_NOP:
        break;
      case FDT_PROP: {
        const len = next();
        const nameOffset = next();
        if (at + len > structEnd) fail(`property at ${node.path} runs past the struct block`);
        const name = stringAt(nameOffset);
        if (node.properties.has(name)) fail(`duplicate property '${name}' in ${node.path}`);
        if (node.children.length > 0) fail(`property '${name}' after a subnode in ${node.path}`);
        node.properties.set(name, blob.slice(at, at + len));
        at += align4(len);
        break;
      }
      case FDT_BEGIN_NODE: {
        if (stack.length >= MAX_DEPTH) fail(`nodes nested deeper than ${MAX_DEPTH}`);
        const name = readName();
        if (name === '') fail(`unnamed node inside ${node.path}`);
        if (node.child(name)) fail(`duplicate node '${name}' in ${node.path}`);
        const child = new FdtNode(name, node.path === '/' ? `/${name}` : `${node.path}/${name}`);
        node.children.push(child);
        stack.push(child);
        break;
      }
      case FDT_END_NODE:
        stack.pop();
        break;
      default:
        fail(`unexpected token ${token} at struct offset ${at - 4 - structOffset}`);
    }
  }
  token = next();
  while (token === FDT_NOP) token = next();
  if (token !== FDT_END) fail(`token ${token} after the root node, expected FDT_END`);
  return { version, lastCompVersion, bootCpuidPhys: u32(HEADER.bootCpuidPhys), totalSize, reservations, root };
}
