// Guest-physical address space: the regions of guest RAM the device may touch, and
// checked, zero-copy access to them. Every address here comes from the guest, so every
// access is validated (64-bit safe: a JS number address must be a non-negative safe
// integer and addr+len must not pass 2^53-1; anything larger is outside guest memory).
//
// Rule: one access lies inside ONE region. A range that crosses a region's end is refused
// as 'unmapped' even when the next region is contiguous in guest-physical space, because a
// single zero-copy view cannot span two host mappings (rust-vmm's contiguous-slice rule).
// The one exception is `slices`, for guest buffers (descriptors): a range over regions that
// touch in guest-physical space comes back as one view per region, as QEMU and rust-vmm
// split such a buffer into several iovecs.

/** Why a guest-memory access was refused. */
export type GuestMemoryFault = 'unmapped' | 'inaccessible' | 'overflow' | 'readonly';

export class GuestMemoryError extends Error {
  override readonly name = 'GuestMemoryError';
  /** errno name for callers that report errors numerically. */
  readonly code = 'EFAULT';
  constructor(readonly addr: number, readonly len: number, readonly reason: GuestMemoryFault) {
    super(`guest memory ${reason}: ${describe(addr)}+${describe(len)}`);
  }
}

export interface GuestRegion {
  /** Guest-physical address of the first byte. */
  base: number;
  size: number;
  /** Host view of the region (a koffi view over mmapped memory, or a SharedArrayBuffer). */
  bytes: Uint8Array;
  /** Default true. false = lent away (Gunyah): every device access is refused. */
  accessible?: boolean;
  /** Default false. true = the device may read but never write (e.g. a ROM region). */
  readOnly?: boolean;
  /** Host virtual address of `bytes`, for the hypervisor's memory-slot ioctls. */
  hostAddress?: bigint;
  /** Free-form tag (memory slot number, Gunyah label). */
  label?: number;
}

const PAGE_SIZE = 4096;
const MAX_ADDR = Number.MAX_SAFE_INTEGER; // 2^53 - 1

export class GuestMemory {
  /** Called for every validated access (fuzzing and tests); not for refused ones. */
  observer?: (addr: number, len: number, write: boolean) => void;

  // Parallel arrays sorted by base: the lookup never touches the region objects.
  private readonly bases: number[];
  private readonly ends: number[];
  private readonly views: Uint8Array[];
  private readonly dataViews: DataView[];
  private readonly accessible: boolean[];
  private readonly readOnly: boolean[];
  private readonly sources: GuestRegion[];
  private snapshot: readonly GuestRegion[] | null = null;
  private lastHit = 0;
  private gen = 0;

  /** Validates the layout; throws RangeError for a bad setup (host bug, not guest input). */
  constructor(regions: GuestRegion[]) {
    if (regions.length === 0) throw new RangeError('GuestMemory: no regions');
    const sorted = [...regions].sort((a, b) => a.base - b.base);
    for (let i = 0; i < sorted.length; i++) {
      const r = sorted[i]!;
      if (!Number.isSafeInteger(r.base) || r.base < 0) throw new RangeError(`GuestMemory: bad base ${r.base}`);
      if (!Number.isSafeInteger(r.size) || r.size <= 0 || r.base + r.size > MAX_ADDR) {
        throw new RangeError(`GuestMemory: bad size ${r.size} at ${hex(r.base)}`);
      }
      if (!(r.bytes instanceof Uint8Array) || r.bytes.length !== r.size) {
        throw new RangeError(`GuestMemory: region at ${hex(r.base)} has ${r.bytes?.length} bytes, expected ${r.size}`);
      }
      // Naturally aligned guest accesses must map to aligned host offsets (Atomics, typed arrays).
      if (r.bytes.byteOffset % 8 !== r.base % 8) {
        throw new RangeError(`GuestMemory: region at ${hex(r.base)} is not 8-byte aligned in its buffer`);
      }
      if (i > 0) {
        const prev = sorted[i - 1]!;
        if (prev.base + prev.size > r.base) {
          throw new RangeError(`GuestMemory: regions at ${hex(prev.base)} and ${hex(r.base)} overlap`);
        }
      }
    }
    this.sources = sorted.map((r) => ({ ...r, accessible: r.accessible ?? true, readOnly: r.readOnly ?? false }));
    this.bases = sorted.map((r) => r.base);
    this.ends = sorted.map((r) => r.base + r.size);
    this.views = sorted.map((r) => r.bytes);
    this.dataViews = sorted.map((r) => new DataView(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength));
    this.accessible = this.sources.map((r) => r.accessible!);
    this.readOnly = this.sources.map((r) => r.readOnly!);
  }

  /** One zero-filled SharedArrayBuffer-backed region of `size` bytes (a multiple of 4096). */
  static allocate(size: number, base = 0): GuestMemory {
    if (!Number.isSafeInteger(size) || size <= 0 || size % PAGE_SIZE !== 0) {
      throw new RangeError(`GuestMemory.allocate: size ${size} is not a positive multiple of ${PAGE_SIZE}`);
    }
    return new GuestMemory([{ base, size, bytes: new Uint8Array(new SharedArrayBuffer(size)) }]);
  }

  /** The regions sorted by base (snapshots: reflect `setAccessible` on the next read). */
  get regions(): readonly GuestRegion[] {
    return (this.snapshot ??= Object.freeze(this.sources.map((r) => Object.freeze({ ...r }))));
  }

  /** Bumped by every `setAccessible`: holders of long-lived views (rings) re-check on change. */
  get generation(): number {
    return this.gen;
  }

  /** Lend a region away (false) or take it back (true). `base` must be a region's exact base. */
  setAccessible(base: number, accessible: boolean): void {
    const i = this.bases.indexOf(base);
    if (i < 0) throw new RangeError(`GuestMemory.setAccessible: no region starts at ${hex(base)}`);
    this.accessible[i] = accessible;
    this.sources[i]!.accessible = accessible;
    this.snapshot = null;
    this.gen++;
  }

  /** Zero-copy view of guest memory; throws GuestMemoryError. `write` also refuses read-only regions. */
  slice(addr: number, len: number, write = false): Uint8Array {
    const view = this.sliceOrNull(addr, len, write);
    if (view === null) throw this.fault(addr, len, write);
    return view;
  }

  /** `slice` for hot paths: null instead of an exception (call `fault` for the reason). */
  sliceOrNull(addr: number, len: number, write: boolean): Uint8Array | null {
    const i = this.check(addr, len, write);
    if (i < 0) return null;
    const off = addr - this.bases[i]!;
    return this.views[i]!.subarray(off, off + len);
  }

  /**
   * Zero-copy views of [addr, addr+len), one per region, for a range that may run over
   * regions touching in guest-physical space (a guest buffer; not for fixed-width fields).
   * Every region must allow the access; throws GuestMemoryError otherwise. An empty range
   * gives one empty view, with the rules of `slice`.
   */
  slices(addr: number, len: number, write = false): Uint8Array[] {
    const out: Uint8Array[] = [];
    const reason = this.span(addr, len, write, out);
    if (reason !== null) throw new GuestMemoryError(addr, len, reason);
    if (this.observer !== undefined) {
      let at = addr;
      for (const v of out) {
        this.observer(at, v.length, write);
        at += v.length;
      }
    }
    return out;
  }

  isValid(addr: number, len: number, write = false): boolean {
    return this.locate(addr, len, write) >= 0;
  }

  /** The error a refused access raises (cold path). */
  fault(addr: number, len: number, write = false): GuestMemoryError {
    return new GuestMemoryError(addr, len, this.diagnose(addr, len, write));
  }

  readU8(addr: number): number {
    const i = this.checkOrThrow(addr, 1, false);
    return this.views[i]![addr - this.bases[i]!]!;
  }

  readU16(addr: number): number {
    const i = this.checkOrThrow(addr, 2, false);
    return this.dataViews[i]!.getUint16(addr - this.bases[i]!, true);
  }

  readU32(addr: number): number {
    const i = this.checkOrThrow(addr, 4, false);
    return this.dataViews[i]!.getUint32(addr - this.bases[i]!, true);
  }

  readU64(addr: number): bigint {
    const i = this.checkOrThrow(addr, 8, false);
    return this.dataViews[i]!.getBigUint64(addr - this.bases[i]!, true);
  }

  writeU8(addr: number, value: number): void {
    const i = this.checkOrThrow(addr, 1, true);
    this.views[i]![addr - this.bases[i]!] = value;
  }

  writeU16(addr: number, value: number): void {
    const i = this.checkOrThrow(addr, 2, true);
    this.dataViews[i]!.setUint16(addr - this.bases[i]!, value, true);
  }

  writeU32(addr: number, value: number): void {
    const i = this.checkOrThrow(addr, 4, true);
    this.dataViews[i]!.setUint32(addr - this.bases[i]!, value, true);
  }

  writeU64(addr: number, value: bigint): void {
    const i = this.checkOrThrow(addr, 8, true);
    this.dataViews[i]!.setBigUint64(addr - this.bases[i]!, value, true);
  }

  /** Copy guest memory at `addr` into all of `dst`. */
  read(addr: number, dst: Uint8Array): void {
    dst.set(this.slice(addr, dst.length, false));
  }

  /** Copy all of `src` into guest memory at `addr`. */
  write(addr: number, src: Uint8Array): void {
    this.slice(addr, src.length, true).set(src);
  }

  private checkOrThrow(addr: number, len: number, write: boolean): number {
    const i = this.check(addr, len, write);
    if (i < 0) throw this.fault(addr, len, write);
    return i;
  }

  /** Region index of a valid access (reporting it to the observer), or -1. */
  private check(addr: number, len: number, write: boolean): number {
    const i = this.locate(addr, len, write);
    if (i >= 0 && this.observer !== undefined) this.observer(addr, len, write);
    return i;
  }

  private locate(addr: number, len: number, write: boolean): number {
    // Written so that NaN, negatives, fractions and anything past 2^53-1 all fail.
    if (!(addr >= 0 && len >= 0 && addr + len <= MAX_ADDR) || !Number.isInteger(addr) || !Number.isInteger(len)) {
      return -1;
    }
    const i = this.regionFor(addr, len);
    if (i < 0 || addr + len > this.ends[i]! || !this.accessible[i] || (write && this.readOnly[i])) return -1;
    return i;
  }

  /** Region holding [addr, addr+len) if any holds addr; an empty range may sit at a region's end. */
  private regionFor(addr: number, len: number): number {
    const i = this.find(addr);
    return i >= 0 || len !== 0 || addr === 0 ? i : this.find(addr - 1);
  }

  /** Index of the region containing `addr`, or -1 (last-hit cache, then binary search). */
  private find(addr: number): number {
    const bases = this.bases;
    let i = this.lastHit;
    if (addr >= bases[i]! && addr < this.ends[i]!) return i;
    let lo = 0, hi = bases.length - 1;
    while (lo <= hi) {
      i = (lo + hi) >>> 1;
      if (addr < bases[i]!) hi = i - 1;
      else if (addr >= this.ends[i]!) lo = i + 1;
      else {
        this.lastHit = i;
        return i;
      }
    }
    return -1;
  }

  /** Views of a range over touching regions appended to `out`, or why it is refused (out is then partial). */
  private span(addr: number, len: number, write: boolean, out: Uint8Array[]): GuestMemoryFault | null {
    if (!(addr >= 0 && len >= 0 && addr + len <= MAX_ADDR) || !Number.isInteger(addr) || !Number.isInteger(len)) {
      return 'overflow';
    }
    let i = this.regionFor(addr, len);
    if (i < 0) return 'unmapped';
    const end = addr + len;
    let at = addr;
    for (;;) {
      if (!this.accessible[i]) return 'inaccessible';
      if (write && this.readOnly[i]) return 'readonly';
      const stop = Math.min(end, this.ends[i]!);
      const off = at - this.bases[i]!;
      out.push(this.views[i]!.subarray(off, off + (stop - at)));
      if (stop === end) return null;
      at = stop;
      if (++i === this.bases.length || this.bases[i] !== at) return 'unmapped';
    }
  }

  private diagnose(addr: number, len: number, write: boolean): GuestMemoryFault {
    if (!(addr >= 0 && len >= 0 && addr + len <= MAX_ADDR) || !Number.isInteger(addr) || !Number.isInteger(len)) {
      return 'overflow';
    }
    const i = this.regionFor(addr, len);
    if (i < 0 || addr + len > this.ends[i]!) return 'unmapped';
    if (!this.accessible[i]) return 'inaccessible';
    if (write && this.readOnly[i]) return 'readonly';
    throw new Error(`GuestMemory: access ${hex(addr)}+${len} is valid`); // caller bug
  }
}

function hex(n: number): string {
  return '0x' + n.toString(16);
}

function describe(n: number): string {
  return Number.isSafeInteger(n) && n >= 0 ? hex(n) : String(n);
}
