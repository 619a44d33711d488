// Writes a flattened device tree blob (FDT version 17): header, memory reservation block,
// struct block and a deduplicated strings block, built sequentially like libfdt's fdt_sw:
// beginNode / property... / endNode. It enforces what the specification requires of a tree, so
// a blob it produces is one dtc accepts: valid names, properties before subnodes, no duplicate
// property or sibling name, a single root, balanced nodes.

import {
  FDT_BEGIN_NODE, FDT_END, FDT_END_NODE, FDT_HEADER_SIZE, FDT_LAST_COMP_VERSION, FDT_MAGIC, FDT_PROP,
  FDT_RESERVE_ENTRY_SIZE, FDT_VERSION, FdtError, HEADER, align4, nodeNameProblem, propertyNameProblem,
} from './fdt-format.ts';
import { fdtString, fdtStringList, fdtU32, fdtU64 } from './fdt-values.ts';

export interface FdtReservation {
  readonly address: number | bigint;
  readonly size: number | bigint;
}

export interface FdtWriterOptions {
  /** /memreserve/ entries (memory the OS must not use). */
  readonly reservations?: readonly FdtReservation[];
  /** Header boot_cpuid_phys. Default 0. */
  readonly bootCpuidPhys?: number;
}

interface OpenNode {
  readonly path: string;
  readonly properties: Set<string>;
  readonly children: Set<string>;
}

const utf8 = new TextEncoder();
const EMPTY = new Uint8Array(0);

export class FdtWriter {
  private struct = new Uint8Array(4096);
  private structLength = 0;
  private readonly strings: number[] = [];
  private readonly stringOffsets = new Map<string, number>();
  private readonly stack: OpenNode[] = [];
  private rootDone = false;
  private finished = false;

  constructor(private readonly options: FdtWriterOptions = {}) {}

  /** Opens a node; the first node must be the root (''), every later one a child of an open node. */
  beginNode(name: string): void {
    this.checkWritable();
    const parent = this.stack[this.stack.length - 1];
    if (parent === undefined) {
      if (this.rootDone) throw new FdtError('EINVAL', `FDT: node '${name}' after the root node was closed`);
      if (name !== '') throw new FdtError('EINVAL', `FDT: the first node must be the root (''), not '${name}'`);
    } else {
      const problem = nodeNameProblem(name);
      if (problem) throw new FdtError('EINVAL', `FDT ${childPath(parent.path, name)}: ${problem}`);
      if (parent.children.has(name)) throw new FdtError('EINVAL', `FDT ${childPath(parent.path, name)}: duplicate node`);
      parent.children.add(name);
    }
    const nameBytes = utf8.encode(name);
    this.reserve(4 + align4(nameBytes.length + 1));
    this.token(FDT_BEGIN_NODE);
    this.struct.set(nameBytes, this.structLength);
    this.structLength += align4(nameBytes.length + 1); // the buffer is zero-filled: NUL and padding
    this.stack.push({ path: parent === undefined ? '/' : childPath(parent.path, name), properties: new Set(), children: new Set() });
  }

  endNode(): void {
    this.checkWritable();
    if (this.stack.length === 0) throw new FdtError('EINVAL', 'FDT: endNode without an open node');
    this.stack.pop();
    this.reserve(4);
    this.token(FDT_END_NODE);
    if (this.stack.length === 0) this.rootDone = true;
  }

  /** A property of the innermost open node; must come before that node's first subnode. */
  property(name: string, value: Uint8Array = EMPTY): void {
    this.checkWritable();
    const node = this.stack[this.stack.length - 1];
    if (node === undefined) throw new FdtError('EINVAL', `FDT: property '${name}' outside any node`);
    const problem = propertyNameProblem(name);
    if (problem) throw new FdtError('EINVAL', `FDT ${node.path}: ${problem}`);
    if (node.children.size > 0) throw new FdtError('EINVAL', `FDT ${node.path}: property '${name}' after a subnode`);
    if (node.properties.has(name)) throw new FdtError('EINVAL', `FDT ${node.path}: duplicate property '${name}'`);
    node.properties.add(name);
    const nameOffset = this.stringOffset(name);
    this.reserve(12 + align4(value.length));
    this.token(FDT_PROP);
    this.token(value.length);
    this.token(nameOffset);
    this.struct.set(value, this.structLength);
    this.structLength += align4(value.length);
  }

  /** A property with no value (a flag such as `interrupt-controller;`). */
  propertyEmpty(name: string): void {
    this.property(name, EMPTY);
  }

  propertyU32(name: string, ...cells: number[]): void {
    this.property(name, fdtU32(...cells));
  }

  propertyU64(name: string, ...values: (number | bigint)[]): void {
    this.property(name, fdtU64(...values));
  }

  propertyString(name: string, value: string): void {
    this.property(name, fdtString(value));
  }

  propertyStrings(name: string, values: readonly string[]): void {
    this.property(name, fdtStringList(values));
  }

  /** The blob. Every node must be closed; the writer cannot be used afterwards. */
  finish(): Uint8Array {
    this.checkWritable();
    if (!this.rootDone) throw new FdtError('EINVAL', this.stack.length > 0 ? `FDT: node ${this.stack[this.stack.length - 1]!.path} not closed` : 'FDT: no root node');
    this.reserve(4);
    this.token(FDT_END);
    this.finished = true;

    const reservations = this.options.reservations ?? [];
    const rsvOffset = FDT_HEADER_SIZE; // 40: already 8-byte aligned
    const rsvSize = (reservations.length + 1) * FDT_RESERVE_ENTRY_SIZE;
    const structOffset = rsvOffset + rsvSize;
    const stringsOffset = structOffset + this.structLength;
    const total = stringsOffset + this.strings.length;
    const blob = new Uint8Array(total);
    const view = new DataView(blob.buffer);
    view.setUint32(HEADER.magic, FDT_MAGIC, false);
    view.setUint32(HEADER.totalsize, total, false);
    view.setUint32(HEADER.offDtStruct, structOffset, false);
    view.setUint32(HEADER.offDtStrings, stringsOffset, false);
    view.setUint32(HEADER.offMemRsvmap, rsvOffset, false);
    view.setUint32(HEADER.version, FDT_VERSION, false);
    view.setUint32(HEADER.lastCompVersion, FDT_LAST_COMP_VERSION, false);
    view.setUint32(HEADER.bootCpuidPhys, this.options.bootCpuidPhys ?? 0, false);
    view.setUint32(HEADER.sizeDtStrings, this.strings.length, false);
    view.setUint32(HEADER.sizeDtStruct, this.structLength, false);
    reservations.forEach((r, i) => blob.set(fdtU64(r.address, r.size), rsvOffset + i * FDT_RESERVE_ENTRY_SIZE));
    blob.set(this.struct.subarray(0, this.structLength), structOffset);
    blob.set(this.strings, stringsOffset);
    return blob;
  }

  private checkWritable(): void {
    if (this.finished) throw new FdtError('EINVAL', 'FDT: writer already finished');
  }

  private stringOffset(name: string): number {
    let offset = this.stringOffsets.get(name);
    if (offset === undefined) {
      offset = this.strings.length;
      for (const b of utf8.encode(name)) this.strings.push(b);
      this.strings.push(0);
      this.stringOffsets.set(name, offset);
    }
    return offset;
  }

  private token(value: number): void {
    new DataView(this.struct.buffer).setUint32(this.structLength, value, false);
    this.structLength += 4;
  }

  private reserve(bytes: number): void {
    if (this.structLength + bytes <= this.struct.length) return;
    const grown = new Uint8Array(Math.max(this.struct.length * 2, this.structLength + bytes));
    grown.set(this.struct.subarray(0, this.structLength));
    this.struct = grown;
  }
}

function childPath(parent: string, name: string): string {
  return parent === '/' ? `/${name}` : `${parent}/${name}`;
}
