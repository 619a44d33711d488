// The guest driver's side of a split virtqueue, for tests (like rust-vmm MockSplitQueue or
// Firecracker's VirtQueue helper): lays out the rings in a GuestMemory, adds direct and
// indirect chains, reads back used elements and what the device wrote, and offers raw
// access to every ring field for building invalid rings. It touches guest memory through
// the regions' own bytes, as the guest would: the GuestMemory observer only ever sees
// device accesses, and regions lent away (inaccessible) stay writable here.

import type { GuestMemory } from '../../framework/guest-memory.ts';
import type { SplitQueueConfig } from '../../framework/virtio/split-queue.ts';
import {
  VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, availRingBytes, descTableBytes, usedRingBytes,
} from '../../framework/virtio/ring-layout.ts';

export type BufferSpec = { data: Uint8Array } | { writableLen: number };

export interface RawDescriptor {
  addr: number | bigint;
  len: number;
  flags: number;
  next: number;
}

export interface UsedElement {
  id: number;
  len: number;
  /** Copy of the first min(len, writable bytes) bytes of the chain's writable buffers, if the id was in flight. */
  written: Uint8Array;
}

export interface DriverQueueOptions {
  size: number;
  /** Where the rings start (default: base of the first region); the areas follow each other. */
  base?: number;
  descTable?: number;
  availRing?: number;
  usedRing?: number;
  /** Buffer and indirect-table area (default: after the rings to the end of their region). */
  dataStart?: number;
  dataEnd?: number;
}

interface InFlight {
  descs: number[];
  writable: { addr: number; len: number }[];
  span: [number, number];
}

const align = (v: number, a: number) => Math.ceil(v / a) * a;

export class DriverQueue {
  readonly size: number;
  readonly descTable: number;
  readonly availRing: number;
  readonly usedRing: number;
  readonly dataStart: number;
  readonly dataEnd: number;

  private free: number[] = [];
  private readonly inFlight = new Map<number, InFlight>();
  private nextAvailIdx = 0;
  private lastUsed = 0;
  private dataCursor: number;

  constructor(readonly mem: GuestMemory, opts: DriverQueueOptions) {
    const { size } = opts;
    const base = opts.base ?? mem.regions[0]!.base;
    this.size = size;
    this.descTable = opts.descTable ?? align(base, 16);
    this.availRing = opts.availRing ?? this.descTable + descTableBytes(size);
    this.usedRing = opts.usedRing ?? align(this.availRing + availRingBytes(size, true), 4);
    this.dataStart = align(opts.dataStart ?? this.usedRing + usedRingBytes(size, true), 16);
    const region = mem.regions.find((r) => this.dataStart >= r.base && this.dataStart < r.base + r.size);
    this.dataEnd = opts.dataEnd ?? (region ? region.base + region.size : this.dataStart);
    this.dataCursor = this.dataStart;
    this.reset();
  }

  /** Configuration for the device-side SplitQueue over these rings. */
  config(features: { eventIdx?: boolean; indirect?: boolean } = {}): SplitQueueConfig {
    return {
      size: this.size, descTable: this.descTable, availRing: this.availRing, usedRing: this.usedRing,
      eventIdx: features.eventIdx ?? false, indirect: features.indirect ?? false,
    };
  }

  /** Zero the rings, free every descriptor, and restart all indices at 0. */
  reset(): void {
    this.raw(this.descTable, descTableBytes(this.size)).fill(0);
    this.raw(this.availRing, availRingBytes(this.size, true)).fill(0);
    this.raw(this.usedRing, usedRingBytes(this.size, true)).fill(0);
    this.free = Array.from({ length: this.size }, (_, i) => this.size - 1 - i);
    this.inFlight.clear();
    this.nextAvailIdx = this.lastUsed = 0;
    this.dataCursor = this.dataStart;
  }

  /** Start avail.idx and used.idx at `idx` (wraparound tests); set the device's nextAvail/nextUsed to match. */
  setStartIndex(idx: number): void {
    if (this.inFlight.size !== 0) throw new Error('DriverQueue.setStartIndex: chains in flight');
    this.nextAvailIdx = this.lastUsed = idx & 0xffff;
    this.setAvailIdx(idx);
    this.view(this.usedRing + 2, 2).setUint16(0, idx, true);
  }

  /** Free descriptors left in the table. */
  get freeDescriptors(): number {
    return this.free.length;
  }

  get chainsInFlight(): number {
    return this.inFlight.size;
  }

  /**
   * Add a chain of buffers in the given order (readable {data} and writable {writableLen};
   * put readable first for a valid chain) and make it available unless `publish` is false
   * (then call `offer(head)`). Indirect chains use one table descriptor. Returns the head.
   */
  addChain(buffers: BufferSpec[], opts: { indirect?: boolean; publish?: boolean } = {}): number {
    const n = buffers.length;
    if (n === 0) throw new Error('DriverQueue.addChain: empty chain');
    const indirect = opts.indirect ?? false;
    const need = indirect ? 1 : n;
    if (this.free.length < need) throw new Error(`DriverQueue.addChain: ${need} descriptors wanted, ${this.free.length} free`);
    const lens = buffers.map((b) => ('data' in b ? b.data.length : b.writableLen));
    const total = lens.reduce((s, l) => s + align(l, 16), indirect ? 16 * n : 0);
    const start = this.allocSpan(total);
    let p = start;
    let tableAddr = 0;
    if (indirect) {
      tableAddr = p;
      p += 16 * n;
    }
    const descs: RawDescriptor[] = [];
    const writable: { addr: number; len: number }[] = [];
    buffers.forEach((b, i) => {
      const len = lens[i]!;
      if ('data' in b) {
        this.raw(p, len).set(b.data);
        descs.push({ addr: p, len, flags: 0, next: 0 });
      } else {
        this.raw(p, len).fill(0);
        descs.push({ addr: p, len, flags: VIRTQ_DESC_F_WRITE, next: 0 });
        writable.push({ addr: p, len });
      }
      p += align(len, 16);
    });
    const indices = this.free.splice(this.free.length - need, need).reverse();
    if (indirect) {
      descs.forEach((d, i) => {
        if (i + 1 < n) { d.flags |= VIRTQ_DESC_F_NEXT; d.next = i + 1; }
        this.writeDescriptorAt(tableAddr, i, d);
      });
      this.writeDescriptor(indices[0]!, { addr: tableAddr, len: 16 * n, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
    } else {
      descs.forEach((d, i) => {
        if (i + 1 < n) { d.flags |= VIRTQ_DESC_F_NEXT; d.next = indices[i + 1]!; }
        this.writeDescriptor(indices[i]!, d);
      });
    }
    const head = indices[0]!;
    this.inFlight.set(head, { descs: indices, writable, span: [start, start + total] });
    if (opts.publish ?? true) this.offer(head);
    return head;
  }

  /** Put `head` in the next available-ring slot and publish avail.idx. */
  offer(head: number): void {
    this.setAvailEntry(this.nextAvailIdx, head);
    this.nextAvailIdx = (this.nextAvailIdx + 1) & 0xffff;
    this.setAvailIdx(this.nextAvailIdx);
  }

  /** Used elements the device published since the last call; frees their descriptors. */
  takeUsed(): UsedElement[] {
    const out: UsedElement[] = [];
    const idx = this.usedIdx();
    while (this.lastUsed !== idx) {
      const at = this.usedRing + 4 + 8 * (this.lastUsed % this.size);
      const v = this.view(at, 8);
      const id = v.getUint32(0, true), len = v.getUint32(4, true);
      const chain = this.inFlight.get(id);
      let written: Uint8Array = new Uint8Array(0);
      if (chain) {
        written = this.concat(chain.writable, len);
        this.inFlight.delete(id);
        this.free.push(...chain.descs);
      }
      out.push({ id, len, written });
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    return out;
  }

  /** Current contents of an in-flight chain's writable buffers, concatenated. */
  readWritable(head: number): Uint8Array {
    const chain = this.inFlight.get(head);
    if (!chain) throw new Error(`DriverQueue.readWritable: ${head} not in flight`);
    return this.concat(chain.writable, Infinity);
  }

  /**
   * Reserve `len` bytes (16-aligned) in the data area for hand-built buffers and tables.
   * Not tracked: it may be reused by later chains once the area wraps.
   */
  alloc(len: number): number {
    return this.allocSpan(align(Math.max(len, 1), 16));
  }

  // ---- raw ring access (invalid-ring tests) ----

  writeDescriptor(index: number, d: RawDescriptor): void {
    this.writeDescriptorAt(this.descTable, index, d);
  }

  /** Write entry `index` of the descriptor table at `table` (the queue's or an indirect one). */
  writeDescriptorAt(table: number, index: number, d: RawDescriptor): void {
    const v = this.view(table + 16 * index, 16);
    v.setBigUint64(0, BigInt.asUintN(64, BigInt(d.addr)), true);
    v.setUint32(8, d.len >>> 0, true);
    v.setUint16(12, d.flags, true);
    v.setUint16(14, d.next, true);
  }

  readDescriptor(index: number): RawDescriptor {
    const v = this.view(this.descTable + 16 * index, 16);
    return { addr: v.getBigUint64(0, true), len: v.getUint32(8, true), flags: v.getUint16(12, true), next: v.getUint16(14, true) };
  }

  /** avail.ring[idx % size] = head (idx is a free-running index). */
  setAvailEntry(idx: number, head: number): void {
    this.view(this.availRing + 4 + 2 * (idx % this.size), 2).setUint16(0, head, true);
  }

  /** Publish avail.idx directly (does not move the helper's own cursor; see offer). */
  setAvailIdx(idx: number): void {
    this.view(this.availRing + 2, 2).setUint16(0, idx & 0xffff, true);
  }

  availIdx(): number {
    return this.view(this.availRing + 2, 2).getUint16(0, true);
  }

  setAvailFlags(flags: number): void {
    this.view(this.availRing, 2).setUint16(0, flags, true);
  }

  /** used_event (only meaningful with EVENT_IDX). */
  setUsedEvent(idx: number): void {
    this.view(this.availRing + 4 + 2 * this.size, 2).setUint16(0, idx & 0xffff, true);
  }

  /** avail_event as the device last wrote it (EVENT_IDX). */
  readAvailEvent(): number {
    return this.view(this.usedRing + 4 + 8 * this.size, 2).getUint16(0, true);
  }

  usedFlags(): number {
    return this.view(this.usedRing, 2).getUint16(0, true);
  }

  usedIdx(): number {
    return this.view(this.usedRing + 2, 2).getUint16(0, true);
  }

  /** The guest's own view of its memory (not observed, not subject to accessibility). */
  raw(addr: number, len: number): Uint8Array {
    for (const r of this.mem.regions) {
      if (addr >= r.base && addr + len <= r.base + r.size) return r.bytes.subarray(addr - r.base, addr - r.base + len);
    }
    throw new RangeError(`DriverQueue: ${addr}+${len} is not inside one region`);
  }

  private view(addr: number, len: number): DataView {
    const b = this.raw(addr, len);
    return new DataView(b.buffer, b.byteOffset, len);
  }

  private concat(bufs: { addr: number; len: number }[], limit: number): Uint8Array {
    const total = Math.min(limit, bufs.reduce((s, b) => s + b.len, 0));
    const out = new Uint8Array(total);
    let p = 0;
    for (const b of bufs) {
      if (p >= total) break;
      const take = Math.min(b.len, total - p);
      out.set(this.raw(b.addr, take), p);
      p += take;
    }
    return out;
  }

  /** Ring allocation in the data area; refuses to overwrite a chain still in flight. */
  private allocSpan(len: number): number {
    if (len > this.dataEnd - this.dataStart) throw new Error(`DriverQueue: ${len} bytes do not fit the data area`);
    let start = this.dataCursor;
    if (start + len > this.dataEnd) start = this.dataStart;
    for (const c of this.inFlight.values()) {
      if (start < c.span[1] && c.span[0] < start + len) throw new Error('DriverQueue: data area full of in-flight chains');
    }
    this.dataCursor = start + len;
    return start;
  }
}
