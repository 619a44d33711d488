// A reference model of what a device may accept from a split virtqueue (virtio 1.2 §2.7),
// written from the spec with BigInt addresses and sharing no code with SplitQueue: given
// the guest's memory and the head of a chain, either the exact buffers the device must
// see, or why the chain is malformed. Fuzz targets compare the real queue against it.

import { FuzzMemory } from './fuzz-memory.ts';

export const F_NEXT = 1;
export const F_WRITE = 2;
export const F_INDIRECT = 4;

export interface ModelChain {
  /** One entry per region a buffer lies in: a buffer over two touching regions is two entries. */
  readable: [addr: bigint, len: number][];
  writable: [addr: bigint, len: number][];
  /** Buffers that ran over touching regions. */
  spanning: number;
}

export type ModelResult = ModelChain | { invalid: string };

export interface ModelQueue {
  size: number;
  descTable: number;
  indirectNegotiated: boolean;
}

const U64 = 1n << 64n;
/** §2.7.5: the total length of a chain's buffers must not exceed 2^32 bytes. */
const MAX_TOTAL = 2 ** 32;
/** Buffers per chain, direct and indirect together (QEMU VIRTQUEUE_MAX_SIZE, Linux UIO_MAXIOV). */
const MAX_BUFFERS = 1024;

/** May the device access [addr, addr+len) (write = device-writable) in `memory` right now? */
export function deviceMayAccess(memory: FuzzMemory, addr: bigint, len: number, write: boolean): boolean {
  const end = addr + BigInt(len);
  if (end > U64) return false;
  for (const s of memory.specs) {
    const base = BigInt(s.base);
    if (addr >= base && end <= base + BigInt(s.size)) return s.accessible && !(write && s.readOnly);
  }
  return false;
}

/**
 * The pieces of a device buffer: [addr, addr+len) may run over regions that touch in
 * guest-physical space (one piece per region), each accessible and, when written, writable.
 */
export function deviceBufferPieces(memory: FuzzMemory, addr: bigint, len: number, write: boolean): [bigint, number][] | null {
  const end = addr + BigInt(len);
  if (end > U64) return null;
  const pieces: [bigint, number][] = [];
  let at = addr;
  while (at < end) {
    const s = memory.specs.find((r) => at >= BigInt(r.base) && at < BigInt(r.base) + BigInt(r.size));
    if (!s || !s.accessible || (write && s.readOnly)) return null;
    const stop = BigInt(s.base) + BigInt(s.size) < end ? BigInt(s.base) + BigInt(s.size) : end;
    pieces.push([at, Number(stop - at)]);
    at = stop;
  }
  return pieces;
}

/** The chain at `head` as the spec says a device must read it. Reads memory through the guest's raw view. */
export function modelChain(memory: FuzzMemory, q: ModelQueue, head: number): ModelResult {
  if (head >= q.size) return { invalid: 'head out of range' };
  const out: ModelChain = { readable: [], writable: [], spanning: 0 };
  let buffers = 0;
  let table = BigInt(q.descTable);
  let entries = q.size;
  let inIndirect = false;
  let index = head;
  let visited = 0;
  let writableSeen = false;
  let total = 0;
  for (;;) {
    // A chain visits each entry of its table at most once; more means a loop.
    if (++visited > entries) return { invalid: 'loop' };
    const d = readDescriptor(memory, table + 16n * BigInt(index));
    if (d === null) return { invalid: 'indirect table unreadable' };
    if (d.flags & F_INDIRECT) {
      if (inIndirect) return { invalid: 'nested indirect' };
      if (!q.indirectNegotiated) return { invalid: 'indirect not negotiated' };
      if (d.flags & F_NEXT) return { invalid: 'indirect with next' };
      if (d.len === 0 || d.len % 16 !== 0) return { invalid: 'indirect length' };
      if (d.len / 16 > 65536) return { invalid: 'indirect table too large' };
      if (!deviceMayAccess(memory, d.addr, d.len, false)) return { invalid: 'indirect table outside memory' };
      table = d.addr;
      entries = d.len / 16;
      inIndirect = true;
      index = 0;
      visited = 0;
      continue;
    }
    if (++buffers > MAX_BUFFERS) return { invalid: 'too many buffers' };
    const write = (d.flags & F_WRITE) !== 0;
    if (write) writableSeen = true;
    else if (writableSeen) return { invalid: 'readable after writable' };
    if (d.len > 0) {
      const pieces = deviceBufferPieces(memory, d.addr, d.len, write);
      if (pieces === null) return { invalid: 'buffer outside memory' };
      (write ? out.writable : out.readable).push(...pieces);
      if (pieces.length > 1) out.spanning++;
      total += d.len;
      if (total > MAX_TOTAL) return { invalid: 'chain over 4 GiB' };
    }
    if (!(d.flags & F_NEXT)) return out;
    index = d.next;
    if (index >= entries) return { invalid: 'next out of range' };
  }
}

interface RawDesc {
  addr: bigint;
  len: number;
  flags: number;
  next: number;
}

function readDescriptor(memory: FuzzMemory, at: bigint): RawDesc | null {
  // Tables were validated as accessible before use; read them the way the guest wrote them.
  let v: DataView;
  try {
    v = memory.dataView(Number(at), 16);
  } catch {
    return null;
  }
  return { addr: v.getBigUint64(0, true), len: v.getUint32(8, true), flags: v.getUint16(12, true), next: v.getUint16(14, true) };
}

/** Linux vring_need_event, written out again: notify iff event lies in [old, new) mod 2^16. */
export function needEvent(event: number, now: number, old: number): boolean {
  return ((now - event - 1) & 0xffff) < ((now - old) & 0xffff);
}
