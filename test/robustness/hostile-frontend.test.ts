// Hostile vhost-user front-ends, beyond test/vhost-user/hostile.test.ts: memory tables with
// holes (buffers and indirect tables in the hole, buffers and rings running from a region
// into it), indirect loops and nesting behind a well-behaved front-end, fd abuse the other
// file does not try (more fds than regions, an fd with the no-fd flag, a pipe as the error
// fd, fds riding on a malformed header), a front-end that never reads its replies, one
// that hangs up or sends a bad memory table while block requests are in flight, and a
// burst of connections that hang up at once. Each time the back-end drops that connection (with a reason) only
// after the I/O that targets its memory settled, closes every fd it received, unmaps the
// memory, and serves the next front-end. A message sent one byte at a time is not hostile:
// it is served.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { firstValueFrom } from 'rxjs';
import { BlockDevice } from '../../devices/block.ts';
import { RngDevice } from '../../devices/rng.ts';
import { EventFd } from '../../framework/eventfd.ts';
import { setLogSink } from '../../framework/log.ts';
import { VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../framework/virtio/ring-layout.ts';
import * as libc from '../../native/libc.ts';
import { sendWithFds, unixConnect } from '../../native/unix-socket.ts';
import { VhostUserBackend } from '../../transports/vhost-user/backend.ts';
import {
  FLAG_NEED_REPLY, FLAG_VERSION, Request, VRING_NOFD, encodeMemoryTable, encodeMessage, encodeU64, encodeVringAddress,
  encodeVringState,
} from '../../transports/vhost-user/protocol.ts';
import { DriverQueue } from '../support/driver-queue.ts';
import { MemoryBlockFile } from '../support/fuzz-block-file.ts';
import { Prng } from '../support/prng.ts';
import { FrontendMemory, VhostUserFrontend, nextCall, openFdCount } from '../support/vhost-user-frontend.ts';

const MiB = 1 << 20;
const dir = mkdtempSync(join(tmpdir(), 'rxvirt-hostile-fe-'));
setLogSink(null); // quiet: reasons are checked through disconnected$

const rng = new VhostUserBackend(new RngDevice(), { socketPath: join(dir, 'rng.sock') });
rng.listen();
/** Block requests complete only when a test releases them (to hold I/O in flight). */
const heldFile = new MemoryBlockFile(256 * 512);
const blk = new VhostUserBackend(new BlockDevice(heldFile), { socketPath: join(dir, 'blk.sock') });
blk.listen();
const release = new Prng(7);

/** Guest memory mappings of test memfds in this process (front-end's own and the back-end's). */
function guestMappings(): number {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('rxvirt-test-guest')).length;
}

/** The next front-end on `on` negotiates, sets up a ring and gets a request served. */
async function servesNormally(on: VhostUserBackend): Promise<void> {
  const mem = FrontendMemory.create(MiB);
  const f = VhostUserFrontend.connect(on.socketPath);
  const gone = firstValueFrom(on.disconnected$);
  try {
    await f.negotiate();
    await f.setMemTable([mem]);
    const q = new DriverQueue(mem.guest, { size: 8 });
    const ring = await f.setupRing(0, q, mem);
    q.addChain(on === rng ? [{ writableLen: 8 }] : [{ data: blkHeader(0, 1) }, { writableLen: 512 }, { writableLen: 1 }]);
    q.setUsedEvent(0);
    const called = nextCall(ring.call);
    ring.kick.signal();
    const deadline = Date.now() + 5000;
    while (q.usedIdx() === 0 && Date.now() < deadline) {
      heldFile.releaseOne(release); // block I/O completes only when released
      await new Promise((r) => setImmediate(r));
    }
    await called;
    assert.equal(q.takeUsed().map((u) => u.len), [on === rng ? 8 : 513]);
  } finally {
    f.close();
    await gone;
    mem.close();
  }
}

function blkHeader(type: number, sector: number): Uint8Array {
  const h = new Uint8Array(16);
  const v = new DataView(h.buffer);
  v.setUint32(0, type, true);
  v.setBigUint64(8, BigInt(sector), true);
  return h;
}

async function until(done: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setImmediate(r));
  }
}

type Attack = (f: VhostUserFrontend, mem: FrontendMemory) => void | Promise<void>;

/** Run `attack` on a fresh connection: the back-end drops it with a reason matching `reason`, leaks nothing, serves the next. */
async function expectDropped(attack: Attack, reason: RegExp, options: { on?: VhostUserBackend; memory?: number } = {}): Promise<void> {
  const on = options.on ?? rng;
  const fds = openFdCount();
  const maps = guestMappings();
  const mem = FrontendMemory.create(options.memory ?? MiB);
  const f = VhostUserFrontend.connect(on.socketPath);
  const closed = firstValueFrom(on.disconnected$);
  try {
    await attack(f, mem);
    const close = await closed;
    assert.match(close.reason, reason);
    assert.ok(close.error, 'reported as an error');
    await f.closed();
  } finally {
    f.close();
    mem.close();
  }
  assert.is(guestMappings(), maps, 'no guest memory left mapped');
  assert.is(openFdCount(), fds, 'every fd the front-end sent was closed');
  await servesNormally(on);
}

/** Negotiated features, memory table `regions` (default: all of `mem`), ring 0 of `size` in the low MiB. */
async function ringOn(f: VhostUserFrontend, mem: FrontendMemory, regions = [mem.region()], size = 8) {
  await f.negotiate();
  await f.acked(Request.SET_MEM_TABLE, encodeMemoryTable(regions), regions.map(() => mem.fd));
  const q = new DriverQueue(mem.guest, { size, dataEnd: MiB });
  const ring = await f.setupRing(0, q, mem);
  return { q, ring };
}

/** A table with a hole: guest [0, 1M) and [3M, 4M) backed by file offsets 0 and 1M. */
const holed = (mem: FrontendMemory) => [mem.region(0, MiB), { ...mem.region(MiB, MiB), guestAddress: 3n * BigInt(MiB) }];

test.before(async () => {
  await servesNormally(rng);
  await servesNormally(blk);
}); // warm-up: lazily created runtime fds and threads are not leaks

// ---- memory tables with holes ----------------------------------------------------------------

test('a buffer in the hole of the memory table: DEVICE_NEEDS_RESET, connection dropped', () =>
  expectDropped(async (f, mem) => {
    const { q, ring } = await ringOn(f, mem, holed(mem));
    q.writeDescriptor(0, { addr: 2 * MiB, len: 64, flags: VIRTQ_DESC_F_WRITE, next: 0 });
    q.offer(0);
    ring.kick.signal();
  }, /device needs reset: .*buffer out of memory/, { memory: 2 * MiB }));

test('a buffer running from the lower region into the hole', () =>
  expectDropped(async (f, mem) => {
    const { q, ring } = await ringOn(f, mem, holed(mem));
    q.writeDescriptor(0, { addr: MiB - 16, len: 64, flags: VIRTQ_DESC_F_WRITE, next: 0 });
    q.offer(0);
    ring.kick.signal();
  }, /device needs reset: .*buffer out of memory/, { memory: 2 * MiB }));

test('an indirect table in the hole', () =>
  expectDropped(async (f, mem) => {
    const { q, ring } = await ringOn(f, mem, holed(mem));
    q.writeDescriptor(0, { addr: 2 * MiB, len: 32, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
    q.offer(0);
    ring.kick.signal();
  }, /device needs reset: .*indirect table out of memory/, { memory: 2 * MiB }));

test('a ring running from one region into the next (adjacent for the front-end, 2 MiB apart for the guest)', () =>
  expectDropped(async (f, mem) => {
    await f.negotiate();
    await f.acked(Request.SET_MEM_TABLE, encodeMemoryTable(holed(mem)), [mem.fd, mem.fd]);
    f.send(Request.SET_VRING_NUM, encodeVringState({ index: 0, num: 4 }));
    f.send(Request.SET_VRING_ADDR, encodeVringAddress({
      index: 0, flags: 0, desc: mem.user(MiB - 32), used: mem.user(0x1000), avail: mem.user(0x2000), log: 0n,
    }));
  }, /descriptor table .* is outside the memory table/, { memory: 2 * MiB }));

// ---- indirect tables behind a well-behaved front-end ------------------------------------------

test('an indirect table whose entries loop', () =>
  expectDropped(async (f, mem) => {
    const { q, ring } = await ringOn(f, mem);
    const table = q.alloc(32), buf = q.alloc(16);
    q.writeDescriptorAt(table, 0, { addr: buf, len: 16, flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, next: 1 });
    q.writeDescriptorAt(table, 1, { addr: buf, len: 16, flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, next: 0 });
    q.writeDescriptor(0, { addr: table, len: 32, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
    q.offer(0);
    ring.kick.signal();
  }, /device needs reset: .*indirect chain too long/));

test('an indirect descriptor inside an indirect table', () =>
  expectDropped(async (f, mem) => {
    const { q, ring } = await ringOn(f, mem);
    const outer = q.alloc(16), inner = q.alloc(16), buf = q.alloc(16);
    q.writeDescriptorAt(inner, 0, { addr: buf, len: 16, flags: VIRTQ_DESC_F_WRITE, next: 0 });
    q.writeDescriptorAt(outer, 0, { addr: inner, len: 16, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
    q.writeDescriptor(0, { addr: outer, len: 16, flags: VIRTQ_DESC_F_INDIRECT, next: 0 });
    q.offer(0);
    ring.kick.signal();
  }, /device needs reset: .*nested indirect/));

// ---- fds ------------------------------------------------------------------------------------

test('memory table: more fds than regions', () =>
  expectDropped(async (f, mem) => {
    await f.negotiate();
    f.send(Request.SET_MEM_TABLE, encodeMemoryTable([mem.region()]), { fds: [mem.fd, mem.fd, mem.fd] });
  }, /1 regions carries 3 fds/));

test('SET_VRING_KICK that says "no fd" but carries one', () =>
  expectDropped(async (f) => {
    const e = EventFd.create();
    f.send(Request.SET_VRING_KICK, VhostUserFrontend.noFd(0), { fds: [e.fd] });
    e.close();
  }, /SET_VRING_KICK ring 0: 1 fds \(expected 0\)/));

test('a pipe as the ring error fd', () =>
  expectDropped(async (f) => {
    const [r, w] = libc.pipe();
    f.send(Request.SET_VRING_ERR, encodeU64(0n), { fds: [w] });
    libc.close(r);
    libc.close(w);
  }, /SET_VRING_ERR ring 0: not an eventfd/));

test('fds riding on a malformed header are closed with the connection', () =>
  expectDropped(async (f) => {
    const a = EventFd.create(), b = EventFd.create();
    f.send(Request.SET_VRING_CALL, encodeU64(0n), { fds: [a.fd, b.fd], flags: 0x2 });
    a.close();
    b.close();
  }, /unsupported protocol version 2/));

// ---- behaviour over time ---------------------------------------------------------------------

test('a front-end that never reads its replies is dropped once its socket is full', async () => {
  const fds = openFdCount();
  const fd = unixConnect(rng.socketPath);
  libc.setNonBlocking(fd, true);
  const closed = firstValueFrom(rng.disconnected$);
  let dropped = false;
  void closed.then(() => { dropped = true; });
  const ask = encodeMessage(Request.GET_FEATURES, FLAG_VERSION);
  let sent = 0;
  try {
    for (let i = 0; i < 200_000 && !dropped; i++) {
      try {
        sendWithFds(fd, ask);
        sent++;
      } catch (err) {
        if ((err as { code?: string }).code === 'EAGAIN') await new Promise((r) => setImmediate(r));
        else break; // EPIPE/ECONNRESET: dropped
      }
    }
    const close = await closed;
    assert.match(close.reason, /reply to GET_FEATURES: /);
    assert.ok(sent > 100, `${sent} requests before the drop`);
  } finally {
    libc.close(fd);
  }
  assert.is(openFdCount(), fds);
  await servesNormally(rng);
});

test('a session sent one byte at a time (fds on the first byte) is served', async () => {
  const mem = FrontendMemory.create(MiB);
  const f = VhostUserFrontend.connect(rng.socketPath);
  const gone = firstValueFrom(rng.disconnected$);
  const dribble = async (request: number, payload: Uint8Array = new Uint8Array(0), fds: number[] = [], flags = FLAG_VERSION) => {
    const bytes = encodeMessage(request, flags, payload);
    for (let i = 0; i < bytes.length; i++) {
      f.sendRaw(bytes.subarray(i, i + 1), i === 0 ? fds : []);
      if (i % 4 === 0) await new Promise((r) => setImmediate(r));
    }
  };
  try {
    await dribble(Request.SET_OWNER);
    await dribble(Request.GET_FEATURES);
    const features = new DataView((await f.receive()).payload.buffer).getBigUint64(0, true);
    await dribble(Request.SET_FEATURES, encodeU64(features & ~(1n << 30n)));
    await dribble(Request.SET_MEM_TABLE, encodeMemoryTable([mem.region()]), [mem.fd]);
    const q = new DriverQueue(mem.guest, { size: 4 });
    const kick = f.eventFd(), call = f.eventFd();
    await dribble(Request.SET_VRING_NUM, encodeVringState({ index: 0, num: 4 }));
    await dribble(Request.SET_VRING_ADDR, encodeVringAddress({
      index: 0, flags: 0, desc: mem.user(q.descTable), used: mem.user(q.usedRing), avail: mem.user(q.availRing), log: 0n,
    }));
    await dribble(Request.SET_VRING_KICK, encodeU64(0n), [kick.fd]);
    await dribble(Request.SET_VRING_CALL, encodeU64(0n), [call.fd]);
    q.addChain([{ writableLen: 32 }]);
    q.setUsedEvent(0);
    const called = nextCall(call);
    kick.signal();
    await called;
    assert.equal(q.takeUsed().map((u) => u.len), [32]);
    assert.not.ok(f.isClosedByPeer);
  } finally {
    f.close();
    await gone;
    mem.close();
  }
});

test('hang-up with block requests in flight: guest memory stays mapped until the I/O settles, then all is released', async () => {
  const fds = openFdCount();
  const maps = guestMappings();
  const mem = FrontendMemory.create(MiB);
  const f = VhostUserFrontend.connect(blk.socketPath);
  let closed = false;
  const gone = firstValueFrom(blk.disconnected$).then((c) => { closed = true; return c; });
  const { q, ring } = await ringOn(f, mem, [mem.region()], 32);
  for (let i = 0; i < 6; i++) q.addChain([{ data: blkHeader(0, i * 8) }, { writableLen: 4096 }, { writableLen: 1 }]);
  ring.kick.signal();
  await until(() => heldFile.pending.length === 6, 'six reads in flight');
  f.close();
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
  assert.not.ok(closed, 'teardown waits for the requests that target guest memory');
  assert.is(guestMappings(), maps + 2, 'the back-end still maps the memory its I/O targets');
  await heldFile.releaseAll(release);
  const close = await gone;
  assert.not.ok(close.error, 'a hang-up is orderly');
  mem.close();
  assert.is(guestMappings(), maps);
  assert.is(openFdCount(), fds);
  await servesNormally(blk);
});

test('a bad SET_MEM_TABLE while block requests are in flight: dropped once the I/O settled, nothing leaked', async () => {
  const order: string[] = [];
  void firstValueFrom(blk.disconnected$).then(() => order.push('dropped'));
  await expectDropped(async (f, mem) => {
    const { q, ring } = await ringOn(f, mem, [mem.region()], 16);
    for (let i = 0; i < 4; i++) q.addChain([{ data: blkHeader(1, i * 8) }, { data: new Uint8Array(4096).fill(i) }, { writableLen: 1 }]);
    ring.kick.signal();
    await until(() => heldFile.pending.length === 4, 'four writes in flight');
    f.send(Request.SET_MEM_TABLE, encodeMemoryTable([{ ...mem.region(), size: 0n }]), { fds: [mem.fd], flags: FLAG_VERSION | FLAG_NEED_REPLY });
    setTimeout(() => {
      order.push('released');
      void heldFile.releaseAll(release);
    }, 20);
  }, /memory region 0 has size 0/, { on: blk });
  assert.equal(order, ['released', 'dropped'], 'the connection was torn down only after its in-flight writes completed');
});

test('a storm of connections that hang up at once; the next front-end is served', async () => {
  const fds = openFdCount();
  const sockets = Array.from({ length: 12 }, () => unixConnect(rng.socketPath)); // within the listen backlog
  for (const s of sockets) libc.close(s);
  for (let i = 0; i < 50; i++) await new Promise((r) => setImmediate(r));
  await servesNormally(rng);
  assert.is(openFdCount(), fds);
});

test.after(async () => {
  await rng.close();
  await blk.close();
  rmSync(dir, { recursive: true, force: true });
});

test.run();
