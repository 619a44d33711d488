// Fuzz target: split-virtqueue parsing. One input is a whole ring as a hostile guest lays it
// out: a queue size, ring placement (sometimes misaligned, overlapping or outside memory),
// a start index anywhere (wrapping), and chains built from recipes (valid, loops, overlapping
// buffers, buffers in holes / lent-away / read-only memory / past 2^53 / wrapping 2^64, huge
// lengths, indirect tables valid, nested, looping, with NEXT, badly sized, misaligned,
// outside memory, over 4 GiB in total), plus heads out of range, avail.idx jumps and memory
// lent away mid-run. Invariants: only VirtqueueError escapes, every popped chain is exactly
// the reference model's (same guest bytes, same views), every malformed one is refused,
// used elements and used.idx land where the spec says, notification decisions match
// vring_need_event, and the observer/canaries see no access outside what the guest gave.

import { VirtqueueError, type DescriptorChain } from '../../../framework/virtio/descriptor-chain.ts';
import { availRingBytes, descTableBytes, usedRingBytes } from '../../../framework/virtio/ring-layout.ts';
import { SplitQueue } from '../../../framework/virtio/split-queue.ts';
import { FuzzStats, type FuzzTarget } from '../../support/fuzz-engine.ts';
import { FuzzMemory } from '../../support/fuzz-memory.ts';
import { F_INDIRECT, F_NEXT, F_WRITE, deviceMayAccess, modelChain, needEvent, type ModelChain } from '../../support/fuzz-ring-model.ts';
import type { Prng } from '../../support/prng.ts';

const RAM = 0x10000;
const R1 = 0x20_0000; // ordinary 4 KiB region after a hole
const R2 = 0x20_1000; // lent away, touching R1
const R3 = 0x20_3000; // read-only
const R4 = 0x1_0000_0000; // above 4 GiB
const BIG = 0x4000_0000; // 5 MiB, only for the "over 4 GiB in total" recipe
const BIG_SIZE = 0x50_0000;
const HUGE_ENTRIES = 820; // 820 x 5 MiB > 2^32, within the 1024-buffer chain cap

interface Context {
  memory: FuzzMemory;
}

interface Desc {
  addr: bigint;
  len: number;
  flags: number;
  next: number;
}

class Layout {
  cursor: number;
  constructor(readonly memory: FuzzMemory, readonly rng: Prng, start: number, readonly end: number) {
    this.cursor = start;
  }

  /** `len` bytes of the data area (16-aligned unless `misalign`), or null when full. */
  alloc(len: number, misalign = 0): number | null {
    const at = Math.ceil(this.cursor / 16) * 16 + misalign;
    if (at + len > this.end) return null;
    this.cursor = at + len;
    return at;
  }

  write(table: number, index: number, d: Desc): void {
    const v = this.memory.dataView(table + 16 * index, 16);
    v.setBigUint64(0, BigInt.asUintN(64, d.addr), true);
    v.setUint32(8, d.len >>> 0, true);
    v.setUint16(12, d.flags & 0xffff, true);
    v.setUint16(14, d.next & 0xffff, true);
  }

  /** A buffer the device may use (readable-only regions only when !write). */
  goodBuffer(write: boolean): { addr: bigint; len: number } {
    const rng = this.rng;
    const len = rng.chance(0.1) ? 0 : rng.int(1, 512);
    const spots = write ? [0, 1, 4] : [0, 1, 3, 4];
    switch (rng.pick(spots)) {
      case 1: return { addr: BigInt(R1 + rng.int(0x1000 - len + 1)), len };
      case 3: return { addr: BigInt(R3 + rng.int(0x1000 - len + 1)), len };
      case 4: return { addr: BigInt(R4 + rng.int(0x1000 - len + 1)), len };
      default: {
        const at = this.alloc(Math.max(len, 1));
        return at === null ? { addr: BigInt(R1), len: Math.min(len, 0x1000) } : { addr: BigInt(at), len };
      }
    }
  }

  /** A buffer that must be refused (or an odd one that may be fine: the model decides). */
  badBuffer(): { addr: bigint; len: number } {
    const rng = this.rng;
    switch (rng.int(11)) {
      case 0: return { addr: BigInt(RAM + rng.int(R1 - RAM)), len: rng.int(1, 64) }; // hole
      case 1: { const k = rng.int(1, 16); return { addr: BigInt(RAM - k), len: k + rng.int(1, 16) }; } // straddles RAM's end
      case 2: return { addr: BigInt(R1 + 0x1000 - 8), len: 16 }; // crosses into the touching region
      case 3: return { addr: BigInt(R2 + rng.int(0x1000)), len: rng.int(1, 32) }; // lent away
      case 4: return { addr: (1n << 53n) - BigInt(rng.int(0, 64)), len: rng.int(1, 128) }; // past 2^53
      case 5: return { addr: (1n << 64n) - BigInt(rng.int(1, 64)), len: rng.int(1, 256) }; // wraps 2^64
      case 6: return { addr: BigInt(rng.int(RAM)), len: 0xffff_ffff - rng.int(4) }; // huge length
      case 7: return { addr: (BigInt(rng.u32()) << 32n) | BigInt(rng.u32()), len: rng.u32() }; // anything
      case 8: return { addr: BigInt(R4 + 0x1000 - 4), len: 8 }; // straddles the high region's end
      case 9: return { addr: BigInt(BIG + BIG_SIZE - 2), len: 4 }; // straddles the big region's end
      default: return { addr: BigInt(R3 + rng.int(0x1000 - 16)), len: 16 }; // read-only: bad only if device-writable
    }
  }
}

type Recipe = 'valid' | 'indirect' | 'loop' | 'self-loop' | 'indirect-loop' | 'nested-indirect' | 'indirect-next'
  | 'indirect-len' | 'indirect-outside' | 'bad-buffer' | 'readonly-write' | 'readable-after-writable'
  | 'next-out-of-range' | 'indirect-next-out-of-range' | 'overlapping' | 'empty' | 'garbage' | 'huge-total';

const RECIPES: [Recipe, number][] = [
  ['valid', 20], ['indirect', 10], ['loop', 5], ['self-loop', 3], ['indirect-loop', 4], ['nested-indirect', 3],
  ['indirect-next', 2], ['indirect-len', 4], ['indirect-outside', 4], ['bad-buffer', 10], ['readonly-write', 3],
  ['readable-after-writable', 4], ['next-out-of-range', 3], ['indirect-next-out-of-range', 3], ['overlapping', 5],
  ['empty', 2], ['garbage', 6], ['huge-total', 0.05],
];
const RECIPE_TOTAL = RECIPES.reduce((s, [, w]) => s + w, 0);

function pickRecipe(rng: Prng): Recipe {
  let x = rng.float() * RECIPE_TOTAL;
  for (const [r, w] of RECIPES) {
    if ((x -= w) < 0) return r;
  }
  return 'valid';
}

/** Buffers in chain order: readable ones first, then writable ones. */
function plainBuffers(L: Layout, n: number): Desc[] {
  const nr = L.rng.int(n + 1);
  const out: Desc[] = [];
  for (let i = 0; i < n; i++) {
    const write = i >= nr;
    const b = L.goodBuffer(write);
    out.push({ addr: b.addr, len: b.len, flags: write ? F_WRITE : 0, next: 0 });
  }
  return out;
}

/** Link `descs` into table entries `slots` (NEXT on all but the last). */
function link(L: Layout, table: number, slots: number[], descs: Desc[]): void {
  descs.forEach((d, i) => {
    const last = i === descs.length - 1;
    L.write(table, slots[i]!, { ...d, flags: last ? d.flags & ~F_NEXT : d.flags | F_NEXT, next: last ? d.next : slots[i + 1]! });
  });
}

/** Build one chain with recipe `r` using free main-table entries; returns the head (or null if no room). */
function buildChain(L: Layout, r: Recipe, table: number, free: number[], size: number, stats: FuzzStats): number | null {
  const rng = L.rng;
  const take = (n: number) => (free.length >= n ? free.splice(0, n) : null);
  const indirectTable = (descs: Desc[], misalign = rng.chance(0.2) ? rng.pick([2, 4, 8]) : 0) => {
    const at = L.alloc(16 * descs.length, misalign);
    if (at === null) return null;
    link(L, at, descs.map((_, i) => i), descs);
    return at;
  };
  const direct = (descs: Desc[]) => {
    const slots = take(descs.length);
    if (!slots) return null;
    link(L, table, slots, descs);
    return slots[0]!;
  };
  const viaIndirect = (descs: Desc[], tableLen?: number, flags = F_INDIRECT) => {
    const at = indirectTable(descs);
    if (at === null) return null;
    const slots = take(1);
    if (!slots) return null;
    L.write(table, slots[0]!, { addr: BigInt(at), len: tableLen ?? 16 * descs.length, flags, next: rng.int(size) });
    return slots[0]!;
  };
  stats.count(`recipe: ${r}`);
  switch (r) {
    case 'valid': return direct(plainBuffers(L, rng.int(1, Math.min(6, size))));
    case 'overlapping': {
      const descs = plainBuffers(L, rng.int(2, Math.min(5, Math.max(2, size))));
      for (const d of descs) { d.addr = descs[0]!.addr; d.len = descs[0]!.len || 16; } // all the same bytes
      if (descs.some((d) => d.flags & F_WRITE)) for (const d of descs) if (d.addr >= BigInt(R3) && d.addr < BigInt(R3 + 0x1000)) d.addr = BigInt(R1);
      return direct(descs);
    }
    case 'empty': return direct(plainBuffers(L, rng.int(1, Math.min(3, size))).map((d) => ({ ...d, len: 0 })));
    case 'indirect': return viaIndirect(plainBuffers(L, rng.int(1, 24)));
    case 'loop': {
      const descs = plainBuffers(L, rng.int(2, Math.min(6, Math.max(2, size))));
      const slots = take(descs.length);
      if (!slots) return null;
      link(L, table, slots, descs);
      const lastSlot = slots[slots.length - 1]!;
      const back = slots[rng.int(slots.length)]!;
      L.write(table, lastSlot, { ...descs[descs.length - 1]!, flags: descs[descs.length - 1]!.flags | F_NEXT, next: back });
      return slots[0]!;
    }
    case 'self-loop': {
      const slots = take(1);
      if (!slots) return null;
      const b = L.goodBuffer(true);
      L.write(table, slots[0]!, { addr: b.addr, len: b.len, flags: F_WRITE | F_NEXT, next: slots[0]! });
      return slots[0]!;
    }
    case 'indirect-loop': {
      const descs = plainBuffers(L, rng.int(1, 8));
      const at = L.alloc(16 * descs.length);
      if (at === null) return null;
      link(L, at, descs.map((_, i) => i), descs);
      const last = descs.length - 1;
      L.write(at, last, { ...descs[last]!, flags: descs[last]!.flags | F_NEXT, next: rng.int(descs.length) });
      const slots = take(1);
      if (!slots) return null;
      L.write(table, slots[0]!, { addr: BigInt(at), len: 16 * descs.length, flags: F_INDIRECT, next: 0 });
      return slots[0]!;
    }
    case 'nested-indirect': {
      const inner = indirectTable(plainBuffers(L, rng.int(1, 4)));
      if (inner === null) return null;
      const descs = plainBuffers(L, rng.int(0, 3));
      descs.splice(rng.int(descs.length + 1), 0, { addr: BigInt(inner), len: 16, flags: F_INDIRECT, next: 0 });
      return viaIndirect(descs);
    }
    case 'indirect-next': return viaIndirect(plainBuffers(L, rng.int(1, 4)), undefined, F_INDIRECT | F_NEXT);
    case 'indirect-len': {
      const descs = plainBuffers(L, rng.int(1, 4));
      const bad = rng.pick([0, 16 * descs.length + rng.int(1, 16), 16 * descs.length - rng.int(1, 15), 16 * 65537, 0xffff_fff0]);
      return viaIndirect(descs, bad >>> 0);
    }
    case 'indirect-outside': {
      const slots = take(1);
      if (!slots) return null;
      const b = L.badBuffer();
      L.write(table, slots[0]!, { addr: b.addr, len: rng.chance(0.5) ? 16 * rng.int(1, 8) : b.len, flags: F_INDIRECT, next: 0 });
      return slots[0]!;
    }
    case 'bad-buffer': {
      const descs = plainBuffers(L, rng.int(1, Math.min(4, size)));
      const k = rng.int(descs.length);
      const b = L.badBuffer();
      descs[k] = { ...descs[k]!, addr: b.addr, len: b.len };
      return rng.chance(0.3) ? viaIndirect(descs) : direct(descs);
    }
    case 'readonly-write': {
      const descs = plainBuffers(L, rng.int(1, Math.min(3, size)));
      descs.push({ addr: BigInt(R3 + 16 * rng.int(200)), len: rng.int(1, 32), flags: F_WRITE, next: 0 });
      return direct(descs.slice(-Math.min(descs.length, size)));
    }
    case 'readable-after-writable': {
      const descs = plainBuffers(L, rng.int(2, Math.max(2, Math.min(5, size))));
      descs.forEach((d, i) => { d.flags = i === 0 ? F_WRITE : 0; });
      if (descs.length > size) return null;
      return rng.chance(0.3) ? viaIndirect(descs) : direct(descs);
    }
    case 'next-out-of-range': {
      const slots = take(1);
      if (!slots) return null;
      const b = L.goodBuffer(false);
      L.write(table, slots[0]!, { addr: b.addr, len: b.len, flags: F_NEXT, next: size + rng.int(0x10000 - size) });
      return slots[0]!;
    }
    case 'indirect-next-out-of-range': {
      const descs = plainBuffers(L, rng.int(1, 6));
      const at = L.alloc(16 * descs.length);
      if (at === null) return null;
      link(L, at, descs.map((_, i) => i), descs);
      const k = rng.int(descs.length);
      L.write(at, k, { ...descs[k]!, flags: descs[k]!.flags | F_NEXT, next: descs.length + rng.int(100) });
      const slots = take(1);
      if (!slots) return null;
      L.write(table, slots[0]!, { addr: BigInt(at), len: 16 * descs.length, flags: F_INDIRECT, next: 0 });
      return slots[0]!;
    }
    case 'garbage': {
      const slots = take(1);
      if (!slots) return null;
      const v = L.memory.dataView(table + 16 * slots[0]!, 16);
      for (let i = 0; i < 16; i += 4) v.setUint32(i, rng.u32(), true);
      if (rng.chance(0.5)) v.setUint16(14, rng.int(size), true); // a next that stays in range
      return slots[0]!;
    }
    case 'huge-total': {
      // An indirect table in the big region whose 820 entries each name the whole 5 MiB region.
      const slots = take(1);
      if (!slots) return null;
      const descs: Desc[] = Array.from({ length: HUGE_ENTRIES }, () => ({ addr: BigInt(BIG), len: BIG_SIZE, flags: 0, next: 0 }));
      link(L, BIG, descs.map((_, i) => i), descs);
      L.write(table, slots[0]!, { addr: BigInt(BIG), len: 16 * HUGE_ENTRIES, flags: F_INDIRECT, next: 0 });
      return slots[0]!;
    }
  }
}

function sameChain(memory: FuzzMemory, chain: DescriptorChain, want: ModelChain): string | null {
  const cmp = (views: readonly Uint8Array[], expect: [bigint, number][], what: string) => {
    if (views.length !== expect.length) return `${what}: ${views.length} buffers, model ${expect.length}`;
    for (let i = 0; i < views.length; i++) {
      const [addr, len] = expect[i]!;
      const raw = memory.raw(Number(addr), len);
      const v = views[i]!;
      if (v.buffer !== raw.buffer || v.byteOffset !== raw.byteOffset || v.length !== len) {
        return `${what}[${i}]: view at ${v.byteOffset}+${v.length}, model ${addr.toString(16)}+${len}`;
      }
    }
    return null;
  };
  const bytes = (e: [bigint, number][]) => e.reduce((s, [, l]) => s + l, 0);
  return cmp(chain.readable, want.readable, 'readable') ?? cmp(chain.writable, want.writable, 'writable')
    ?? (chain.readableBytes !== bytes(want.readable) || chain.writableBytes !== bytes(want.writable)
      ? `byte counts ${chain.readableBytes}/${chain.writableBytes}` : null);
}

function check(cond: boolean, message: string): void {
  if (!cond) throw new Error(message);
}

export const splitQueueTarget: FuzzTarget<Context> = {
  name: 'split-queue',
  summary: 'hostile split rings vs a reference model: loops, holes, overflow, indirect abuse, index jumps',
  budget: 20000,
  open: () => ({
    memory: new FuzzMemory([
      { base: 0, size: RAM }, { base: R1, size: 0x1000 }, { base: R2, size: 0x1000, accessible: false },
      { base: R3, size: 0x1000, readOnly: true }, { base: R4, size: 0x1000 }, { base: BIG, size: BIG_SIZE },
    ]),
  }),
  run(rng, { memory }, stats) {
    // The big region only ever holds the huge-total table. Region 2 (touching region 1) is
    // usually lent away; when it is not, a buffer may run from region 1 into it.
    const r2Lent = !rng.chance(0.1);
    memory.clear((i) => i !== 5, memory.specs.map((_, i) => i !== 2 || !r2Lent));
    const size = rng.chance(0.005) ? rng.pick([0, 3, 12, 65536]) // not a queue size
      : rng.chance(0.85) ? 1 << rng.int(0, 6) : 1 << rng.int(6, 8); // mostly 1..32, some 64..256
    const eventIdx = rng.chance(0.5);
    const indirectNegotiated = rng.chance(0.8);
    // Ring placement: the usual packed layout in RAM or in region 1, or anywhere at all.
    const placement = rng.chance(0.85) ? (size <= 32 && rng.chance(0.2) ? 'r1' : 'ram') : 'random';
    let desc: number, avail: number, used: number;
    const base = placement === 'r1' ? R1 : 16 * rng.int(16);
    desc = base;
    avail = desc + descTableBytes(size);
    used = Math.ceil((avail + availRingBytes(size, true)) / 4) * 4;
    let dataStart = used + usedRingBytes(size, true);
    if (placement === 'random') {
      const anywhere = () => rng.pick([rng.int(RAM), R1 + rng.int(0x1000), R2 + 16 * rng.int(256), R3, RAM - rng.int(64),
        R4 + 16 * rng.int(256), 2 ** 53 - 16, rng.int(2 ** 40)]);
      desc = rng.chance(0.5) ? desc : anywhere();
      avail = rng.chance(0.5) ? avail : anywhere();
      used = rng.chance(0.5) ? used : anywhere();
      dataStart = Math.max(dataStart, 0x8000);
    }
    if (placement === 'r1') dataStart = 0x100;
    stats.count(`placement: ${placement}`);

    // Does the spec allow these rings? (aligned, inside accessible memory, used ring writable)
    const ringsOk = size >= 1 && size <= 32768 && (size & (size - 1)) === 0 && desc % 16 === 0 && avail % 2 === 0 && used % 4 === 0
      && deviceMayAccess(memory, BigInt(desc), descTableBytes(size), false)
      && deviceMayAccess(memory, BigInt(avail), availRingBytes(size, eventIdx), false)
      && deviceMayAccess(memory, BigInt(used), usedRingBytes(size, eventIdx), true);
    let q: SplitQueue;
    try {
      q = new SplitQueue(memory.mem, { size, descTable: desc, availRing: avail, usedRing: used, eventIdx, indirect: indirectNegotiated });
    } catch (err) {
      if (!(err instanceof VirtqueueError)) throw err;
      check(!ringsOk, `valid rings refused: ${err.message}`);
      stats.count(`fault: ${err.reason}`);
      memory.assertClean();
      return;
    }
    check(ringsOk, `rings accepted outside what the spec allows: desc ${desc} avail ${avail} used ${used}`);
    // Rings that overlap each other make the device's own ring writes part of the input: only the
    // safety invariants are checked then, not the model.
    // (A randomly placed ring may also overlap the data area where chains and tables go.)
    const spans = [[desc, descTableBytes(size)], [avail, availRingBytes(size, eventIdx)], [used, usedRingBytes(size, eventIdx)]];
    if (placement === 'random') spans.push([dataStart, RAM - dataStart]);
    const overlapping = spans.some(([a, al], i) => spans.some(([b, bl], j) => i < j && a! < b! + bl! && b! < a! + al!));
    if (overlapping) stats.count('rings overlap');

    const L = new Layout(memory, rng, dataStart, RAM);
    const free = Array.from({ length: size }, (_, i) => i);
    for (let i = free.length - 1; i > 0; i--) { const j = rng.int(i + 1); [free[i], free[j]] = [free[j]!, free[i]!]; }

    // Chains, then the available ring.
    const heads: number[] = [];
    const wanted = rng.int(1, size + 1);
    for (let i = 0; i < wanted && free.length > 0; i++) {
      const head = buildChain(L, pickRecipe(rng), desc, free, size, stats);
      if (head !== null) heads.push(head);
    }
    for (const slot of free) if (rng.chance(0.3)) buildChain(L, 'garbage', desc, [slot], size, stats); // stray entries
    if (rng.chance(0.05)) { heads.push(size + rng.int(0x10000 - size)); stats.count('head out of range'); }
    if (heads.length > size) heads.length = size;

    const start = rng.chance(0.3) ? (0x10000 - rng.int(heads.length + 1)) & 0xffff : rng.int(0x10000);
    q.nextAvail = start;
    q.nextUsed = start;
    const av = memory.dataView(avail, availRingBytes(size, true) - (eventIdx ? 0 : 2));
    const usedView = () => memory.dataView(used, 4);
    if (!overlapping) usedView().setUint16(2, start, true);
    heads.forEach((h, k) => av.setUint16(4 + 2 * ((start + k) % size), h, true));
    let availIdx = (start + heads.length) & 0xffff;
    const jump = rng.chance(0.03);
    if (jump) availIdx = (start + size + 1 + rng.int(0x8000)) & 0xffff;
    av.setUint16(2, availIdx, true);

    // Pop everything, comparing each chain with the model.
    const ringInR1 = spans.slice(0, 3).some(([a, l]) => a! < R1 + 0x1000 && R1 < a! + l!);
    let lastSignalled: number | null = null;
    let lent = false;
    for (let guard = 0; guard < heads.length + 2; guard++) {
      // Sometimes region 1 is lent away mid-run (rings there become unusable).
      if (!lent && rng.chance(0.03)) {
        memory.setAccessible(1, false);
        lent = true;
        stats.count('region lent away mid-run');
      }
      const ringGone = lent && ringInR1;
      const slot = q.nextAvail;
      const pending = (av.getUint16(2, true) - slot) & 0xffff;
      const head = av.getUint16(4 + 2 * (slot % size), true);
      const expect = ringGone ? { invalid: 'ring inaccessible' } : pending > size ? { invalid: 'jump' }
        : pending === 0 ? null : modelChain(memory, { size, descTable: desc, indirectNegotiated }, head);
      let chain: DescriptorChain | null = null;
      let error: VirtqueueError | null = null;
      try {
        chain = q.pop();
      } catch (err) {
        if (!(err instanceof VirtqueueError)) throw err;
        error = err;
        stats.count(`fault: ${err.reason}`);
      }
      memory.assertObserved();
      if (expect === null) {
        if (!overlapping) check(chain === null && error === null, `empty ring: got ${error?.message ?? 'a chain'}`);
        break;
      }
      if (overlapping) {
        if (error && (error.reason === 'avail index jump' || error.reason === 'ring inaccessible')) break;
        if (chain) q.pushUsed(chain.head, 0);
        continue;
      }
      if ('invalid' in expect) {
        check(error !== null, `slot ${slot} head ${head}: model says ${expect.invalid}, queue returned a chain`);
        if (expect.invalid === 'jump') {
          check(error!.reason === 'avail index jump', `jump reported as ${error!.reason}`);
          check(q.nextAvail === slot, 'an avail index jump must not be consumed');
          break;
        }
        if (expect.invalid === 'ring inaccessible') {
          check(error!.reason === 'ring inaccessible', `lent-away ring reported as ${error!.reason}`);
          break;
        }
        check(q.nextAvail === ((slot + 1) & 0xffff), 'a malformed chain is consumed');
        if (expect.invalid !== 'head out of range') check(error!.head === head, `error names head ${error!.head}, not ${head}`);
        stats.count('chains refused');
        continue;
      }
      check(error === null, `slot ${slot} head ${head}: model accepts, queue threw ${error?.message}`);
      const diff = sameChain(memory, chain!, expect);
      check(diff === null, `head ${head}: ${diff}`);
      stats.count('chains accepted');
      if (expect.spanning > 0) stats.count('buffer over touching regions');

      // The device writes a random prefix of the writable bytes and returns the chain.
      const w = chain!.writer();
      const n = rng.int(Math.min(chain!.writableBytes, 600) + 1);
      const data = rng.bytes(n);
      check(w.write(data) === n, 'writer wrote less than asked');
      // Byte p of the data lands at the p-th writable byte; where buffers overlap, the later one wins.
      const expected = new Map<number, number>();
      let p = 0;
      for (const [addr, len] of expect.writable) {
        const take = Math.min(len, n - p);
        for (let k = 0; k < take; k++) expected.set(Number(addr) + k, data[p + k]!);
        p += take;
        if (p >= n) break;
      }
      for (const [addr, byte] of expected) {
        if (memory.raw(addr, 1)[0] !== byte) throw new Error(`written byte not at 0x${addr.toString(16)}`);
      }
      const at = q.nextUsed;
      q.pushUsed(chain!.head, w.written, rng.chance(0.5));
      const el = memory.dataView(used + 4 + 8 * (at % size), 8);
      check(el.getUint32(0, true) === chain!.head && el.getUint32(4, true) === w.written, 'used element not at nextUsed');

      if (rng.chance(0.5)) {
        q.publishUsed();
        check(usedView().getUint16(2, true) === q.nextUsed, 'used.idx not published');
        // Notification decision vs the model.
        const usedEvent = rng.int(0x10000);
        const noInterrupt = rng.chance(0.3);
        if (eventIdx) av.setUint16(4 + 2 * size, usedEvent, true);
        av.setUint16(0, noInterrupt ? 1 : 0, true);
        const now = q.nextUsed;
        const expectNotify = eventIdx
          ? lastSignalled === null || needEvent(usedEvent, now, lastSignalled)
          : !(lastSignalled !== null && lastSignalled === now) && !noInterrupt;
        check(q.needsNotification() === expectNotify, `needsNotification at used ${now} (prev ${lastSignalled}) != model ${expectNotify}`);
        lastSignalled = now;
      }
      if (rng.chance(0.2)) {
        q.disableNotifications();
        if (!eventIdx) check((usedView().getUint16(0, true) & 1) === 1, 'NO_NOTIFY not set');
        const more = q.enableNotifications();
        if (!eventIdx) check((usedView().getUint16(0, true) & 1) === 0, 'NO_NOTIFY not cleared');
        else check(memory.dataView(used + 4 + 8 * size, 2).getUint16(0, true) === q.nextAvail, 'avail_event != nextAvail');
        check(more === (av.getUint16(2, true) !== q.nextAvail), 'enableNotifications misreports pending buffers');
      }
    }
    memory.assertClean();
  },
  checkCoverage(stats) {
    stats.require(
      'chains accepted', 'chains refused', 'rings overlap', 'buffer over touching regions', 'region lent away mid-run', 'head out of range',
      ...[
        'invalid queue size', 'misaligned ring', 'ring out of memory', 'ring inaccessible', 'avail index jump',
        'head out of range', 'next out of range', 'chain too long', 'readable after writable', 'buffer out of memory',
        'buffer inaccessible', 'buffer read-only', 'chain exceeds 4 GiB', 'indirect not negotiated', 'nested indirect',
        'indirect with next', 'indirect length invalid', 'indirect table too large', 'indirect table out of memory',
        'indirect table inaccessible', 'indirect next out of range', 'indirect chain too long',
      ].map((r) => `fault: ${r}`),
    );
  },
};
