// Property tests for the split virtqueue, seeded (RXVIRT_SEED=n replays a failure):
//  - random valid traffic (sizes, start indices, direct/indirect, out-of-order completion,
//    random cursor operations) round-trips every byte exactly;
//  - random hostile descriptor tables agree with an independent BigInt reference model of
//    the virtio 1.2 rules: valid chains yield exactly the model's buffers as views at the
//    right place, invalid ones raise VirtqueueError and nothing else, and every guest
//    memory access the device makes (observer) lies inside memory it may touch.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { GuestMemory, type GuestRegion } from '../../framework/guest-memory.ts';
import { DescriptorChain, VirtqueueError } from '../../framework/virtio/descriptor-chain.ts';
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../framework/virtio/ring-layout.ts';
import { SplitQueue } from '../../framework/virtio/split-queue.ts';
import { DriverQueue, type BufferSpec } from '../support/driver-queue.ts';
import { Prng, seeded } from '../support/prng.ts';

const NEXT = VIRTQ_DESC_F_NEXT, WRITE = VIRTQ_DESC_F_WRITE, INDIRECT = VIRTQ_DESC_F_INDIRECT;

/** Drive a reader over `flat` with random operations, checking each against the flat copy. */
function checkReader(rng: Prng, chain: DescriptorChain, flat: Uint8Array): void {
  const r = chain.reader();
  const dv = new DataView(flat.buffer, flat.byteOffset, flat.length);
  let p = 0;
  while (p < flat.length) {
    const left = flat.length - p;
    assert.is(r.remaining, left);
    switch (rng.int(7)) {
      case 0: assert.is(r.u8(), flat[p]); p += 1; break;
      case 1: if (left >= 2) { assert.is(r.u16(), dv.getUint16(p, true)); p += 2; } break;
      case 2: if (left >= 4) { assert.is(r.u32(), dv.getUint32(p, true)); p += 4; } break;
      case 3: if (left >= 8) { assert.is(r.u64(), dv.getBigUint64(p, true)); p += 8; } break;
      case 4: { const n = rng.int(left + 1); r.skip(n); p += n; break; }
      case 5: {
        const n = rng.int(left + 1);
        const got = r.views(n);
        assert.equal([...concat(got)], [...flat.subarray(p, p + n)]);
        p += n;
        break;
      }
      default: {
        const dst = new Uint8Array(rng.int(left + 8));
        const n = r.readInto(dst);
        assert.is(n, Math.min(dst.length, left));
        assert.equal([...dst.subarray(0, n)], [...flat.subarray(p, p + n)]);
        p += n;
      }
    }
  }
  assert.is(r.remaining, 0);
  let threw = false;
  try { r.u8(); } catch (err) { threw = err instanceof VirtqueueError && err.reason === 'short buffer'; }
  assert.ok(threw, 'reading past the end is a short buffer');
}

function concat(views: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(views.reduce((s, v) => s + v.length, 0));
  let p = 0;
  for (const v of views) { out.set(v, p); p += v.length; }
  return out;
}

test('random valid traffic round-trips exactly (sizes, wraparound, indirect, out-of-order)', () => {
  seeded((rng) => {
    const mem = GuestMemory.allocate(0x80000);
    let chains = 0;
    for (let session = 0; session < 120; session++) {
      const size = 1 << rng.int(9); // 1..256
      const indirect = rng.chance(0.5);
      const drv = new DriverQueue(mem, { size });
      const q = new SplitQueue(mem, drv.config({ eventIdx: rng.chance(0.5), indirect }));
      const start = rng.chance(0.5) ? 0x10000 - rng.int(2 * size + 1) : rng.int(0x10000);
      drv.setStartIndex(start);
      q.nextAvail = q.nextUsed = start & 0xffff;
      /** Every chain in flight (offered, or popped and not completed). */
      const expect = new Map<number, { readable: Uint8Array; writable: Uint8Array }>();
      const popped = new Map<number, DescriptorChain>();
      for (let round = 0; round < 8; round++) {
        // the driver offers a batch
        const batch = 1 + rng.int(Math.min(size, 6));
        for (let i = 0; i < batch; i++) {
          if (drv.freeDescriptors === 0) break;
          const useIndirect = indirect && rng.chance(0.5);
          const maxBufs = useIndirect ? 12 : Math.min(drv.freeDescriptors, 6);
          if (maxBufs === 0) break;
          const nr = rng.int(maxBufs + 1);
          const nw = nr === maxBufs ? 0 : rng.int(maxBufs - nr + 1);
          const specs: BufferSpec[] = [];
          for (let k = 0; k < nr; k++) specs.push({ data: rng.bytes(rng.chance(0.1) ? 0 : rng.int(1, 300)) });
          for (let k = 0; k < nw; k++) specs.push({ writableLen: rng.chance(0.1) ? 0 : rng.int(1, 300) });
          if (specs.length === 0) specs.push({ data: rng.bytes(1) });
          const head = drv.addChain(specs, { indirect: useIndirect });
          const readable = concat(specs.flatMap((s) => ('data' in s ? [s.data] : [])));
          const wlen = specs.reduce((s, b) => s + ('writableLen' in b ? b.writableLen : 0), 0);
          expect.set(head, { readable, writable: rng.bytes(wlen) });
        }
        // the device pops everything, then completes a random subset in random order
        assert.is(q.availableCount(), expect.size - popped.size);
        let c: DescriptorChain | null;
        while ((c = q.pop()) !== null) {
          const e = expect.get(c.head)!;
          assert.ok(e, `unexpected head ${c.head}`);
          assert.equal([...concat(c.readable)], [...e.readable]);
          assert.is(c.readableBytes, e.readable.length);
          assert.is(c.writableBytes, e.writable.length);
          checkReader(rng, c, e.readable);
          popped.set(c.head, c);
          chains++;
        }
        const heads = [...popped.keys()];
        for (const head of heads) {
          if (rng.chance(0.3)) continue; // stays in flight
          const chain = popped.get(head)!;
          const e = expect.get(head)!;
          const w = chain.writer();
          const n = rng.int(e.writable.length + 1);
          assert.is(w.write(e.writable.subarray(0, n)), n);
          q.pushUsed(head, w.written, rng.chance(0.5));
          popped.delete(head);
        }
        q.publishUsed();
        for (const u of drv.takeUsed()) {
          const e = expect.get(u.id)!;
          assert.equal([...u.written], [...e.writable.subarray(0, u.len)], `head ${u.id}`);
          expect.delete(u.id);
        }
      }
    }
    assert.ok(chains > 2000, `${chains} chains`);
  });
});

// ---- hostile rings against a reference model ----

interface Area { base: bigint; size: bigint; accessible: boolean; readOnly: boolean }
type Model = { readable: [bigint, number][]; writable: [bigint, number][] } | 'invalid';

/** The virtio 1.2 §2.7 rules, written independently with BigInt addresses. */
function model(raw: (addr: number, len: number) => DataView, areas: Area[], size: number, descTable: number,
  indirectOk: boolean, head: number): Model {
  const inside = (addr: bigint, len: number, write: boolean) => areas.some((a) =>
    addr >= a.base && addr + BigInt(len) <= a.base + a.size && a.accessible && !(write && a.readOnly));
  if (head >= size) return 'invalid';
  const out = { readable: [] as [bigint, number][], writable: [] as [bigint, number][] };
  let table = BigInt(descTable), entries = size, nested = false, i = head, steps = 0, sawWritable = false, total = 0;
  for (;;) {
    if (++steps > entries) return 'invalid';
    const d = raw(Number(table) + 16 * i, 16);
    const addr = d.getBigUint64(0, true), len = d.getUint32(8, true), flags = d.getUint16(12, true), next = d.getUint16(14, true);
    if (flags & INDIRECT) {
      if (nested || !indirectOk || flags & NEXT || len === 0 || len % 16 !== 0 || len > 16 * 65536) return 'invalid';
      if (!inside(addr, len, false)) return 'invalid';
      table = addr; entries = len / 16; nested = true; i = 0; steps = 0;
      continue;
    }
    const write = (flags & WRITE) !== 0;
    if (write) sawWritable = true;
    else if (sawWritable) return 'invalid';
    if (len > 0) {
      if (!inside(addr, len, write)) return 'invalid';
      (write ? out.writable : out.readable).push([addr, len]);
      total += len;
      if (total > 2 ** 32) return 'invalid';
    }
    if (!(flags & NEXT)) return out;
    i = next;
    if (i >= entries) return 'invalid';
  }
}

test('hostile descriptor tables: VirtqueueError or exactly the model\'s chain, never a stray access', () => {
  seeded((rng) => {
    const RAM = 0x10000;
    const regions: GuestRegion[] = [
      { base: 0, size: RAM, bytes: new Uint8Array(new SharedArrayBuffer(RAM)) },
      { base: 0x20000, size: 0x1000, bytes: new Uint8Array(0x1000) }, // gap before it
      { base: 0x21000, size: 0x1000, bytes: new Uint8Array(0x1000), accessible: false }, // lent away
      { base: 0x22000, size: 0x1000, bytes: new Uint8Array(0x1000), readOnly: true },
      { base: 0x1_0000_0000, size: 0x1000, bytes: new Uint8Array(0x1000) }, // above 4 GiB
    ];
    const mem = new GuestMemory(regions);
    const areas: Area[] = regions.map((r) => ({ base: BigInt(r.base), size: BigInt(r.size), accessible: r.accessible ?? true, readOnly: r.readOnly ?? false }));
    const rawView = (addr: number, len: number) => {
      const r = regions.find((g) => addr >= g.base && addr + len <= g.base + g.size)!;
      return new DataView(r.bytes.buffer, r.bytes.byteOffset + addr - r.base, len);
    };
    let accessBad = '';
    mem.observer = (addr, len, write) => {
      if (!areas.some((a) => BigInt(addr) >= a.base && BigInt(addr) + BigInt(len) <= a.base + a.size && a.accessible && !(write && a.readOnly))) {
        accessBad ||= `${write ? 'write' : 'read'} ${addr}+${len}`;
      }
    };
    const interestingAddr = (): bigint => {
      switch (rng.int(9)) {
        case 0: return BigInt(rng.pick(regions).base + rng.int(0x1000));
        case 1: { const r = rng.pick(regions); return BigInt(r.base + r.size - rng.int(1, 32)); }
        case 2: return 2n ** 53n - BigInt(rng.int(64));
        case 3: return 2n ** 64n - BigInt(rng.int(1, 64));
        case 4: return (BigInt(rng.u32()) << 32n) | BigInt(rng.u32());
        case 5: return BigInt(0x11000 + rng.int(0x1000)); // gap
        default: return BigInt(0x8000 + 16 * rng.int(0x700)); // the data area: tables and buffers
      }
    };
    const interestingLen = (): number => {
      switch (rng.int(8)) {
        case 0: return 0;
        case 1: return rng.u32();
        case 2: return 16 * rng.int(1, 40); // plausible indirect table
        case 3: return 0xffff_ffff - rng.int(16);
        default: return rng.int(1, 512);
      }
    };
    const randomFlags = () => rng.chance(0.6) ? rng.pick([0, NEXT, WRITE, NEXT | WRITE]) : rng.int(8) | (rng.chance(0.05) ? rng.u32() & 0xfff8 : 0);
    let cases = 0, valid = 0;
    const reasons = new Set<string>();
    for (let session = 0; session < 150; session++) {
      const size = 1 << rng.int(6); // 1..32
      const indirectOk = rng.chance(0.7);
      const drv = new DriverQueue(mem, { size, dataStart: 0x8000, dataEnd: RAM });
      const q = new SplitQueue(mem, drv.config({ eventIdx: rng.chance(0.5), indirect: indirectOk }));
      const start = rng.int(0x10000);
      drv.setStartIndex(start);
      q.nextAvail = q.nextUsed = start;
      // random descriptors in the table and in the data area (as candidate indirect tables)
      const writeRandom = (table: number, n: number) => {
        for (let i = 0; i < n; i++) {
          drv.writeDescriptorAt(table, i, {
            addr: interestingAddr(), len: interestingLen(), flags: randomFlags(),
            next: rng.chance(0.85) ? rng.int(Math.max(size, 4)) : rng.int(0x10000),
          });
        }
      };
      writeRandom(drv.descTable, size);
      for (let k = 0; k < 8; k++) writeRandom(0x8000 + 16 * rng.int(0x700 - 40), 40);
      for (let round = 0; round < 10; round++) {
        const avail = rng.chance(0.03) ? size + 1 + rng.int(100) : 1 + rng.int(size);
        for (let k = 0; k < avail; k++) drv.setAvailEntry(q.nextAvail + k, rng.chance(0.9) ? rng.int(size) : rng.int(0x10000));
        drv.setAvailIdx(q.nextAvail + avail);
        for (;;) {
          const slot = q.nextAvail;
          const head = rawView(drv.availRing + 4 + 2 * (slot % size), 2).getUint16(0, true);
          const expect = (((drv.availIdx() - slot) & 0xffff) > size) ? 'jump'
            : drv.availIdx() === slot ? 'empty' : model(rawView, areas, size, drv.descTable, indirectOk, head);
          let got: DescriptorChain | null = null;
          let err: unknown = null;
          try { got = q.pop(); } catch (e) { err = e; }
          if (err !== null) {
            if (!(err instanceof VirtqueueError)) throw err;
            reasons.add(err.reason);
          }
          assert.is(accessBad, '', 'device touched memory it may not');
          if (expect === 'empty') { assert.is(got, null); assert.is(err, null); break; }
          cases++;
          if (expect === 'jump') {
            assert.is((err as VirtqueueError).reason, 'avail index jump');
            drv.setAvailIdx(q.nextAvail); // the driver "resets"
            break;
          }
          if (expect === 'invalid') {
            assert.ok(err instanceof VirtqueueError, `head ${head}: model says invalid, queue returned a chain`);
            continue;
          }
          assert.is(err, null, `head ${head}: model says valid, queue threw ${(err as Error)?.message}`);
          valid++;
          const chain = got!;
          const same = (views: readonly Uint8Array[], want: [bigint, number][]) => {
            assert.is(views.length, want.length);
            views.forEach((v, k) => {
              const [addr, len] = want[k]!;
              const r = regions.find((g) => BigInt(g.base) <= addr && addr < BigInt(g.base + g.size))!;
              assert.is(v.buffer, r.bytes.buffer);
              assert.is(v.byteOffset, r.bytes.byteOffset + Number(addr - BigInt(r.base)));
              assert.is(v.length, len);
            });
          };
          same(chain.readable, expect.readable);
          same(chain.writable, expect.writable);
          q.pushUsed(chain.head, 0);
        }
      }
    }
    assert.ok(cases > 3000, `${cases} cases`);
    assert.ok(valid > 100, `${valid} valid chains among the hostile ones`);
    assert.ok(reasons.size >= 12, `reasons seen: ${[...reasons].join(', ')}`);
  });
});

test.run();
