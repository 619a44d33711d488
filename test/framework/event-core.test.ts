// Event core: eventfds as observables (ioeventfd side), doorbells (irqfd side), the MMIO bus.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { firstValueFrom, take, toArray } from 'rxjs';
import { EventFdDoorbell } from '../../framework/doorbell.ts';
import { EventFd, fromEventFd } from '../../framework/eventfd.ts';
import { GuestMemory } from '../../framework/guest-memory.ts';
import { MmioBus } from '../../framework/mmio-bus.ts';
import { VirtioMmioTransport } from '../../transports/virtio-mmio/mmio-transport.ts';
import { RngDevice } from '../../devices/rng.ts';
import { MmioDriver, settle } from '../support/mmio-driver.ts';

test('fromEventFd emits the counter on each signal and stops watching on unsubscribe', async () => {
  const efd = EventFd.create();
  const seen: bigint[] = [];
  const sub = fromEventFd(efd).subscribe((v) => seen.push(v));
  efd.signal(3n);
  await settle(5);
  efd.signal();
  efd.signal();
  await settle(5);
  assert.equal(seen, [3n, 2n], 'signals between two loop turns coalesce into one counter read');
  sub.unsubscribe();
  efd.signal();
  await settle(5);
  assert.equal(seen, [3n, 2n], 'no emission after unsubscribe');
  assert.is(efd.read(), 1n, 'the unwatched signal is still in the counter');
  efd.close();
});

test('EventFd.events() is shared: two subscribers, one watch', async () => {
  const efd = EventFd.create();
  const a = firstValueFrom(efd.events());
  const b = firstValueFrom(efd.events());
  efd.signal();
  assert.equal(await Promise.all([a, b]), [1n, 1n]);
  efd.close();
});

test('a queue notification through an ioeventfd-style eventfd reaches the device without an MMIO access', async () => {
  const mem = GuestMemory.allocate(4 << 20);
  const bus = new MmioBus();
  const irqfd = EventFd.create();
  const doorbell = new EventFdDoorbell(irqfd, 'edge');
  const transport = new VirtioMmioTransport(new RngDevice(), { base: 0xd0000000, irq: 5, memory: () => mem, doorbell });
  bus.register(transport.base, transport.size, transport);
  const driver = new MmioDriver(bus, transport.base, mem);
  await driver.init();
  const kicks = transport.notifyRegistrations().map((r) => {
    const efd = EventFd.create();
    const sub = efd.events().subscribe(() => transport.notify(r.queueIndex));
    return { efd, sub };
  });
  const interrupt = firstValueFrom(irqfd.events());
  const q = driver.queues[0]!;
  q.addChain([{ writableLen: 64 }]);
  const accessesBefore = bus.unclaimed + transport.badAccesses;
  kicks[0]!.efd.signal(); // what KVM does when the guest writes QueueNotify with a matching ioeventfd
  assert.is(await interrupt, 1n, 'the irqfd was signalled');
  const used = q.takeUsed();
  assert.is(used.length, 1);
  assert.is(used[0]!.len, 64);
  assert.ok(used[0]!.written.some((b) => b !== 0), 'random bytes arrived');
  assert.is(bus.unclaimed + transport.badAccesses, accessesBefore);
  for (const k of kicks) { k.sub.unsubscribe(); k.efd.close(); }
  doorbell.close();
  irqfd.close();
});

test('level doorbell over an irqfd re-asserts on resample while interrupts are pending', async () => {
  const irqfd = EventFd.create();
  const resample = EventFd.create();
  const doorbell = new EventFdDoorbell(irqfd, 'level', resample);
  let pending = true;
  doorbell.bindPending(() => pending);
  const rings = firstValueFrom(irqfd.events().pipe(take(2), toArray()));
  doorbell.ring();
  await settle(5);
  resample.signal(); // the guest EOIed while the device still had status bits set
  assert.equal((await rings).length, 2);
  pending = false;
  const before = doorbell.rings;
  resample.signal();
  await settle(10);
  assert.is(doorbell.rings, before, 'acknowledged: EOI does not re-assert');
  doorbell.close();
  irqfd.close();
  resample.close();
});

test('MMIO bus: overlapping ranges refused, unclaimed reads are zero and counted', () => {
  const bus = new MmioBus();
  const seen: number[] = [];
  bus.register(0x1000, 0x100, { read: (off, d) => d.fill(off), write: (off) => seen.push(off) }, 'a');
  assert.throws(() => bus.register(0x10f0, 0x100, { read() {}, write() {} }, 'b'), /overlaps a/);
  const data = new Uint8Array(4).fill(0xff);
  assert.is(bus.dispatch(0x2000, false, data), false);
  assert.equal([...data], [0, 0, 0, 0]);
  assert.is(bus.unclaimed, 1);
  assert.is(bus.dispatch(0x10fe, false, data), false, 'an access straddling the end is not claimed');
  assert.ok(bus.dispatch(0x1010, false, data));
  assert.equal([...data], [0x10, 0x10, 0x10, 0x10]);
  bus.dispatch(0x1020, true, data);
  assert.equal(seen, [0x20]);
});

test.run();
