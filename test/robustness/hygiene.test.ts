// Resource hygiene: 100 whole vhost-user back-end lifecycles (listen, serve a front-end doing
// rng and block I/O on a real image, hang up, close) and 100 in-process device lifecycles
// (virtio-mmio transport, eventfd doorbell, eventfd queue kicks, block/console/rng devices
// with real files, driven to DRIVER_OK, used, reset, closed) leave nothing behind: the same
// open fds, the same threads, the same libuv handles, no guest-memory mapping, and no
// growth of /proc/self/maps that scales with the cycles (V8 may map a page or two for its
// heap; a leak of one mapping per cycle would show 100).

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { firstValueFrom, type Subscription } from 'rxjs';
import { BlockDevice } from '../../devices/block.ts';
import { ConsoleDevice } from '../../devices/console.ts';
import { RngDevice } from '../../devices/rng.ts';
import { EventFdDoorbell } from '../../framework/doorbell.ts';
import { EventFd, fromEventFd } from '../../framework/eventfd.ts';
import { GuestMemory } from '../../framework/guest-memory.ts';
import { appendFileStream } from '../../framework/io/byte-stream.ts';
import { MmioBus } from '../../framework/mmio-bus.ts';
import type { VirtioDevice } from '../../framework/virtio/device.ts';
import { VirtioMmioTransport } from '../../transports/virtio-mmio/mmio-transport.ts';
import { VhostUserBackend } from '../../transports/vhost-user/backend.ts';
import { DriverQueue } from '../support/driver-queue.ts';
import { MmioDriver } from '../support/mmio-driver.ts';
import { FrontendMemory, VhostUserFrontend } from '../support/vhost-user-frontend.ts';

const CYCLES = 100;
const dir = mkdtempSync(join(tmpdir(), 'rxvirt-hygiene-'));
const image = join(dir, 'disk.img');
writeFileSync(image, new Uint8Array(256 * 512));

interface Snapshot {
  fds: number;
  threads: number;
  maps: number;
  guestMaps: number;
  handles: string;
}

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

/** After a full garbage collection (SharedArrayBuffers and V8 pages of dead objects are gone). */
function snapshot(): Snapshot {
  gc();
  const maps = readFileSync('/proc/self/maps', 'utf8').trimEnd().split('\n');
  const handles = process.getActiveResourcesInfo().filter((r) => r !== 'TTYWrap' && r !== 'Timeout' && r !== 'Immediate').sort();
  return {
    fds: readdirSync('/proc/self/fd').length,
    threads: readdirSync('/proc/self/task').length,
    maps: maps.length,
    guestMaps: maps.filter((l) => l.includes('rxvirt-test-guest')).length,
    handles: handles.join(','),
  };
}

function assertNothingLeft(before: Snapshot, after: Snapshot, what: string): void {
  assert.is(after.fds, before.fds, `${what}: open fds`);
  assert.is(after.threads, before.threads, `${what}: threads`);
  assert.is(after.guestMaps, before.guestMaps, `${what}: guest memory mappings`);
  assert.is(after.handles, before.handles, `${what}: libuv handles and requests`);
  console.log(`${what}: fds ${before.fds}->${after.fds}, threads ${before.threads}->${after.threads}, maps ${before.maps}->${after.maps}, guest maps ${before.guestMaps}->${after.guestMaps}`);
}

/**
 * /proc/self/maps: V8 maps heap and code pages of its own (more under load, when GC timing
 * shifts), a one-off step; a leak grows with every batch of cycles. So a growth over the bound
 * is judged by one more batch, which must stay within it.
 */
async function assertMapsSteady(before: Snapshot, after: Snapshot, what: string, batch: () => Promise<void>): Promise<void> {
  const bound = CYCLES / 10;
  if (after.maps - before.maps < bound) return;
  await batch();
  const again = snapshot();
  assert.ok(again.maps - after.maps < bound,
    `${what}: /proc/self/maps grew by ${after.maps - before.maps} lines over ${CYCLES} cycles and by ${again.maps - after.maps} over ${CYCLES} more`);
}

/** Lets callbacks run, then waits (bounded) for fs requests still in libuv's pool to finish. */
const settle = async (rounds = 5) => {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setImmediate(r));
  const busy = () => process.getActiveResourcesInfo().some((r) => r.startsWith('FSReq'));
  for (let waited = 0; busy() && waited < 2000; waited += 5) await new Promise((r) => setTimeout(r, 5));
};

async function until(done: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within 5 s`);
    await new Promise((r) => setImmediate(r));
  }
}

function blkHeader(type: number, sector: number): Uint8Array {
  const h = new Uint8Array(16);
  const v = new DataView(h.buffer);
  v.setUint32(0, type, true);
  v.setBigUint64(8, BigInt(sector), true);
  return h;
}

// ---- vhost-user --------------------------------------------------------------------------------

/** One back-end from listen() to close(), with one front-end session of real I/O. */
async function backendLifecycle(i: number): Promise<void> {
  const blk = i % 2 === 0;
  const device = blk ? BlockDevice.open(image) : new RngDevice();
  const backend = new VhostUserBackend(device, { socketPath: join(dir, `s${i % 3}.sock`) });
  backend.listen();
  const mem = FrontendMemory.create(1 << 20);
  const f = VhostUserFrontend.connect(backend.socketPath);
  try {
    await f.negotiate();
    await f.setMemTable([mem]);
    const q = new DriverQueue(mem.guest, { size: 8 });
    const ring = await f.setupRing(0, q, mem);
    if (blk) {
      q.addChain([{ data: blkHeader(1, i % 200) }, { data: new Uint8Array(512).fill(i) }, { writableLen: 1 }]);
      q.addChain([{ data: blkHeader(0, i % 200) }, { writableLen: 512 }, { writableLen: 1 }]);
      q.addChain([{ data: blkHeader(4, 0) }, { writableLen: 1 }]);
    } else {
      q.addChain([{ writableLen: 64 }]);
    }
    const want = blk ? 3 : 1;
    ring.kick.signal();
    let done = 0;
    await until(() => (done += q.takeUsed().length) >= want, `cycle ${i}: I/O`);
    if (i % 4 === 1) {
      // Half the time the back-end, not the front-end, ends it.
      await backend.close();
    } else {
      const gone = firstValueFrom(backend.disconnected$);
      f.close();
      await gone;
      await backend.close();
    }
  } finally {
    f.close();
    mem.close();
    if (blk) (device as BlockDevice).close();
  }
}

test(`${CYCLES} vhost-user back-end lifecycles leave no fd, thread, handle or mapping behind`, async () => {
  for (let i = 0; i < 6; i++) await backendLifecycle(i); // warm-up: the thread pool and lazily created fds
  await settle();
  const before = snapshot();
  for (let i = 0; i < CYCLES; i++) await backendLifecycle(i);
  await settle();
  const after = snapshot();
  assertNothingLeft(before, after, 'vhost-user');
  await assertMapsSteady(before, after, 'vhost-user', async () => {
    for (let i = 0; i < CYCLES; i++) await backendLifecycle(i);
    await settle();
  });
  assert.equal(readdirSync(dir).filter((n) => n.endsWith('.sock')), [], 'every socket file removed');
});

// ---- in-process devices over virtio-mmio ------------------------------------------------------

/** One device from construction to close: eventfd doorbell, eventfd kicks, DRIVER_OK, I/O, reset. */
async function deviceLifecycle(i: number): Promise<void> {
  const kind = i % 3;
  const consoleOut = join(dir, 'console.txt');
  const device: VirtioDevice = kind === 0 ? BlockDevice.open(image) : kind === 1 ? new ConsoleDevice(appendFileStream(consoleOut)) : new RngDevice();
  const mem = GuestMemory.allocate(1 << 20);
  const irq = EventFd.create();
  const doorbell = new EventFdDoorbell(irq);
  const bus = new MmioBus();
  const transport = new VirtioMmioTransport(device, { base: 0xd000_0000, irq: 5, memory: () => mem, doorbell });
  bus.register(0xd000_0000, transport.size, transport);
  // Queue notifications arrive on eventfds, as ioeventfds would deliver them.
  const kicks = transport.notifyRegistrations().map(() => EventFd.create());
  const subs: Subscription[] = kicks.map((k, q) => fromEventFd(k).subscribe(() => transport.notify(q)));
  const interrupts = fromEventFd(irq).subscribe();
  try {
    const driver = new MmioDriver(bus, 0xd000_0000, mem);
    await driver.init({ queueArea: 256 * 1024 });
    const q = driver.queues[kind === 1 ? 1 : 0]!;
    if (kind === 0) q.addChain([{ data: blkHeader(0, i % 200) }, { writableLen: 512 }, { writableLen: 1 }]);
    else if (kind === 1) q.addChain([{ data: new TextEncoder().encode(`cycle ${i}\n`) }]);
    else q.addChain([{ writableLen: 32 }]);
    kicks[kind === 1 ? 1 : 0]!.signal();
    await until(() => q.takeUsed().length === 1, `device cycle ${i}`);
    await driver.reset();
  } finally {
    for (const s of subs) s.unsubscribe();
    interrupts.unsubscribe();
    for (const k of kicks) k.close();
    doorbell.close();
    irq.close();
    if (device instanceof BlockDevice || device instanceof ConsoleDevice) device.close();
  }
}

test(`${CYCLES} in-process device/transport lifecycles (blk, console, rng) leave nothing behind`, async () => {
  for (let i = 0; i < 6; i++) await deviceLifecycle(i);
  await settle(20);
  const before = snapshot();
  for (let i = 0; i < CYCLES; i++) await deviceLifecycle(i);
  await settle(20);
  const after = snapshot();
  assertNothingLeft(before, after, 'devices');
  await assertMapsSteady(before, after, 'devices', async () => {
    for (let i = 0; i < CYCLES; i++) await deviceLifecycle(i);
    await settle(20);
  });
  const lines = readFileSync(join(dir, 'console.txt'), 'utf8').split('\n').filter(Boolean);
  assert.ok(lines.length >= Math.floor(CYCLES / 3), `console output of every console cycle reached its file (${lines.length})`);
});

test.after(() => rmSync(dir, { recursive: true, force: true }));

test.run();
