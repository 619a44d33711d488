// GuestMemory: layout validation, zero-copy slices, 64-bit-safe bounds, region rules,
// lending (accessibility), read-only regions, little-endian helpers and the observer.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { GuestMemory, GuestMemoryError, type GuestRegion } from '../../framework/guest-memory.ts';
import { seeded } from '../support/prng.ts';

function faultOf(fn: () => unknown): GuestMemoryError {
  try {
    fn();
  } catch (err) {
    assert.instance(err, GuestMemoryError);
    return err as GuestMemoryError;
  }
  assert.unreachable('expected a GuestMemoryError');
  throw new Error('unreachable');
}

/** Three regions: [0x1000, 0x3000), [0x3000, 0x4000) (contiguous), gap, [0x10000, 0x12000). */
function threeRegions(): { mem: GuestMemory; regions: GuestRegion[] } {
  const regions: GuestRegion[] = [
    { base: 0x10000, size: 0x2000, bytes: new Uint8Array(0x2000), label: 3 },
    { base: 0x1000, size: 0x2000, bytes: new Uint8Array(new SharedArrayBuffer(0x2000)), label: 1 },
    { base: 0x3000, size: 0x1000, bytes: new Uint8Array(0x1000), label: 2 },
  ];
  return { mem: new GuestMemory(regions), regions };
}

test('allocate gives one zeroed shared region at the requested base', () => {
  const mem = GuestMemory.allocate(0x4000, 0x8000_0000);
  assert.is(mem.regions.length, 1);
  const r = mem.regions[0]!;
  assert.is(r.base, 0x8000_0000);
  assert.is(r.size, 0x4000);
  assert.instance(r.bytes.buffer, SharedArrayBuffer);
  assert.is(mem.readU32(0x8000_3ffc), 0);
  assert.throws(() => GuestMemory.allocate(0x1001), RangeError);
  assert.throws(() => GuestMemory.allocate(0), RangeError);
});

test('constructor rejects overlapping, mis-sized and misaligned regions', () => {
  const b = (n: number) => new Uint8Array(n);
  assert.throws(() => new GuestMemory([]), RangeError);
  assert.throws(() => new GuestMemory([{ base: 0, size: 0x2000, bytes: b(0x2000) }, { base: 0x1000, size: 0x1000, bytes: b(0x1000) }]), RangeError);
  assert.throws(() => new GuestMemory([{ base: 0, size: 0x2000, bytes: b(0x1000) }]), RangeError);
  assert.throws(() => new GuestMemory([{ base: -4096, size: 0x1000, bytes: b(0x1000) }]), RangeError);
  assert.throws(() => new GuestMemory([{ base: 2 ** 53 - 0x800, size: 0x1000, bytes: b(0x1000) }]), RangeError);
  // bytes at an offset that breaks natural alignment of guest addresses
  assert.throws(() => new GuestMemory([{ base: 0, size: 0x1000, bytes: new Uint8Array(new ArrayBuffer(0x1004), 4, 0x1000) }]), RangeError);
  // ... while an offset congruent to the base is fine
  const ok = new GuestMemory([{ base: 0x1004, size: 0x1000, bytes: new Uint8Array(new ArrayBuffer(0x1004), 4, 0x1000) }]);
  assert.ok(ok.isValid(0x1004, 0x1000));
});

test('regions are reported sorted with their metadata', () => {
  const { mem } = threeRegions();
  assert.equal(mem.regions.map((r) => [r.base, r.label, r.accessible]), [[0x1000, 1, true], [0x3000, 2, true], [0x10000, 3, true]]);
});

test('slice is a zero-copy view in both directions', () => {
  const { mem, regions } = threeRegions();
  const v = mem.slice(0x10010, 4);
  v.set([1, 2, 3, 4]);
  assert.is(mem.readU32(0x10010), 0x04030201);
  assert.is(regions[0]!.bytes[0x10], 1);
  mem.writeU8(0x10013, 0xee);
  assert.is(v[3], 0xee);
});

test('accesses must lie inside one region: end, gap and region boundary', () => {
  const { mem } = threeRegions();
  assert.is(mem.slice(0x2ff0, 0x10).length, 0x10); // up to the exact end
  assert.is(mem.slice(0x3000, 0).length, 0); // empty range at a region's start
  assert.is(mem.slice(0x4000, 0).length, 0); // empty range at a region's end
  assert.is(faultOf(() => mem.slice(0x5000, 0)).reason, 'unmapped'); // empty range in a gap
  const e = faultOf(() => mem.slice(0x3ff0, 0x20)); // runs into the gap
  assert.equal([e.addr, e.len, e.reason, e.code], [0x3ff0, 0x20, 'unmapped', 'EFAULT']);
  // contiguous in guest-physical, but two host mappings: refused
  assert.is(faultOf(() => mem.slice(0x2ff0, 0x20)).reason, 'unmapped');
  assert.is(faultOf(() => mem.readU32(0x2ffe)).reason, 'unmapped');
  assert.is(faultOf(() => mem.slice(0, 1)).reason, 'unmapped');
  assert.is(faultOf(() => mem.slice(0x12000, 1)).reason, 'unmapped');
  assert.not.ok(mem.isValid(0x3ff0, 0x20));
  assert.ok(mem.isValid(0x3ff0, 0x10));
});

test('slices: one zero-copy view per region across regions that touch, in guest-physical order', () => {
  const { mem, regions } = threeRegions();
  const inside = mem.slices(0x1010, 0x20);
  assert.is(inside.length, 1, 'inside one region: one view');
  const across = mem.slices(0x2ff0, 0x20, true);
  assert.equal(across.map((v) => v.length), [0x10, 0x10]);
  across[0]!.fill(1);
  across[1]!.fill(2);
  assert.is(mem.readU8(0x2fff), 1);
  assert.is(mem.readU8(0x3000), 2);
  assert.is(regions[2]!.bytes[0xf], 2, 'the second view is the second region\'s own memory');
  // a whole region plus both neighbours' edges is still a run of touching regions
  assert.equal(mem.slices(0x1000, 0x3000).map((v) => v.length), [0x2000, 0x1000]);
  assert.is(mem.slices(0x4000, 0).length, 1, 'empty range at a region end');
});

test('slices: a gap, a lent-away or read-only neighbour, or an unsafe range refuses the whole access', () => {
  const { mem } = threeRegions();
  assert.is(faultOf(() => mem.slices(0x3ff0, 0x20)).reason, 'unmapped'); // runs into the gap
  assert.is(faultOf(() => mem.slices(0xff0, 0x20)).reason, 'unmapped'); // starts in the gap
  const e = faultOf(() => mem.slices(0x2ff0, 0x1020));
  assert.equal([e.addr, e.len, e.reason], [0x2ff0, 0x1020, 'unmapped']);
  mem.setAccessible(0x3000, false);
  assert.is(faultOf(() => mem.slices(0x2ff0, 0x20)).reason, 'inaccessible');
  mem.setAccessible(0x3000, true);
  const rom = new GuestMemory([
    { base: 0, size: 0x1000, bytes: new Uint8Array(0x1000) },
    { base: 0x1000, size: 0x1000, bytes: new Uint8Array(0x1000), readOnly: true },
  ]);
  assert.is(rom.slices(0xff0, 0x20).length, 2, 'read across is fine');
  assert.is(faultOf(() => rom.slices(0xff0, 0x20, true)).reason, 'readonly');
  for (const [addr, len] of [[-1, 1], [0x1000, NaN], [2 ** 53 - 1, 2], [0x1000, 0.5]] as const) {
    assert.is(faultOf(() => mem.slices(addr, len)).reason, 'overflow', `${addr}+${len}`);
  }
});

test('64-bit-unsafe addresses and lengths are overflow faults, never views', () => {
  const { mem } = threeRegions();
  const bad: [number, number][] = [
    [-1, 1], [0x1000, -1], [NaN, 1], [0x1000, NaN], [4096.5, 1], [0x1000, 1.5],
    [2 ** 53, 1], [2 ** 53 - 1, 2], [2 ** 64, 1], [Infinity, 0], [0x1000, 2 ** 53],
    [Number.MAX_SAFE_INTEGER - 8, 16],
  ];
  for (const [addr, len] of bad) {
    assert.is(faultOf(() => mem.slice(addr, len)).reason, 'overflow', `${addr}+${len}`);
    assert.not.ok(mem.isValid(addr, len));
  }
});

test('lookup agrees with a linear scan over many regions (random addresses)', () => {
  seeded((rng) => {
    const regions: GuestRegion[] = [];
    let base = 0;
    for (let i = 0; i < 40; i++) {
      base += rng.int(3) * 0x1000; // sometimes contiguous, sometimes a gap
      const size = (1 + rng.int(4)) * 0x1000;
      regions.push({ base, size, bytes: new Uint8Array(size) });
      base += size;
    }
    const mem = new GuestMemory(rng.chance(0.5) ? regions.reverse() : regions);
    for (let i = 0; i < 20000; i++) {
      const addr = rng.int(base + 0x2000);
      const len = rng.int(0x1800);
      const inside = regions.some((r) => addr >= r.base && (len === 0 ? addr <= r.base + r.size : addr + len <= r.base + r.size));
      assert.is(mem.isValid(addr, len), inside, `${addr}+${len}`);
    }
  });
});

test('a lent-away region refuses every device access until returned', () => {
  const { mem } = threeRegions();
  const gen = mem.generation;
  mem.setAccessible(0x3000, false);
  assert.is.not(mem.generation, gen);
  assert.is(mem.regions.find((r) => r.base === 0x3000)!.accessible, false);
  assert.is(faultOf(() => mem.slice(0x3000, 4)).reason, 'inaccessible');
  assert.is(faultOf(() => mem.readU8(0x3fff)).reason, 'inaccessible');
  assert.is(faultOf(() => mem.writeU8(0x3000, 1)).reason, 'inaccessible');
  assert.not.ok(mem.isValid(0x3000, 1));
  assert.ok(mem.isValid(0x1000, 1)); // neighbours unaffected
  mem.setAccessible(0x3000, true);
  assert.is(mem.readU8(0x3000), 0);
  assert.throws(() => mem.setAccessible(0x3004, false), RangeError);
});

test('a read-only region can be read but never written', () => {
  const bytes = new Uint8Array(0x1000);
  bytes[5] = 42;
  const mem = new GuestMemory([{ base: 0, size: 0x1000, bytes, readOnly: true }, { base: 0x1000, size: 0x1000, bytes: new Uint8Array(0x1000) }]);
  assert.is(mem.readU8(5), 42);
  assert.is(mem.slice(0, 8)[5], 42);
  assert.is(faultOf(() => mem.writeU8(5, 1)).reason, 'readonly');
  assert.is(faultOf(() => mem.write(0, new Uint8Array(1))).reason, 'readonly');
  assert.is(faultOf(() => mem.slice(0, 8, true)).reason, 'readonly');
  assert.not.ok(mem.isValid(0, 8, true));
  mem.writeU8(0x1000, 7);
  assert.is(mem.readU8(0x1000), 7);
});

test('fixed-width helpers are little-endian and full-width', () => {
  const mem = GuestMemory.allocate(0x1000);
  mem.writeU64(0x100, 0xfedcba9876543210n);
  assert.equal([...mem.slice(0x100, 8)], [0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe]);
  assert.is(mem.readU64(0x100), 0xfedcba9876543210n);
  assert.is(mem.readU32(0x104), 0xfedcba98);
  assert.is(mem.readU16(0x106), 0xfedc);
  assert.is(mem.readU8(0x107), 0xfe);
  mem.writeU32(0x200, 0xffffffff);
  assert.is(mem.readU32(0x200), 0xffffffff);
  mem.writeU16(0x202, 0x1234);
  assert.is(mem.readU32(0x200), 0x1234ffff);
  mem.write(0x300, Uint8Array.of(9, 8, 7));
  const dst = new Uint8Array(3);
  mem.read(0x300, dst);
  assert.equal([...dst], [9, 8, 7]);
  assert.is(faultOf(() => mem.readU64(0xffc)).reason, 'unmapped');
});

test('the observer sees every validated access and no refused one', () => {
  const mem = GuestMemory.allocate(0x1000);
  const seen: [number, number, boolean][] = [];
  mem.observer = (a, l, w) => seen.push([a, l, w]);
  mem.readU32(0x10);
  mem.writeU16(0x20, 1);
  mem.slice(0x30, 5);
  mem.slice(0x40, 6, true);
  mem.read(0x50, new Uint8Array(2));
  mem.write(0x60, new Uint8Array(3));
  assert.throws(() => mem.readU32(0xffe));
  assert.not.ok(mem.isValid(0x2000, 1));
  assert.equal(seen, [[0x10, 4, false], [0x20, 2, true], [0x30, 5, false], [0x40, 6, true], [0x50, 2, false], [0x60, 3, true]]);
});

test('the observer sees each region a spanning access touches, and nothing of a refused one', () => {
  const { mem } = threeRegions();
  const seen: [number, number, boolean][] = [];
  mem.observer = (a, l, w) => seen.push([a, l, w]);
  mem.slices(0x2ff0, 0x20, true);
  assert.throws(() => mem.slices(0x3ff0, 0x20));
  assert.equal(seen, [[0x2ff0, 0x10, true], [0x3000, 0x10, true]]);
});

test.run();
