// Device side of one split virtqueue (virtio 1.2 §2.7): pops available descriptor chains
// (validating everything a hostile guest controls), pushes used elements, and implements
// both notification-suppression schemes (flags, and EVENT_IDX exactly as Linux
// vring_need_event). The three ring areas are resolved to typed-array views once; the
// hot path reads descriptor fields from them with no BigInt and no per-descriptor closures.
//
// Ordering: avail.idx is read with Atomics.load before the entries it covers; used.idx is
// published with Atomics.store after the element it covers (a vCPU reads concurrently and
// arm64 is weakly ordered). Typed arrays are little-endian: virtio's byte order on every
// host this runs on (checked at load).
//
// A buffer over regions that touch in guest-physical space (one large region mapped in
// pieces) becomes one view per region, as QEMU and rust-vmm split it into iovecs; the ring
// areas and indirect tables must each lie inside one region. A chain holds at most
// MAX_CHAIN_DESCRIPTORS buffers.
//
// A malformed chain is consumed (nextAvail moves past it) before VirtqueueError is thrown;
// the error's `head` says which chain, so a device may return it with length 0 or mark the
// device DEVICE_NEEDS_RESET. An avail index that jumps by more than the queue size is not
// consumed: the ring itself is broken.

import { GuestMemoryError, type GuestMemory } from '../guest-memory.ts';
import { DescriptorChain, VirtqueueError, type VirtqueueFault } from './descriptor-chain.ts';
import {
  AVAIL_ALIGN, DESC_ALIGN, USED_ALIGN, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE, VIRTQ_USED_F_NO_NOTIFY, availRingBytes, descTableBytes, isValidQueueSize, usedRingBytes,
  vringNeedEvent,
} from './ring-layout.ts';

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error('split-queue: big-endian hosts are not supported');
}

export interface SplitQueueConfig {
  /** Queue size: a power of two in 1..32768. */
  size: number;
  /** Guest-physical addresses of the three areas (alignment 16, 2, 4). */
  descTable: number;
  availRing: number;
  usedRing: number;
  /** VIRTIO_F_EVENT_IDX negotiated: used_event / avail_event fields exist and are used. */
  eventIdx: boolean;
  /** VIRTIO_F_INDIRECT_DESC negotiated. */
  indirect: boolean;
}

/** Indirect table cap: `next` is a u16, so more entries cannot be chained (1 MiB table). */
export const MAX_INDIRECT_ENTRIES = 65536;
/**
 * Buffers (non-indirect descriptors, direct and indirect together) one chain may hold: QEMU's
 * VIRTQUEUE_MAX_SIZE, Linux's UIO_MAXIOV. Bounds the views one chain costs: without it, one
 * kick of chains sharing a 64K-entry indirect table would build millions of views.
 */
export const MAX_CHAIN_DESCRIPTORS = 1024;
/** Largest total byte count of one chain (§2.7.5: drivers MUST NOT exceed 2^32). */
const MAX_CHAIN_BYTES = 0x1_0000_0000;
const TWO_POW_32 = 0x1_0000_0000;
/** A descriptor address high word at or above this puts the address at or past 2^53. */
const HI_LIMIT = 0x20_0000;
const EMPTY: readonly Uint8Array[] = Object.freeze([]);

export class SplitQueue {
  readonly size: number;
  readonly eventIdx: boolean;
  readonly indirect: boolean;
  readonly descTable: number;
  readonly availRing: number;
  readonly usedRing: number;

  private readonly mask: number;
  /** Descriptor table as u32 words: [addr lo, addr hi, len, flags | next << 16] per entry. */
  private readonly desc: Uint32Array;
  /** Available ring as u16: [flags, idx, ring[size], used_event]. */
  private readonly avail: Uint16Array;
  /** Used ring as u16 (flags, idx, avail_event) and as u32 (elements from word 1). */
  private readonly used16: Uint16Array;
  private readonly used32: Uint32Array;
  private readonly usedEventAt: number;
  private readonly availEventAt: number;

  private availNext = 0;
  private usedNext = 0;
  private usedPublished = 0;
  /** used.idx at the previous needsNotification (vhost's signalled_used). */
  private signalled = 0;
  private signalledValid = true;
  private usedFlags: number;
  private memGeneration: number;

  constructor(private readonly mem: GuestMemory, cfg: SplitQueueConfig) {
    const { size, descTable, availRing, usedRing, eventIdx, indirect } = cfg;
    if (!isValidQueueSize(size)) throw new VirtqueueError('invalid queue size', `${size}`);
    if (descTable % DESC_ALIGN !== 0 || availRing % AVAIL_ALIGN !== 0 || usedRing % USED_ALIGN !== 0) {
      throw new VirtqueueError('misaligned ring', `desc ${descTable} avail ${availRing} used ${usedRing}`);
    }
    this.size = size;
    this.mask = size - 1;
    this.eventIdx = eventIdx;
    this.indirect = indirect;
    this.descTable = descTable;
    this.availRing = availRing;
    this.usedRing = usedRing;
    this.memGeneration = mem.generation;

    const d = ringArea(mem, 'descriptor table', descTable, descTableBytes(size), false);
    const a = ringArea(mem, 'available ring', availRing, availRingBytes(size, eventIdx), false);
    const u = ringArea(mem, 'used ring', usedRing, usedRingBytes(size, eventIdx), true);
    this.desc = new Uint32Array(d.buffer, d.byteOffset, d.length >>> 2);
    this.avail = new Uint16Array(a.buffer, a.byteOffset, a.length >>> 1);
    this.used16 = new Uint16Array(u.buffer, u.byteOffset, u.length >>> 1);
    this.used32 = new Uint32Array(u.buffer, u.byteOffset, 1 + 2 * size);
    this.usedEventAt = 2 + size;
    this.availEventAt = 2 + 4 * size;
    this.usedFlags = this.used16[0]! & VIRTQ_USED_F_NO_NOTIFY; // a previous session may have left it set
  }

  /** Free-running u16 index of the next available entry to consume (vhost-user VRING_BASE). */
  get nextAvail(): number {
    return this.availNext;
  }

  set nextAvail(v: number) {
    this.availNext = u16(v, 'nextAvail');
  }

  /** Free-running u16 index of the next used entry to write. Setting it also treats it as published. */
  get nextUsed(): number {
    return this.usedNext;
  }

  set nextUsed(v: number) {
    this.usedNext = this.usedPublished = u16(v, 'nextUsed');
    this.signalledValid = false; // unknown history: the next check notifies (as vhost does)
  }

  /** used.idx as it stands in guest memory (vhost-user resumes a ring from it: nextUsed = usedIdxInRing()). */
  usedIdxInRing(): number {
    this.checkMemory();
    return Atomics.load(this.used16, 1);
  }

  /** Entries the driver made available and this queue has not popped yet. */
  availableCount(): number {
    this.checkMemory();
    return this.pending();
  }

  /** The next available chain, fully validated, or null when the ring is empty. */
  pop(): DescriptorChain | null {
    this.checkMemory();
    if (this.pending() === 0) return null;
    const head = this.avail[2 + (this.availNext & this.mask)]!;
    this.availNext = (this.availNext + 1) & 0xffff;
    if (this.eventIdx) Atomics.store(this.used16, this.availEventAt, this.availNext);
    if (head >= this.size) throw new VirtqueueError('head out of range', `head ${head}, queue size ${this.size}`);
    return this.walk(head);
  }

  /** Write used element {head, len} at nextUsed; publish used.idx unless `publish` is false. */
  pushUsed(head: number, len: number, publish = true): void {
    if (!((head >>> 0) === head && head < this.size)) throw new RangeError(`pushUsed: head ${head} out of range`);
    if ((len >>> 0) !== len) throw new RangeError(`pushUsed: len ${len} is not a u32`);
    this.checkMemory();
    const w = 1 + 2 * (this.usedNext & this.mask);
    this.used32[w] = head;
    this.used32[w + 1] = len;
    this.usedNext = (this.usedNext + 1) & 0xffff;
    if (publish) this.publishUsed();
  }

  /** Make every pushed element visible to the driver (release store of used.idx). */
  publishUsed(): void {
    this.checkMemory();
    Atomics.store(this.used16, 1, this.usedNext);
    this.usedPublished = this.usedNext;
  }

  /**
   * Must the driver be interrupted for what was published since the previous call?
   * EVENT_IDX: vring_need_event(used_event, used.idx, used.idx at the previous call), which
   * is true when the driver's used_event was crossed since then (vhost and QEMU record the
   * point on every call). Otherwise: something new was published and the driver did not set
   * VRING_AVAIL_F_NO_INTERRUPT.
   */
  needsNotification(): boolean {
    this.checkMemory();
    const now = this.usedPublished, old = this.signalled, valid = this.signalledValid;
    this.signalled = now;
    this.signalledValid = true;
    if (this.eventIdx) {
      // Atomics: the used.idx store above must be visible before used_event is read.
      return !valid || vringNeedEvent(Atomics.load(this.avail, this.usedEventAt), now, old);
    }
    if (valid && now === old) return false;
    return (Atomics.load(this.avail, 0) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }

  /**
   * Ask the driver not to kick while the device is draining. Without EVENT_IDX this sets
   * VRING_USED_F_NO_NOTIFY; with EVENT_IDX it does nothing (pop keeps avail_event at
   * nextAvail, so the driver kicks only once the device has caught up).
   */
  disableNotifications(): void {
    this.checkMemory();
    if (this.eventIdx || (this.usedFlags & VIRTQ_USED_F_NO_NOTIFY) !== 0) return;
    this.usedFlags |= VIRTQ_USED_F_NO_NOTIFY;
    Atomics.store(this.used16, 0, this.usedFlags);
  }

  /**
   * Ask the driver to kick again (clear NO_NOTIFY, or avail_event = nextAvail). Returns true
   * when buffers are already available: the driver may have skipped its kick, drain again.
   */
  enableNotifications(): boolean {
    this.checkMemory();
    if (this.eventIdx) {
      Atomics.store(this.used16, this.availEventAt, this.availNext);
    } else if ((this.usedFlags & VIRTQ_USED_F_NO_NOTIFY) !== 0) {
      this.usedFlags &= ~VIRTQ_USED_F_NO_NOTIFY;
      Atomics.store(this.used16, 0, this.usedFlags);
    }
    return Atomics.load(this.avail, 1) !== this.availNext;
  }

  private pending(): number {
    const n = (Atomics.load(this.avail, 1) - this.availNext) & 0xffff;
    if (n > this.size) {
      throw new VirtqueueError('avail index jump', `idx ${this.avail[1]} is ${n} past ${this.availNext}, size ${this.size}`);
    }
    return n;
  }

  /** Walk and validate the chain at `head` (already consumed from the ring). */
  private walk(head: number): DescriptorChain {
    const mem = this.mem;
    let readable: Uint8Array[] | null = null;
    let writable: Uint8Array[] | null = null;
    let readBytes = 0, writeBytes = 0;
    let sawWritable = false;
    let table = this.desc;
    let tableLen = this.size;
    let indirect = false;
    let idx = head;
    let count = 0;
    let buffers = 0;
    for (;;) {
      if (++count > tableLen) {
        throw new VirtqueueError(indirect ? 'indirect chain too long' : 'chain too long', `more than ${tableLen} descriptors`, head);
      }
      const w = idx << 2;
      const lo = table[w]!, hi = table[w + 1]!, len = table[w + 2]!, flagsNext = table[w + 3]!;
      if ((flagsNext & VIRTQ_DESC_F_INDIRECT) !== 0) {
        table = this.indirectTable(lo, hi, len, flagsNext, indirect, head);
        tableLen = len >>> 4;
        indirect = true;
        idx = 0;
        count = 0;
        continue;
      }
      if (++buffers > MAX_CHAIN_DESCRIPTORS) {
        throw new VirtqueueError('chain too long', `more than ${MAX_CHAIN_DESCRIPTORS} buffers`, head);
      }
      const write = (flagsNext & VIRTQ_DESC_F_WRITE) !== 0;
      if (write) sawWritable = true;
      else if (sawWritable) throw new VirtqueueError('readable after writable', `descriptor ${idx}`, head);
      if (len !== 0) {
        const view = hi < HI_LIMIT ? mem.sliceOrNull(lo + hi * TWO_POW_32, len, write) : null;
        const views = write ? (writable ??= []) : (readable ??= []);
        if (view !== null) views.push(view);
        else views.push(...this.spanningViews(lo, hi, len, write, head)); // not inside one region
        if (write) writeBytes += len;
        else readBytes += len;
        if (readBytes + writeBytes > MAX_CHAIN_BYTES) {
          throw new VirtqueueError('chain exceeds 4 GiB', `${readBytes + writeBytes} bytes`, head);
        }
      }
      if ((flagsNext & VIRTQ_DESC_F_NEXT) === 0) break;
      idx = flagsNext >>> 16;
      if (idx >= tableLen) {
        throw new VirtqueueError(indirect ? 'indirect next out of range' : 'next out of range', `next ${idx}, table ${tableLen}`, head);
      }
    }
    return new DescriptorChain(head, readable ?? EMPTY, writable ?? EMPTY, readBytes, writeBytes);
  }

  /** Validate an indirect descriptor and return its table as u32 words. */
  private indirectTable(lo: number, hi: number, len: number, flags: number, nested: boolean, head: number): Uint32Array {
    if (nested) throw new VirtqueueError('nested indirect', undefined, head);
    if (!this.indirect) throw new VirtqueueError('indirect not negotiated', undefined, head);
    if ((flags & VIRTQ_DESC_F_NEXT) !== 0) throw new VirtqueueError('indirect with next', undefined, head);
    if (len === 0 || (len & 15) !== 0) throw new VirtqueueError('indirect length invalid', `${len} bytes`, head);
    if (len > MAX_INDIRECT_ENTRIES * 16) throw new VirtqueueError('indirect table too large', `${len} bytes`, head);
    const view = hi < HI_LIMIT ? this.mem.sliceOrNull(lo + hi * TWO_POW_32, len, false) : null;
    if (view === null) {
      const inaccessible = hi < HI_LIMIT && this.mem.fault(lo + hi * TWO_POW_32, len).reason === 'inaccessible';
      throw new VirtqueueError(
        inaccessible ? 'indirect table inaccessible' : 'indirect table out of memory', `at ${addrString(lo, hi)}+${len}`, head);
    }
    if ((view.byteOffset & 3) === 0) return new Uint32Array(view.buffer, view.byteOffset, len >>> 2);
    // The spec sets no alignment for indirect tables: read a misaligned one from a copy.
    const copy = new Uint32Array(len >>> 2);
    new Uint8Array(copy.buffer).set(view);
    return copy;
  }

  /** Views of a buffer over guest-physically touching regions (cold path), or the buffer's fault. */
  private spanningViews(lo: number, hi: number, len: number, write: boolean, head: number): Uint8Array[] {
    let reason: VirtqueueFault = 'buffer out of memory';
    let cause: unknown;
    if (hi < HI_LIMIT) {
      try {
        return this.mem.slices(lo + hi * TWO_POW_32, len, write);
      } catch (err) {
        if (!(err instanceof GuestMemoryError)) throw err;
        cause = err;
        if (err.reason === 'inaccessible') reason = 'buffer inaccessible';
        else if (err.reason === 'readonly') reason = 'buffer read-only';
      }
    }
    throw new VirtqueueError(reason, `at ${addrString(lo, hi)}+${len}`, head, { cause });
  }

  /** Regions lent away since construction must not be touched through the cached ring views. */
  private checkMemory(): void {
    if (this.mem.generation === this.memGeneration) return;
    const ok = this.mem.isValid(this.descTable, this.desc.byteLength)
      && this.mem.isValid(this.availRing, this.avail.byteLength)
      && this.mem.isValid(this.usedRing, this.used16.byteLength, true);
    if (!ok) throw new VirtqueueError('ring inaccessible');
    this.memGeneration = this.mem.generation;
  }
}

function ringArea(mem: GuestMemory, what: string, addr: number, len: number, write: boolean): Uint8Array {
  const view = mem.sliceOrNull(addr, len, write);
  if (view !== null) return view;
  const reason = mem.fault(addr, len, write).reason;
  throw new VirtqueueError(
    reason === 'inaccessible' || reason === 'readonly' ? 'ring inaccessible' : 'ring out of memory',
    `${what} at ${addr}+${len}: ${reason}`);
}

function u16(v: number, what: string): number {
  if ((v & 0xffff) !== v) throw new RangeError(`${what}: ${v} is not a u16`);
  return v;
}

function addrString(lo: number, hi: number): string {
  return '0x' + ((BigInt(hi) << 32n) | BigInt(lo)).toString(16);
}
