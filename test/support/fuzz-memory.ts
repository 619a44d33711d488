// Guest memory for fuzzing, instrumented to prove the device touches nothing it does not
// own: regions are carved out of ONE SharedArrayBuffer with canary bytes before, between
// and after them (a write that escaped a view would change a canary), and the GuestMemory
// observer checks every access against the layout with independent BigInt arithmetic
// (inside one region, that region accessible, and writable when written). Holes, a
// lent-away region, a read-only region, a region above 4 GiB and two regions that touch
// in guest-physical space give hostile addresses something to aim at.

import { GuestMemory, type GuestRegion } from '../../framework/guest-memory.ts';

export interface RegionSpec {
  base: number;
  size: number;
  accessible?: boolean;
  readOnly?: boolean;
}

const CANARY = 0xa5;
const GUARD = 64;

export class FuzzMemory {
  readonly mem: GuestMemory;
  readonly specs: readonly Required<RegionSpec>[];
  private readonly backing: Uint8Array;
  private readonly views: Uint8Array[];
  /** [start, end) of every canary run in `backing`. */
  private readonly guards: [number, number][] = [];
  private violation: string | null = null;
  private readonly bigBases: bigint[];
  private readonly bigEnds: bigint[];
  /** Accesses the observer saw (for coverage counters). */
  accesses = 0;
  private lastRaw = 0;

  constructor(specs: RegionSpec[]) {
    this.specs = specs.map((s) => ({ accessible: true, readOnly: false, ...s }));
    let total = GUARD;
    const offsets: number[] = [];
    for (const s of this.specs) {
      total += (8 - ((total - s.base) % 8) + 8) % 8; // host offset congruent to base mod 8
      offsets.push(total);
      total += s.size + GUARD;
    }
    this.backing = new Uint8Array(new SharedArrayBuffer(total));
    this.backing.fill(CANARY);
    let prevEnd = 0;
    this.views = this.specs.map((s, i) => {
      this.guards.push([prevEnd, offsets[i]!]);
      prevEnd = offsets[i]! + s.size;
      const v = this.backing.subarray(offsets[i]!, offsets[i]! + s.size);
      v.fill(0);
      return v;
    });
    this.guards.push([prevEnd, total]);
    const regions: GuestRegion[] = this.specs.map((s, i) => ({
      base: s.base, size: s.size, bytes: this.views[i]!, accessible: s.accessible, readOnly: s.readOnly,
    }));
    this.mem = new GuestMemory(regions);
    this.bigBases = this.specs.map((s) => BigInt(s.base));
    this.bigEnds = this.specs.map((s) => BigInt(s.base) + BigInt(s.size));
    this.mem.observer = (addr, len, write) => this.observe(addr, len, write);
  }

  /** The standard hostile layout (see file header); `ramSize` bytes of ordinary RAM at 0. */
  static standard(ramSize = 0x10000): FuzzMemory {
    return new FuzzMemory([
      { base: 0, size: ramSize },
      { base: 0x20_0000, size: 0x1000 }, // after a hole
      { base: 0x20_1000, size: 0x1000, accessible: false }, // touches the previous one; lent away
      { base: 0x20_3000, size: 0x1000, readOnly: true },
      { base: 0x1_0000_0000, size: 0x1000 }, // above 4 GiB
    ]);
  }

  /** Lend region `i` away or take it back (as Gunyah does); the observer follows. */
  setAccessible(i: number, accessible: boolean): void {
    (this.specs[i] as { accessible: boolean }).accessible = accessible;
    this.mem.setAccessible(this.specs[i]!.base, accessible);
  }

  /** The guest's own view of [addr, addr+len): unobserved, ignores accessibility. */
  raw(addr: number, len: number): Uint8Array {
    const last = this.specs[this.lastRaw]!;
    if (addr >= last.base && addr + len <= last.base + last.size) {
      return this.views[this.lastRaw]!.subarray(addr - last.base, addr - last.base + len);
    }
    for (let i = 0; i < this.specs.length; i++) {
      const s = this.specs[i]!;
      if (addr >= s.base && addr + len <= s.base + s.size) {
        this.lastRaw = i;
        return this.views[i]!.subarray(addr - s.base, addr - s.base + len);
      }
    }
    throw new RangeError(`FuzzMemory.raw: ${addr}+${len} is not inside one region`);
  }

  dataView(addr: number, len: number): DataView {
    const b = this.raw(addr, len);
    return new DataView(b.buffer, b.byteOffset, len);
  }

  /**
   * Start of a case: zero the regions (all, or those `zero` selects), set accessibility
   * (default: only region 2 lent away, as in `standard`), forget violations.
   */
  clear(zero: (i: number) => boolean = () => true, accessible: readonly boolean[] = this.specs.map((_, i) => i !== 2)): void {
    this.views.forEach((v, i) => {
      if (zero(i)) v.fill(0);
    });
    this.specs.forEach((s, i) => {
      if (s.accessible !== accessible[i]) this.setAccessible(i, accessible[i]!);
    });
    this.violation = null;
  }

  /** null, or what the device did wrong: an observed access outside what it may touch, or a changed canary. */
  check(): string | null {
    if (this.violation) return this.violation;
    for (const [start, end] of this.guards) {
      for (let p = start; p < end; p++) {
        if (this.backing[p] !== CANARY) return `host memory outside every region changed (backing offset ${p})`;
      }
    }
    return null;
  }

  /** Throw if the observer saw a forbidden access (cheap: call it after every device operation). */
  assertObserved(what = 'device'): void {
    if (this.violation) throw new Error(`${what}: ${this.violation}`);
  }

  /** Throw if `check()` found anything. */
  assertClean(what = 'device'): void {
    const v = this.check();
    if (v) throw new Error(`${what}: ${v}`);
  }

  private observe(addr: number, len: number, write: boolean): void {
    this.accesses++;
    // Independent of GuestMemory's own checks: exact BigInt bounds, whatever numbers arrive.
    if (!Number.isSafeInteger(addr) || !Number.isSafeInteger(len) || addr < 0 || len < 0) {
      this.violation ??= `${write ? 'write' : 'read'} at a non-address ${addr}+${len}`;
      return;
    }
    const a = BigInt(addr), e = a + BigInt(len);
    for (let i = 0; i < this.specs.length; i++) {
      if (a >= this.bigBases[i]! && e <= this.bigEnds[i]!) {
        const s = this.specs[i]!;
        if (!s.accessible) this.violation ??= `${write ? 'write' : 'read'} ${hex(addr)}+${len} in a lent-away region`;
        else if (write && s.readOnly) this.violation ??= `write ${hex(addr)}+${len} in a read-only region`;
        return;
      }
    }
    this.violation ??= `${write ? 'write' : 'read'} ${hex(addr)}+${len} outside every region`;
  }
}

function hex(n: number): string {
  return '0x' + n.toString(16);
}
