// SplitQueue and DescriptorChain against a guest-side driver: direct and indirect chains,
// cursors, zero-copy views, u16 wraparound, EVENT_IDX and flag-based suppression, and one
// test per validation rule (each with its own VirtqueueError reason).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { GuestMemory, type GuestRegion } from '../../framework/guest-memory.ts';
import { VirtqueueError, type VirtqueueFault } from '../../framework/virtio/descriptor-chain.ts';
import {
  VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_USED_F_NO_NOTIFY,
  legacyRingBytes, legacyRingLayout, usedRingBytes,
} from '../../framework/virtio/ring-layout.ts';
import { MAX_CHAIN_DESCRIPTORS, SplitQueue, type SplitQueueConfig } from '../../framework/virtio/split-queue.ts';
import { DriverQueue } from '../support/driver-queue.ts';

const { NEXT, WRITE, INDIRECT } = { NEXT: VIRTQ_DESC_F_NEXT, WRITE: VIRTQ_DESC_F_WRITE, INDIRECT: VIRTQ_DESC_F_INDIRECT };
const bytes = (...v: number[]) => Uint8Array.from(v);
const seq = (n: number, from = 0) => Uint8Array.from({ length: n }, (_, i) => (from + i) & 0xff);

function setup(o: { size?: number; eventIdx?: boolean; indirect?: boolean; mem?: GuestMemory } = {}) {
  const mem = o.mem ?? GuestMemory.allocate(0x40000);
  const drv = new DriverQueue(mem, { size: o.size ?? 16 });
  const q = new SplitQueue(mem, drv.config({ eventIdx: o.eventIdx ?? false, indirect: o.indirect ?? true }));
  return { mem, drv, q };
}

function reasonOf(fn: () => unknown): VirtqueueError {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof VirtqueueError)) throw err;
    return err;
  }
  assert.unreachable('expected a VirtqueueError');
  throw new Error('unreachable');
}

const concat = (views: readonly Uint8Array[]) => {
  const out = new Uint8Array(views.reduce((s, v) => s + v.length, 0));
  let p = 0;
  for (const v of views) { out.set(v, p); p += v.length; }
  return out;
};

// ---- chains ----

for (const indirect of [false, true]) {
  test(`${indirect ? 'indirect' : 'direct'} chain: readable then writable buffers, completed through the used ring`, () => {
    const { drv, q } = setup();
    const hdr = seq(16, 1), data = seq(100, 50);
    const head = drv.addChain([{ data: hdr }, { data }, { writableLen: 64 }, { writableLen: 1 }], { indirect });
    assert.is(q.availableCount(), 1);
    const chain = q.pop()!;
    assert.ok(chain);
    assert.is(chain.head, head);
    assert.equal(chain.readable.map((v) => v.length), [16, 100]);
    assert.equal(chain.writable.map((v) => v.length), [64, 1]);
    assert.is(chain.readableBytes, 116);
    assert.is(chain.writableBytes, 65);
    assert.equal([...concat(chain.readable)], [...hdr, ...data]);
    const w = chain.writer();
    w.write(seq(64, 7));
    w.u8(0xaa);
    q.pushUsed(chain.head, w.written);
    assert.is(q.pop(), null);
    const used = drv.takeUsed();
    assert.equal(used.map((u) => [u.id, u.len]), [[head, 65]]);
    assert.equal([...used[0]!.written], [...seq(64, 7), 0xaa]);
  });
}

test('direct descriptors followed by one indirect descriptor form one chain', () => {
  const { drv, q } = setup();
  const table = drv.alloc(32), a = drv.alloc(8), b = drv.alloc(8), c = drv.alloc(8);
  drv.raw(a, 8).set(seq(8, 1));
  drv.raw(b, 8).set(seq(8, 9));
  drv.writeDescriptorAt(table, 0, { addr: b, len: 8, flags: NEXT, next: 1 });
  drv.writeDescriptorAt(table, 1, { addr: c, len: 8, flags: WRITE, next: 0 });
  drv.writeDescriptor(3, { addr: a, len: 8, flags: NEXT, next: 9 });
  drv.writeDescriptor(9, { addr: table, len: 32, flags: INDIRECT | WRITE, next: 0 }); // WRITE on it is ignored
  drv.setAvailEntry(0, 3);
  drv.setAvailIdx(1);
  const chain = q.pop()!;
  assert.is(chain.head, 3);
  assert.equal([...concat(chain.readable)], [...seq(16, 1)]);
  assert.is(chain.writableBytes, 8);
});

test('an indirect table at an unaligned address is read correctly', () => {
  const { drv, q } = setup();
  const table = drv.alloc(64) + 2, buf = drv.alloc(16);
  drv.raw(buf, 16).set(seq(16, 30));
  drv.writeDescriptorAt(table, 0, { addr: buf, len: 10, flags: NEXT, next: 1 });
  drv.writeDescriptorAt(table, 1, { addr: buf + 10, len: 6, flags: WRITE, next: 0 });
  drv.writeDescriptor(0, { addr: table, len: 32, flags: INDIRECT, next: 0 });
  drv.setAvailEntry(0, 0);
  drv.setAvailIdx(1);
  const chain = q.pop()!;
  assert.equal([...concat(chain.readable)], [...seq(10, 30)]);
  assert.equal([...concat(chain.writable)], [...seq(6, 40)]);
});

test('zero-length descriptors are allowed and contribute no view, whatever their address', () => {
  const { drv, q } = setup();
  drv.writeDescriptor(0, { addr: 2n ** 64n - 1n, len: 0, flags: NEXT, next: 1 });
  const buf = drv.alloc(4);
  drv.raw(buf, 4).set([1, 2, 3, 4]);
  drv.writeDescriptor(1, { addr: buf, len: 4, flags: NEXT, next: 2 });
  drv.writeDescriptor(2, { addr: 0xdead_beef_0000, len: 0, flags: WRITE, next: 0 });
  drv.setAvailEntry(0, 0);
  drv.setAvailIdx(1);
  const chain = q.pop()!;
  assert.is(chain.readable.length, 1);
  assert.is(chain.writable.length, 0);
  assert.is(chain.writableBytes, 0);
  assert.equal([...chain.reader().bytes(4)], [1, 2, 3, 4]);
});

test('views are zero-copy: device writes reach the guest and guest writes reach the device', () => {
  const { drv, q } = setup();
  const head = drv.addChain([{ data: bytes(1, 2, 3) }, { writableLen: 4 }]);
  const chain = q.pop()!;
  chain.writable[0]!.set([9, 8, 7, 6]);
  assert.equal([...drv.readWritable(head)], [9, 8, 7, 6]);
  const views = chain.writer().views(2);
  views[0]![1] = 0x55;
  assert.equal([...drv.readWritable(head)], [9, 0x55, 7, 6]);
  chain.readable[0]![0] = 0x11; // the view is guest memory itself
  assert.is(chain.reader().u8(), 0x11);
});

test('chains complete out of order and descriptors are reused', () => {
  const { drv, q } = setup({ size: 4 });
  const heads = [0, 1, 2, 3].map((i) => drv.addChain([{ data: bytes(i) }]));
  assert.is(drv.freeDescriptors, 0);
  const chains = heads.map(() => q.pop()!);
  for (const c of [chains[2]!, chains[0]!, chains[3]!, chains[1]!]) q.pushUsed(c.head, 0);
  assert.equal(drv.takeUsed().map((u) => u.id), [heads[2], heads[0], heads[3], heads[1]]);
  for (let round = 0; round < 3; round++) {
    const h = drv.addChain([{ data: bytes(round) }, { writableLen: 2 }]);
    const c = q.pop()!;
    assert.equal([c.head, c.reader().u8()], [h, round]);
    q.pushUsed(c.head, 2);
    assert.is(drv.takeUsed().length, 1);
  }
});

// ---- cursors ----

test('reader crosses segment boundaries for every width and stops at the end', () => {
  const { drv, q } = setup();
  const all = seq(23, 0x10);
  // segments of 1, 2, 3, 5, 12 bytes
  drv.addChain([{ data: all.subarray(0, 1) }, { data: all.subarray(1, 3) }, { data: all.subarray(3, 6) },
    { data: all.subarray(6, 11) }, { data: all.subarray(11) }]);
  const chain = q.pop()!;
  const le = new DataView(all.buffer);
  const r = chain.reader();
  assert.is(r.remaining, 23);
  assert.is(r.u16(), le.getUint16(0, true)); // 1|1
  assert.is(r.u32(), le.getUint32(2, true)); // 1|3
  assert.is(r.u64(), le.getBigUint64(6, true)); // 5|3 across
  assert.is(r.remaining, 9);
  r.skip(1);
  const views = r.views(3);
  assert.equal([...concat(views)], [...all.subarray(15, 18)]);
  const dst = new Uint8Array(10);
  assert.is(r.readInto(dst), 5); // short read at the end
  assert.equal([...dst.subarray(0, 5)], [...all.subarray(18)]);
  assert.is(r.remaining, 0);
  assert.is(r.readInto(dst), 0);
  assert.is(reasonOf(() => r.u8()).reason, 'short buffer');
  const r2 = chain.reader(); // a fresh cursor
  r2.skip(20);
  assert.is(reasonOf(() => r2.u32()).reason, 'short buffer');
  assert.is(r2.remaining, 3, 'a failed read consumes nothing');
  assert.is(reasonOf(() => r2.bytes(4)).reason, 'short buffer');
  assert.is(reasonOf(() => r2.views(4)).reason, 'short buffer');
  assert.is(reasonOf(() => r2.skip(4)).reason, 'short buffer');
  assert.equal([...r2.bytes(3)], [...all.subarray(20)]);
});

test('writer crosses segment boundaries, counts what it wrote, and refuses to overrun', () => {
  const { drv, q } = setup();
  const head = drv.addChain([{ data: bytes(0) }, { writableLen: 1 }, { writableLen: 2 }, { writableLen: 4 }, { writableLen: 9 }]);
  const chain = q.pop()!;
  const w = chain.writer();
  w.u16(0xbbaa); // 1|1
  w.u32(0xffeeddcc); // 1|3
  w.u64(0x0706050403020100n); // 4... across
  assert.is(w.written, 14);
  assert.is(w.remaining, 2);
  assert.is(reasonOf(() => w.u32(1)).reason, 'short buffer');
  assert.is(w.written, 14, 'a failed write consumes nothing');
  assert.is(w.write(bytes(0x11, 0x22, 0x33)), 2);
  assert.is(w.remaining, 0);
  const expect = new Uint8Array(16);
  const dv = new DataView(expect.buffer);
  dv.setUint16(0, 0xbbaa, true);
  dv.setUint32(2, 0xffeeddcc, true);
  dv.setBigUint64(6, 0x0706050403020100n, true);
  expect.set([0x11, 0x22], 14);
  assert.equal([...drv.readWritable(head)], [...expect]);
  const w2 = chain.writer();
  w2.skip(15);
  assert.is(w2.written, 15);
  assert.is(reasonOf(() => w2.u16(0)).reason, 'short buffer');
  assert.is(reasonOf(() => w2.views(2)).reason, 'short buffer');
});

// ---- indices and used ring ----

test('u16 indices wrap around 65535 on both rings', () => {
  const { drv, q } = setup({ size: 16 });
  drv.setStartIndex(65533);
  q.nextAvail = 65533;
  q.nextUsed = q.usedIdxInRing();
  assert.is(q.nextUsed, 65533);
  const heads: number[] = [];
  for (let i = 0; i < 6; i++) heads.push(drv.addChain([{ data: bytes(i) }, { writableLen: 1 }]));
  assert.is(drv.availIdx(), (65533 + 6) & 0xffff);
  assert.is(q.availableCount(), 6);
  for (let i = 0; i < 6; i++) {
    const c = q.pop()!;
    assert.equal([c.head, c.reader().u8()], [heads[i], i]);
    q.pushUsed(c.head, i + 1);
  }
  assert.is(q.pop(), null);
  assert.is(q.nextAvail, 3);
  assert.is(q.nextUsed, 3);
  assert.is(drv.usedIdx(), 3);
  assert.equal(drv.takeUsed().map((u) => [u.id, u.len]), heads.map((h, i) => [h, i + 1]));
});

test('pushUsed without publish writes the element but not used.idx until publishUsed', () => {
  const { drv, q } = setup();
  const h1 = drv.addChain([{ writableLen: 4 }]);
  const h2 = drv.addChain([{ writableLen: 4 }]);
  q.pushUsed(q.pop()!.head, 3, false);
  q.pushUsed(q.pop()!.head, 4, false);
  assert.is(drv.usedIdx(), 0);
  assert.equal(drv.takeUsed(), []);
  q.publishUsed();
  assert.is(drv.usedIdx(), 2);
  assert.equal(drv.takeUsed().map((u) => [u.id, u.len]), [[h1, 3], [h2, 4]]);
});

test('pushUsed and index setters reject values the device must not produce', () => {
  const { q } = setup({ size: 8 });
  assert.throws(() => q.pushUsed(8, 0), RangeError);
  assert.throws(() => q.pushUsed(-1, 0), RangeError);
  assert.throws(() => q.pushUsed(0, -1), RangeError);
  assert.throws(() => q.pushUsed(0, 2 ** 32), RangeError);
  assert.throws(() => q.pushUsed(0, 1.5), RangeError);
  assert.throws(() => { q.nextAvail = 65536; }, RangeError);
  assert.throws(() => { q.nextUsed = -1; }, RangeError);
});

// ---- notification suppression ----

test('EVENT_IDX: needsNotification is exactly "used_event crossed since the last check"', () => {
  for (const start of [0, 65530]) {
    for (const batch of [1, 2, 3]) {
      for (let offset = -2; offset < 8; offset++) {
        const { drv, q } = setup({ size: 8, eventIdx: true });
        drv.setStartIndex(start);
        q.nextAvail = q.nextUsed = start;
        assert.ok(q.needsNotification(), 'after nextUsed is set the first check notifies');
        const usedEvent = (start + offset) & 0xffff;
        drv.setUsedEvent(usedEvent);
        let idx = start;
        for (let round = 0; round < 3; round++) {
          for (let i = 0; i < batch; i++) {
            drv.addChain([{ writableLen: 1 }]);
            q.pushUsed(q.pop()!.head, 1);
          }
          const before = idx;
          idx = (idx + batch) & 0xffff;
          // notify iff used_event is one of the indices used.idx moved past: before .. idx-1
          const crossed = Array.from({ length: batch }, (_, k) => (before + k) & 0xffff).includes(usedEvent);
          assert.is(q.needsNotification(), crossed, `start ${start} batch ${batch} used_event ${usedEvent} at ${idx}`);
          assert.is(q.needsNotification(), false, 'nothing new since the last check');
          drv.takeUsed();
        }
      }
    }
  }
});

test('EVENT_IDX: pop and enableNotifications publish avail_event = nextAvail', () => {
  const { drv, q } = setup({ size: 8, eventIdx: true });
  for (let i = 0; i < 3; i++) drv.addChain([{ data: bytes(i) }]);
  q.disableNotifications();
  assert.is(drv.usedFlags() & VIRTQ_USED_F_NO_NOTIFY, 0, 'EVENT_IDX never uses the flag');
  q.pop();
  assert.is(drv.readAvailEvent(), 1);
  q.pop();
  assert.is(drv.readAvailEvent(), 2);
  assert.ok(q.enableNotifications(), 'one chain still waiting');
  q.pop();
  assert.is(drv.readAvailEvent(), 3);
  assert.not.ok(q.enableNotifications());
  drv.addChain([{ data: bytes(9) }]);
  assert.ok(q.enableNotifications(), 'a chain arrived after the drain');
  assert.is(drv.readAvailEvent(), 3);
});

test('flags: NO_INTERRUPT suppresses used notifications; NO_NOTIFY asks the driver not to kick', () => {
  const { drv, q } = setup({ size: 8 });
  const complete = () => {
    drv.addChain([{ writableLen: 1 }]);
    q.pushUsed(q.pop()!.head, 0);
  };
  complete();
  assert.ok(q.needsNotification());
  assert.not.ok(q.needsNotification(), 'nothing published since');
  drv.setAvailFlags(VIRTQ_AVAIL_F_NO_INTERRUPT);
  complete();
  assert.not.ok(q.needsNotification());
  drv.setAvailFlags(0);
  complete();
  assert.ok(q.needsNotification());

  q.disableNotifications();
  assert.is(drv.usedFlags(), VIRTQ_USED_F_NO_NOTIFY);
  assert.not.ok(q.enableNotifications());
  assert.is(drv.usedFlags(), 0);
  q.disableNotifications();
  drv.addChain([{ data: bytes(1) }]);
  assert.ok(q.enableNotifications(), 'buffers arrived while suppressed');
  assert.is(drv.usedFlags(), 0);
});

// ---- construction ----

test('construction validates size, alignment and ring placement', () => {
  const mem = GuestMemory.allocate(0x10000);
  const base: SplitQueueConfig = { size: 16, descTable: 0, availRing: 0x1000, usedRing: 0x2000, eventIdx: true, indirect: false };
  assert.ok(new SplitQueue(mem, base));
  assert.ok(new SplitQueue(GuestMemory.allocate(0x100000), { ...base, size: 32768, availRing: 0x80000, usedRing: 0x90000 }));
  for (const size of [0, 3, 24, 65536, 1.5, -16, NaN]) {
    assert.is(reasonOf(() => new SplitQueue(mem, { ...base, size })).reason, 'invalid queue size', `${size}`);
  }
  for (const bad of [{ descTable: 8 }, { availRing: 0x1001 }, { usedRing: 0x2002 }]) {
    assert.is(reasonOf(() => new SplitQueue(mem, { ...base, ...bad })).reason, 'misaligned ring', JSON.stringify(bad));
  }
  // the used ring fits exactly without EVENT_IDX; avail_event's 2 bytes push it out with EVENT_IDX
  const usedAtEnd = 0x10000 - usedRingBytes(16, false);
  assert.ok(new SplitQueue(mem, { ...base, usedRing: usedAtEnd, eventIdx: false }));
  assert.is(reasonOf(() => new SplitQueue(mem, { ...base, usedRing: usedAtEnd })).reason, 'ring out of memory');
  assert.is(reasonOf(() => new SplitQueue(mem, { ...base, descTable: 0x10000 })).reason, 'ring out of memory');
  assert.is(reasonOf(() => new SplitQueue(mem, { ...base, availRing: 2 ** 53 })).reason, 'ring out of memory');
  const lent = new GuestMemory([{ base: 0, size: 0x4000, bytes: new Uint8Array(0x4000), accessible: false }]);
  assert.is(reasonOf(() => new SplitQueue(lent, base)).reason, 'ring inaccessible');
});

test('a ring area lent away after construction is never touched again', () => {
  const regions: GuestRegion[] = [
    { base: 0, size: 0x10000, bytes: new Uint8Array(0x10000) },
    { base: 0x100000, size: 0x1000, bytes: new Uint8Array(0x1000) },
  ];
  const mem = new GuestMemory(regions);
  const { drv, q } = setup({ mem });
  drv.addChain([{ data: bytes(1) }]);
  mem.setAccessible(0x100000, false); // an unrelated region: still fine
  assert.ok(q.pop());
  mem.setAccessible(0, false);
  assert.is(reasonOf(() => q.pop()).reason, 'ring inaccessible');
  assert.is(reasonOf(() => q.pushUsed(0, 0)).reason, 'ring inaccessible');
  mem.setAccessible(0, true);
  q.pushUsed(0, 0);
  assert.is(drv.takeUsed().length, 1);
});

test('legacy layout puts the used ring on the next alignment boundary', () => {
  const l = legacyRingLayout(0x10000, 256);
  assert.equal(l, { descTable: 0x10000, availRing: 0x10000 + 4096, usedRing: 0x10000 + 8192 });
  assert.is(legacyRingBytes(256), 8192 + 6 + 8 * 256);
  const mem = GuestMemory.allocate(0x20000);
  const drv = new DriverQueue(mem, { size: 256, ...l });
  const q = new SplitQueue(mem, { size: 256, ...l, eventIdx: true, indirect: false });
  const h = drv.addChain([{ data: bytes(5) }]);
  q.pushUsed(q.pop()!.head, 0);
  assert.equal(drv.takeUsed().map((u) => u.id), [h]);
});

// ---- validation rules: every one raises VirtqueueError with its own reason ----

interface Bad {
  reason: VirtqueueFault;
  /** Build the invalid ring; return the head expected on the error (undefined = none). */
  build(d: DriverQueue, extra: { lent: number; rom: number; huge?: number }): number | undefined;
  indirect?: boolean;
}

/** Publish head `h` at the next avail slot (every bad case starts from an empty ring). */
const offer = (d: DriverQueue, h: number) => { d.offer(h); return h; };

const badChains: Bad[] = [
  { reason: 'head out of range', build: (d) => { d.offer(16); return undefined; } },
  { reason: 'next out of range', build: (d) => {
    d.writeDescriptor(2, { addr: d.alloc(4), len: 4, flags: NEXT, next: 16 });
    return offer(d, 2);
  } },
  { reason: 'chain too long', build: (d) => {
    const b = d.alloc(4);
    d.writeDescriptor(0, { addr: b, len: 4, flags: NEXT, next: 1 });
    d.writeDescriptor(1, { addr: b, len: 4, flags: NEXT, next: 0 });
    return offer(d, 1);
  } },
  { reason: 'readable after writable', build: (d) => {
    d.writeDescriptor(0, { addr: d.alloc(4), len: 4, flags: NEXT | WRITE, next: 1 });
    d.writeDescriptor(1, { addr: d.alloc(4), len: 4, flags: 0, next: 0 });
    return offer(d, 0);
  } },
  { reason: 'buffer out of memory', build: (d) => {
    d.writeDescriptor(0, { addr: 0x40000 - 4, len: 8, flags: 0, next: 0 }); // crosses the end of RAM
    return offer(d, 0);
  } },
  { reason: 'buffer inaccessible', build: (d, x) => {
    d.writeDescriptor(5, { addr: x.lent + 16, len: 8, flags: WRITE, next: 0 });
    return offer(d, 5);
  } },
  { reason: 'buffer read-only', build: (d, x) => {
    d.writeDescriptor(5, { addr: x.rom, len: 8, flags: WRITE, next: 0 });
    return offer(d, 5);
  } },
  { reason: 'indirect not negotiated', indirect: false, build: (d) => {
    d.writeDescriptor(0, { addr: d.alloc(16), len: 16, flags: INDIRECT, next: 0 });
    return offer(d, 0);
  } },
  { reason: 'nested indirect', build: (d) => {
    const t = d.alloc(16), t2 = d.alloc(16);
    d.writeDescriptorAt(t2, 0, { addr: d.alloc(4), len: 4, flags: 0, next: 0 });
    d.writeDescriptorAt(t, 0, { addr: t2, len: 16, flags: INDIRECT, next: 0 });
    d.writeDescriptor(0, { addr: t, len: 16, flags: INDIRECT, next: 0 });
    return offer(d, 0);
  } },
  { reason: 'indirect with next', build: (d) => {
    const t = d.alloc(16);
    d.writeDescriptorAt(t, 0, { addr: d.alloc(4), len: 4, flags: 0, next: 0 });
    d.writeDescriptor(0, { addr: t, len: 16, flags: INDIRECT | NEXT, next: 1 });
    d.writeDescriptor(1, { addr: d.alloc(4), len: 4, flags: 0, next: 0 });
    return offer(d, 0);
  } },
  { reason: 'indirect length invalid', build: (d) => {
    d.writeDescriptor(0, { addr: d.alloc(32), len: 24, flags: INDIRECT, next: 0 });
    return offer(d, 0);
  } },
  { reason: 'indirect table too large', build: (d) => {
    d.writeDescriptor(0, { addr: 0, len: 16 * 65537, flags: INDIRECT, next: 0 });
    return offer(d, 0);
  } },
  { reason: 'indirect table out of memory', build: (d) => {
    d.writeDescriptor(0, { addr: 2n ** 63n, len: 32, flags: INDIRECT, next: 0 });
    return offer(d, 0);
  } },
  { reason: 'indirect table inaccessible', build: (d, x) => {
    d.writeDescriptor(0, { addr: x.lent, len: 32, flags: INDIRECT, next: 0 });
    return offer(d, 0);
  } },
  { reason: 'indirect next out of range', build: (d) => {
    const t = d.alloc(32);
    d.writeDescriptorAt(t, 0, { addr: d.alloc(4), len: 4, flags: NEXT, next: 1 });
    d.writeDescriptorAt(t, 1, { addr: d.alloc(4), len: 4, flags: NEXT, next: 2 }); // table has 2 entries
    d.writeDescriptor(0, { addr: t, len: 32, flags: INDIRECT, next: 0 });
    return offer(d, 0);
  } },
  { reason: 'indirect chain too long', build: (d) => {
    const t = d.alloc(48);
    for (let i = 0; i < 3; i++) d.writeDescriptorAt(t, i, { addr: d.alloc(4), len: 4, flags: NEXT, next: (i + 1) % 3 });
    d.writeDescriptor(0, { addr: t, len: 48, flags: INDIRECT, next: 0 });
    return offer(d, 0);
  } },
  { reason: 'chain exceeds 4 GiB', build: (d, x) => {
    // two 2.5 GiB buffers over the same (lazily committed) region: each is inside memory
    d.writeDescriptor(0, { addr: x.huge!, len: 0xa000_0000, flags: NEXT, next: 1 });
    d.writeDescriptor(1, { addr: x.huge!, len: 0xa000_0000, flags: 0, next: 0 });
    return offer(d, 0);
  } },
];

function hostileMemory(withHuge: boolean) {
  const regions: GuestRegion[] = [
    { base: 0, size: 0x40000, bytes: new Uint8Array(new SharedArrayBuffer(0x40000)) },
    { base: 0x100000, size: 0x1000, bytes: new Uint8Array(0x1000), accessible: false },
    { base: 0x200000, size: 0x1000, bytes: new Uint8Array(0x1000), readOnly: true },
  ];
  if (withHuge) regions.push({ base: 0x1_0000_0000, size: 0xa000_0000, bytes: new Uint8Array(new SharedArrayBuffer(0xa000_0000)) });
  return { mem: new GuestMemory(regions), extra: { lent: 0x100000, rom: 0x200000, huge: withHuge ? 0x1_0000_0000 : undefined } };
}

test('every malformed chain raises its own reason, is consumed, and the queue carries on', () => {
  const seen = new Set<string>();
  for (const bad of badChains) {
    const { mem, extra } = hostileMemory(bad.reason === 'chain exceeds 4 GiB');
    const drv = new DriverQueue(mem, { size: 16 });
    const q = new SplitQueue(mem, drv.config({ eventIdx: true, indirect: bad.indirect ?? true }));
    const head = bad.build(drv, extra);
    const err = reasonOf(() => q.pop());
    assert.is(err.reason, bad.reason, err.message);
    assert.is(err.code, 'EINVAL');
    assert.is(err.head, head, `${bad.reason}: head on the error`);
    assert.is(q.nextAvail, 1, `${bad.reason}: consumed`);
    assert.is(drv.readAvailEvent(), 1, `${bad.reason}: avail_event follows`);
    seen.add(err.reason);
    // a valid chain behind it still works (the device may also reset instead)
    drv.writeDescriptor(15, { addr: drv.alloc(2), len: 2, flags: 0, next: 0 });
    drv.offer(15);
    assert.is(q.pop()!.head, 15);
  }
  assert.is(seen.size, badChains.length, 'reasons are distinct');
});

test('buffer addresses are checked 64-bit safely', () => {
  const cases: [bigint, number][] = [
    [2n ** 53n, 1], // hi word 0x200000: just past the safe range
    [2n ** 53n - 1n, 1], // the largest safe address, but not RAM
    [2n ** 64n - 8n, 16], // would wrap in 64-bit arithmetic
    [0x3fff0n, 0xffff_ffff], // len overflow past the end of RAM
    [0x0_0000_0001_0000_0000n + 0x10n, 4], // above 4 GiB (hi word 1): outside this RAM
  ];
  for (const [addr, len] of cases) {
    const { drv, q } = setup();
    drv.writeDescriptor(0, { addr, len, flags: WRITE, next: 0 });
    drv.offer(0);
    assert.is(reasonOf(() => q.pop()).reason, 'buffer out of memory', `${addr}+${len}`);
  }
  // and a buffer really above 4 GiB is found through the hi word
  const mem = new GuestMemory([
    { base: 0, size: 0x10000, bytes: new Uint8Array(0x10000) },
    { base: 0x1_0000_0000, size: 0x1000, bytes: new Uint8Array(0x1000) },
  ]);
  const { drv, q } = setup({ mem });
  drv.raw(0x1_0000_0010, 4).set([4, 3, 2, 1]);
  drv.writeDescriptor(0, { addr: 0x1_0000_0010n, len: 4, flags: 0, next: 0 });
  drv.offer(0);
  assert.is(q.pop()!.reader().u32(), 0x01020304);
});

test('an avail index that jumps past the queue size breaks the ring and consumes nothing', () => {
  const { drv, q } = setup({ size: 8 });
  drv.addChain([{ data: bytes(1) }]);
  q.pop();
  drv.setAvailIdx(1 + 9);
  assert.is(reasonOf(() => q.availableCount()).reason, 'avail index jump');
  assert.is(reasonOf(() => q.pop()).reason, 'avail index jump');
  assert.is(q.nextAvail, 1);
  drv.setAvailIdx(1 + 8); // exactly a full ring is legal
  assert.is(q.availableCount(), 8);
});

test('a chain as long as the queue is accepted, one longer is a loop', () => {
  const { drv, q } = setup({ size: 8 });
  const b = drv.alloc(8);
  for (let i = 0; i < 8; i++) drv.writeDescriptor(i, { addr: b + i, len: 1, flags: i < 7 ? NEXT : 0, next: i + 1 });
  drv.offer(0);
  assert.is(q.pop()!.readableBytes, 8);
  drv.writeDescriptor(7, { addr: b + 7, len: 1, flags: NEXT, next: 0 });
  drv.offer(0);
  assert.is(reasonOf(() => q.pop()).reason, 'chain too long');
});

// ---- buffers over touching regions (a large region mapped in pieces, or adjacent memslots) ----

/** Rings in [0, 0x10000); regions [0x10000, 0x11000) and [0x11000, 0x12000) touch; a gap; [0x20000, 0x21000). */
function touchingMemory(secondAccessible = true) {
  const regions: GuestRegion[] = [
    { base: 0, size: 0x10000, bytes: new Uint8Array(new SharedArrayBuffer(0x10000)) },
    { base: 0x10000, size: 0x1000, bytes: new Uint8Array(0x1000) },
    { base: 0x11000, size: 0x1000, bytes: new Uint8Array(0x1000), accessible: secondAccessible },
    { base: 0x20000, size: 0x1000, bytes: new Uint8Array(0x1000) },
  ];
  return { mem: new GuestMemory(regions), regions };
}

for (const indirect of [false, true]) {
  test(`${indirect ? 'indirect' : 'direct'}: a buffer over two touching regions becomes two views, contiguous to the device`, () => {
    const { mem, regions } = touchingMemory();
    const drv = new DriverQueue(mem, { size: 16, dataEnd: 0x10000 });
    const q = new SplitQueue(mem, drv.config({ indirect: true }));
    regions[1]!.bytes.set(seq(8, 1), 0x1000 - 8);
    regions[2]!.bytes.set(seq(8, 9), 0);
    const table = drv.alloc(32);
    const descs = [
      { addr: 0x10ff8, len: 16, flags: NEXT, next: 1 }, // readable, 8 bytes in each region
      { addr: 0x10ffc, len: 8, flags: WRITE, next: 0 }, // writable, 4 + 4
    ];
    if (indirect) {
      descs.forEach((d, i) => drv.writeDescriptorAt(table, i, d));
      drv.writeDescriptor(3, { addr: table, len: 32, flags: INDIRECT, next: 0 });
    } else {
      drv.writeDescriptor(3, { ...descs[0]!, next: 4 });
      drv.writeDescriptor(4, descs[1]!);
    }
    drv.offer(3);
    const chain = q.pop()!;
    assert.equal(chain.readable.map((v) => v.length), [8, 8]);
    assert.equal(chain.writable.map((v) => v.length), [4, 4]);
    assert.is(chain.readableBytes, 16);
    assert.is(chain.writableBytes, 8);
    assert.equal([...chain.reader().bytes(16)], [...seq(16, 1)]);
    chain.writer().u64(0x1122334455667788n);
    assert.equal([...regions[1]!.bytes.subarray(0xffc)], [0x88, 0x77, 0x66, 0x55]);
    assert.equal([...regions[2]!.bytes.subarray(0, 4)], [0x44, 0x33, 0x22, 0x11]);
  });
}

test('a buffer running from touching regions into a gap, or into a lent-away neighbour, is refused', () => {
  for (const [addr, len, lent, reason] of [
    [0x11ff0, 0x20, false, 'buffer out of memory'], // second region's end, then the gap
    [0x10ff0, 0x1020, false, 'buffer out of memory'], // both regions, then the gap
    [0x10ff0, 0x20, true, 'buffer inaccessible'], // the second region is lent away
  ] as const) {
    const { mem } = touchingMemory(!lent);
    const drv = new DriverQueue(mem, { size: 16, dataEnd: 0x10000 });
    const q = new SplitQueue(mem, drv.config());
    drv.writeDescriptor(2, { addr, len, flags: WRITE, next: 0 });
    drv.offer(2);
    const err = reasonOf(() => q.pop());
    assert.is(err.reason, reason, `${addr}+${len}`);
    assert.is(err.head, 2);
  }
});

// ---- descriptors per chain ----

/** One indirect chain of `direct` direct descriptors then an indirect table of `entries` 1-byte buffers. */
function longChain(direct: number, entries: number) {
  const mem = GuestMemory.allocate(0x200000);
  const drv = new DriverQueue(mem, { size: 64 });
  const q = new SplitQueue(mem, drv.config({ indirect: true }));
  const buf = drv.alloc(16);
  const table = drv.alloc(16 * entries);
  for (let i = 0; i < entries; i++) {
    drv.writeDescriptorAt(table, i, { addr: buf, len: 1, flags: WRITE | (i + 1 < entries ? NEXT : 0), next: i + 1 });
  }
  for (let i = 0; i < direct; i++) drv.writeDescriptor(i, { addr: buf, len: 1, flags: NEXT, next: i + 1 });
  drv.writeDescriptor(direct, { addr: table, len: 16 * entries, flags: INDIRECT, next: 0 });
  drv.offer(0);
  return q;
}

test('a chain holds at most 1024 buffers, direct and indirect together (QEMU VIRTQUEUE_MAX_SIZE)', () => {
  assert.is(MAX_CHAIN_DESCRIPTORS, 1024);
  assert.is(longChain(0, 1024).pop()!.writable.length, 1024, 'a full indirect table is accepted');
  const err = reasonOf(() => longChain(0, 1025).pop());
  assert.is(err.reason, 'chain too long');
  assert.is(err.head, 0);
  const mixed = longChain(2, 1022).pop()!;
  assert.equal([mixed.readable.length, mixed.writable.length], [2, 1022]);
  assert.is(reasonOf(() => longChain(3, 1022).pop()).reason, 'chain too long');
  // an indirect table of 65536 entries (1 MiB) is refused after 1024 buffers, not turned into 65536 views
  assert.is(reasonOf(() => longChain(0, 65536).pop()).reason, 'chain too long');
});

test.run();
