// Hostile front-ends: every malformed message closes that connection with one logged
// reason, the fds it sent are closed, and the next connection is served normally.

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EMPTY, firstValueFrom } from 'rxjs';
import { ConsoleDevice } from '../../devices/console.ts';
import { RngDevice } from '../../devices/rng.ts';
import { EventFd } from '../../framework/eventfd.ts';
import { setLogSink } from '../../framework/log.ts';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../framework/virtio/ring-layout.ts';
import { VhostUserBackend } from '../../transports/vhost-user/backend.ts';
import {
  FLAG_NEED_REPLY, FLAG_REPLY, FLAG_VERSION, type MemoryRegionDescription, Request, encodeHeader, encodeMemoryTable,
  encodeU64, encodeVringAddress, encodeVringState,
} from '../../transports/vhost-user/protocol.ts';
import { DriverQueue } from '../support/driver-queue.ts';
import { FrontendMemory, VhostUserFrontend, nextCall, openFdCount } from '../support/vhost-user-frontend.ts';

const dir = mkdtempSync(join(tmpdir(), 'rxvirt-vu-hostile-'));
const warnings: string[] = [];
setLogSink((level, _scope, message) => {
  if (level === 'warn') warnings.push(message);
});

const backend = new VhostUserBackend(new RngDevice(), { socketPath: join(dir, 'hostile.sock') });
backend.listen();
/** A device with a config space, for GET/SET_CONFIG attacks. */
const withConfig = new VhostUserBackend(new ConsoleDevice({ input$: EMPTY, output: () => {}, close: () => {} }),
  { socketPath: join(dir, 'config.sock') });
withConfig.listen();

type Attack = (f: VhostUserFrontend, mem: FrontendMemory) => void | Promise<void>;

/** Run `attack` on a fresh connection; expect the back-end to hang up with a reason matching `reason`. */
async function expectRejected(attack: Attack, reason: RegExp, on = backend): Promise<void> {
  const fdsBefore = openFdCount();
  warnings.length = 0;
  const mem = FrontendMemory.create(1 << 20);
  const f = VhostUserFrontend.connect(on.socketPath);
  const closed = firstValueFrom(on.disconnected$);
  try {
    await attack(f, mem);
    const close = await closed;
    assert.match(close.reason, reason);
    assert.ok(close.error, 'reported as an error');
    if (f.isOpen) await f.closed(); // the back-end hung up
    assert.is(warnings.length, 1, `one logged reason, got: ${JSON.stringify(warnings)}`);
    assert.ok(warnings[0]!.includes(close.reason) || close.reason.includes('device needs reset'));
  } finally {
    f.close();
    mem.close();
    await servesNormally(on);
    assert.is(openFdCount(), fdsBefore, 'every fd the hostile front-end sent was closed');
  }
}

/** The next connection negotiates and gets rng bytes (or, on the config back-end, its config). */
async function servesNormally(on = backend): Promise<void> {
  const mem = FrontendMemory.create(1 << 20);
  const f = VhostUserFrontend.connect(on.socketPath);
  const gone = firstValueFrom(on.disconnected$);
  try {
    if (on !== backend) {
      await f.negotiate();
      assert.equal(await f.getConfig(0, 4), new Uint8Array([80, 0, 25, 0]), 'console cols/rows');
      return;
    }
    await f.negotiate();
    await f.setMemTable([mem]);
    const q = new DriverQueue(mem.guest, { size: 4 });
    const ring = await f.setupRing(0, q, mem);
    q.addChain([{ writableLen: 8 }]);
    const called = nextCall(ring.call);
    ring.kick.signal();
    await called;
    assert.equal(q.takeUsed().map((u) => u.len), [8]);
  } finally {
    f.close();
    await gone;
    mem.close();
  }
}

function header(request: number, flags: number, size: number): Uint8Array {
  const h = new Uint8Array(12);
  encodeHeader(h, { request, flags, size });
  return h;
}

async function ringReady(f: VhostUserFrontend, mem: FrontendMemory, size = 4) {
  await f.negotiate();
  await f.setMemTable([mem]);
  const q = new DriverQueue(mem.guest, { size });
  const ring = await f.setupRing(0, q, mem);
  return { q, ring };
}

// ---- framing and headers -------------------------------------------------------------------

test.before(async () => {
  await servesNormally();
  await servesNormally(withConfig);
}); // warm-up: lazily created runtime fds do not count as leaks

test('wrong payload size for a fixed-size request', () =>
  expectRejected((f) => f.send(Request.SET_FEATURES, new Uint8Array(4)), /SET_FEATURES with 4 payload bytes \(expected 8\)/));

test('unknown request', () => expectRejected((f) => f.send(99), /unknown or unsupported request 99/));

test('unsupported request (dirty log) is refused, not ignored', () =>
  expectRejected((f) => f.send(Request.SET_LOG_BASE, new Uint8Array(16)), /unsupported request 6/));

test('bad protocol version in the flags', () =>
  expectRejected((f) => f.send(Request.GET_FEATURES, undefined, { flags: 0x2 }), /unsupported protocol version 2/));

test('a request that carries the reply flag', () =>
  expectRejected((f) => f.send(Request.GET_FEATURES, undefined, { flags: FLAG_VERSION | FLAG_REPLY }), /reply flag/));

test('unknown flag bits', () =>
  expectRejected((f) => f.send(Request.GET_FEATURES, undefined, { flags: FLAG_VERSION | 0x100 }), /unknown flag bits 0x100/));

test('payload size far beyond any valid message', () =>
  expectRejected((f) => f.sendRaw(header(Request.SET_MEM_TABLE, FLAG_VERSION, 1 << 20)), /payload of 1048576 bytes/));

test('truncated message: the front-end hangs up in the middle of a payload', () =>
  expectRejected((f) => {
    f.sendRaw(new Uint8Array([...header(Request.SET_FEATURES, FLAG_VERSION, 8), 1, 2, 3]));
    f.close(); // half a message, then gone
  }, /truncated message: connection closed after 3 of 8 payload bytes of SET_FEATURES/));

test('truncated message: the front-end hangs up in the middle of a header', () =>
  expectRejected((f) => {
    f.sendRaw(header(Request.GET_FEATURES, FLAG_VERSION, 0).subarray(0, 5));
    f.close();
  }, /after 5 of 12 header bytes/));

// ---- fds ------------------------------------------------------------------------------------

test('an fd on a request that takes none', () =>
  expectRejected((f) => {
    const e = EventFd.create();
    f.send(Request.SET_FEATURES, encodeU64(0n), { fds: [e.fd] });
    e.close();
  }, /SET_FEATURES carries 1 unexpected fds/));

test('SET_VRING_KICK without its fd', () =>
  expectRejected(async (f) => {
    await f.negotiate();
    f.send(Request.SET_VRING_KICK, encodeU64(0n));
  }, /SET_VRING_KICK ring 0: 0 fds \(expected 1\)/));

test('SET_VRING_CALL with two fds', () =>
  expectRejected(async (f) => {
    const a = EventFd.create(), b = EventFd.create();
    f.send(Request.SET_VRING_CALL, encodeU64(0n), { fds: [a.fd, b.fd] });
    a.close();
    b.close();
  }, /SET_VRING_CALL ring 0: 2 fds \(expected 1\)/));

test('a kick fd that is not an eventfd', () =>
  expectRejected((f, mem) => f.send(Request.SET_VRING_KICK, encodeU64(0n), { fds: [mem.fd] }), /not an eventfd/));

test('more fds than any message may carry', () =>
  expectRejected((f) => {
    const many = Array.from({ length: 12 }, () => EventFd.create());
    f.send(Request.SET_VRING_CALL, encodeU64(0n), { fds: many.map((e) => e.fd) });
    for (const e of many) e.close();
  }, /more than 8 fds/));

test('SET_VRING_KICK with reserved bits set', () =>
  expectRejected((f) => {
    const e = EventFd.create();
    f.send(Request.SET_VRING_KICK, encodeU64(0x200n), { fds: [e.fd] });
    e.close();
  }, /reserved bits/));

// ---- memory tables ---------------------------------------------------------------------------

const table = (f: VhostUserFrontend, regions: MemoryRegionDescription[], fds: number[]) =>
  f.send(Request.SET_MEM_TABLE, encodeMemoryTable(regions), { fds, flags: FLAG_VERSION | FLAG_NEED_REPLY });

test('memory table: regions overlapping in guest-physical space', () =>
  expectRejected((f, mem) => {
    const a = mem.region(0, 1 << 19);
    const b = { ...mem.region(1 << 19, 1 << 19), guestAddress: 1n << 18n };
    table(f, [a, b], [mem.fd, mem.fd]);
  }, /regions 0 and 1 overlap in guest-physical space/));

test('memory table: regions overlapping in front-end address space', () =>
  expectRejected((f, mem) => {
    const a = mem.region(0, 1 << 19);
    const b = { ...mem.region(0, 1 << 19), guestAddress: 1n << 30n };
    table(f, [a, b], [mem.fd, mem.fd]);
  }, /overlap in front-end address space/));

test('memory table: guest range past 2^53', () =>
  expectRejected((f, mem) => table(f, [{ ...mem.region(), guestAddress: (1n << 53n) - 4096n }], [mem.fd]), /ends past 2\^53/));

test('memory table: user address range wraps around 2^64', () =>
  expectRejected((f, mem) => table(f, [{ ...mem.region(), userAddress: (1n << 64n) - 4096n }], [mem.fd]), /wraps around/));

test('memory table: region larger than its file (would SIGBUS on access)', () =>
  expectRejected((f, mem) => table(f, [{ ...mem.region(), size: 4n << 20n }], [mem.fd]), /of a file of 0x100000 bytes/));

test('memory table: mmap offset past the end of the file', () =>
  expectRejected((f, mem) => table(f, [{ ...mem.region(0, 4096), mmapOffset: 1n << 40n }], [mem.fd]), /of a file of/));

test('memory table: zero-size region', () =>
  expectRejected((f, mem) => table(f, [{ ...mem.region(), size: 0n }], [mem.fd]), /size 0/));

test('memory table: fewer fds than regions', () =>
  expectRejected((f, mem) => table(f, [mem.region(0, 1 << 19), { ...mem.region(1 << 19, 1 << 19) }], [mem.fd]),
    /2 regions carries 1 fds/));

test('memory table: region count beyond 8', () =>
  expectRejected((f, mem) => {
    const payload = encodeMemoryTable([mem.region()]);
    new DataView(payload.buffer).setUint32(0, 9, true);
    f.send(Request.SET_MEM_TABLE, payload, { fds: [mem.fd] });
  }, /9 regions \(expected 1\.\.8\)/));

test('memory table: payload shorter than its region count says', () =>
  expectRejected((f, mem) => {
    const payload = encodeMemoryTable([mem.region(), mem.region()]).subarray(0, 8 + 32);
    f.send(Request.SET_MEM_TABLE, payload, { fds: [mem.fd] });
  }, /2 regions has 40 payload bytes \(expected 72\)/));

test('memory table: an fd that is not memory', () =>
  expectRejected((f, mem) => {
    const e = EventFd.create();
    table(f, [mem.region()], [e.fd]);
    e.close();
  }, /not a regular file/));

// ---- rings -----------------------------------------------------------------------------------

test('ring addresses outside the memory table', () =>
  expectRejected(async (f, mem) => {
    await f.negotiate();
    await f.setMemTable([mem]);
    f.send(Request.SET_VRING_NUM, encodeVringState({ index: 0, num: 4 }));
    f.send(Request.SET_VRING_ADDR, encodeVringAddress({
      index: 0, flags: 0, desc: mem.user(0), used: mem.user(0x1000), avail: mem.userAddress + (1n << 21n), log: 0n,
    }));
  }, /ring 0 available ring 0x[0-9a-f]+\+\d+ is outside the memory table/));

test('ring area straddling the end of the memory table', () =>
  expectRejected(async (f, mem) => {
    await f.negotiate();
    await f.setMemTable([mem]);
    f.send(Request.SET_VRING_NUM, encodeVringState({ index: 0, num: 4 }));
    f.send(Request.SET_VRING_ADDR, encodeVringAddress({
      index: 0, flags: 0, desc: mem.user((1 << 20) - 32), used: mem.user(0x1000), avail: mem.user(0x2000), log: 0n,
    }));
  }, /descriptor table .* is outside the memory table/));

test('ring addresses set first, then a memory table that does not contain them', () =>
  expectRejected(async (f, mem) => {
    await f.negotiate();
    f.send(Request.SET_VRING_ADDR, encodeVringAddress({
      index: 0, flags: 0, desc: mem.user(0) + (8n << 20n), used: mem.user(0x1000), avail: mem.user(0x2000), log: 0n,
    }));
    table(f, [mem.region()], [mem.fd]);
  }, /outside the memory table/));

test('ring index beyond the device queues', () =>
  expectRejected((f) => f.send(Request.SET_VRING_NUM, encodeVringState({ index: 5, num: 4 })), /ring 5 does not exist/));

test('ring size that is not a power of two', () =>
  expectRejected((f) => f.send(Request.SET_VRING_NUM, encodeVringState({ index: 0, num: 6 })), /size 6 is not a power of two/));

test('ring size above the back-end maximum (1024 by default)', () =>
  expectRejected((f) => f.send(Request.SET_VRING_NUM, encodeVringState({ index: 0, num: 2048 })), /in 1\.\.1024/));

test('SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES', () =>
  expectRejected((f) => f.send(Request.SET_VRING_ENABLE, encodeVringState({ index: 0, num: 1 })),
    /without VHOST_USER_F_PROTOCOL_FEATURES/));

test('SET_FEATURES naming a feature not offered', () =>
  expectRejected((f) => f.send(Request.SET_FEATURES, encodeU64(1n << 55n)), /names features not offered/));

test('SET_PROTOCOL_FEATURES naming a protocol feature not offered', () =>
  expectRejected((f) => f.send(Request.SET_PROTOCOL_FEATURES, encodeU64(1n << 14n)), /names features not offered/));

test('SET_VRING_NUM while the ring runs', () =>
  expectRejected(async (f, mem) => {
    await ringReady(f, mem);
    f.send(Request.SET_VRING_NUM, encodeVringState({ index: 0, num: 2 }));
  }, /SET_VRING_NUM: ring 0 is running/));

test('GET_CONFIG without VHOST_USER_PROTOCOL_F_CONFIG (rng has no config space)', () =>
  expectRejected(async (f) => {
    await f.negotiate();
    f.send(Request.GET_CONFIG, new Uint8Array(12 + 4));
  }, /GET_CONFIG without VHOST_USER_PROTOCOL_F_CONFIG/));

test('GET_CONFIG larger than the protocol allows', () =>
  expectRejected(async (f) => {
    await f.negotiate();
    const p = new Uint8Array(12 + 300);
    new DataView(p.buffer).setUint32(4, 300, true);
    f.send(Request.GET_CONFIG, p);
  }, /GET_CONFIG of 300 bytes/, withConfig));

test('GET_CONFIG whose size field disagrees with its payload', () =>
  expectRejected(async (f) => {
    await f.negotiate();
    const p = new Uint8Array(12 + 8);
    new DataView(p.buffer).setUint32(4, 12, true);
    f.send(Request.GET_CONFIG, p);
  }, /GET_CONFIG says 12 bytes but carries 8/, withConfig));

// ---- a hostile guest behind a well-behaved front-end ----------------------------------------

test('descriptor loop: DEVICE_NEEDS_RESET, the err fd fires, the connection closes without a crash', () =>
  expectRejected(async (f, mem) => {
    const { q, ring } = await ringReady(f, mem);
    const err = f.eventFd();
    f.send(Request.SET_VRING_ERR, encodeU64(0n), { fds: [err.fd] });
    const buf = q.alloc(16);
    q.writeDescriptor(0, { addr: buf, len: 16, flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, next: 1 });
    q.writeDescriptor(1, { addr: buf, len: 16, flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, next: 0 });
    q.offer(0);
    const errFired = nextCall(err);
    ring.kick.signal();
    await errFired;
  }, /device needs reset: .*requestq/));

test('buffer address outside guest memory: DEVICE_NEEDS_RESET and a closed connection', () =>
  expectRejected(async (f, mem) => {
    const { q, ring } = await ringReady(f, mem);
    q.writeDescriptor(0, { addr: 1 << 30, len: 64, flags: VIRTQ_DESC_F_WRITE, next: 0 });
    q.offer(0);
    ring.kick.signal();
  }, /device needs reset/));

test.after(async () => {
  await backend.close();
  await withConfig.close();
  setLogSink(null);
  rmSync(dir, { recursive: true, force: true });
});

test.run();
