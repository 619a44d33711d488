// virtio-mmio transport + device kit, driven by the guest-side MmioDriver.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { CallbackDoorbell } from '../../framework/doorbell.ts';
import { GuestMemory } from '../../framework/guest-memory.ts';
import { MmioBus } from '../../framework/mmio-bus.ts';
import { ConfigSpace } from '../../framework/virtio/config-space.ts';
import {
  STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK,
  VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, featureBits,
} from '../../framework/virtio/constants.ts';
import type { DescriptorChain } from '../../framework/virtio/descriptor-chain.ts';
import { VirtioDevice, queue } from '../../framework/virtio/device.ts';
import { VIRTQ_DESC_F_NEXT } from '../../framework/virtio/ring-layout.ts';
import * as R from '../../transports/virtio-mmio/registers.ts';
import { VirtioMmioTransport } from '../../transports/virtio-mmio/mmio-transport.ts';
import { MmioDriver, settle } from '../support/mmio-driver.ts';

const BASE = 0xd000_0000;
const F_ECHO_UPPER = 0; // a device-specific feature bit for negotiation tests

/** Copies what the driver gave into the writable buffers (upper-cased if the feature was accepted). */
class EchoDevice extends VirtioDevice {
  readonly type = 0x2a;
  override readonly features = featureBits(F_ECHO_UPPER);
  override readonly config = new ConfigSpace({ value: ['u32', 0], wide: ['u64', 4], knob: ['u8', 12] }, { writable: ['knob'] });
  upper = false;
  resets = 0;
  readonly queues = [
    queue('echoq', 128, (q) => q.serve((chain) => this.echo(chain))),
    queue('slowq', 64, (q) => q.serve(async (chain) => {
      await new Promise((r) => setTimeout(r, this.slowMs));
      this.slowDone++;
      return this.echo(chain);
    })),
  ];
  slowMs = 30;

  override onFeatures(features: bigint): void {
    this.upper = (features & featureBits(F_ECHO_UPPER)) !== 0n;
  }

  override onReset(): void {
    this.resets++;
  }

  /** Called for every chain served on echoq (tests use it to play a racing vCPU). */
  onEcho: (() => void) | null = null;
  slowDone = 0;

  private echo(chain: DescriptorChain): number {
    this.onEcho?.();
    const data = chain.reader().bytes(chain.readableBytes);
    if (this.upper) for (let i = 0; i < data.length; i++) if (data[i]! >= 97 && data[i]! <= 122) data[i]! -= 32;
    return chain.writer().write(data);
  }
}

function setup(options: { legacy?: boolean; level?: boolean; memBase?: number } = {}) {
  const mem = GuestMemory.allocate(4 << 20, options.memBase ?? 0);
  const bus = new MmioBus();
  const device = new EchoDevice();
  const doorbell = new CallbackDoorbell(options.level ? 'level' : 'edge');
  const transport = new VirtioMmioTransport(device, { base: BASE, irq: 5, memory: () => mem, doorbell, legacy: options.legacy });
  bus.register(BASE, transport.size, transport, 'echo');
  const driver = new MmioDriver(bus, BASE, mem);
  return { mem, bus, device, doorbell, transport, driver };
}

const text = (s: string) => new TextEncoder().encode(s);
const str = (b: Uint8Array) => new TextDecoder().decode(b);

test('identification registers and queue limits', () => {
  const { driver } = setup();
  assert.is(driver.read32(R.MAGIC_VALUE), 0x74726976);
  assert.is(driver.read32(R.VERSION), 2);
  assert.is(driver.read32(R.DEVICE_ID), 0x2a);
  driver.write32(R.QUEUE_SEL, 0);
  assert.is(driver.read32(R.QUEUE_NUM_MAX), 128);
  driver.write32(R.QUEUE_SEL, 1);
  assert.is(driver.read32(R.QUEUE_NUM_MAX), 64);
  driver.write32(R.QUEUE_SEL, 2);
  assert.is(driver.read32(R.QUEUE_NUM_MAX), 0, 'a queue that does not exist has QueueNumMax 0');
  assert.is(driver.read32(R.SHM_LEN_LOW), 0xffffffff, 'no shared memory region: length -1');
  const offered = driver.deviceFeatures();
  assert.is(offered, featureBits(F_ECHO_UPPER, VIRTIO_F_VERSION_1, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_EVENT_IDX));
});

test('register width rules: control registers are 32-bit aligned only; config space takes any width', () => {
  const { driver, transport, device } = setup();
  assert.is(driver.access(R.MAGIC_VALUE, 2), 0, '16-bit read of a control register reads 0');
  assert.is(driver.access(R.MAGIC_VALUE + 1, 4), 0, 'misaligned read reads 0');
  driver.access(R.STATUS, 1, STATUS_ACKNOWLEDGE);
  assert.is(driver.status, 0, '8-bit status write ignored');
  assert.ok(transport.badAccesses >= 3);
  device.config.set('value', 0x11223344);
  device.config.set('wide', 0x0102030405060708n);
  assert.is(driver.access(R.CONFIG, 4), 0x11223344);
  assert.is(driver.access(R.CONFIG + 1, 2), 0x2233);
  assert.is(driver.access(R.CONFIG + 4, 4), 0x05060708);
  assert.is(driver.access(R.CONFIG + 8, 4), 0x01020304);
  assert.is(driver.access(R.CONFIG + 0x80, 4), 0, 'past the config layout reads 0');
  driver.access(R.CONFIG, 4, 0xdeadbeef);
  assert.is(device.config.get('value'), 0x11223344n, 'read-only config field unchanged by a driver write');
  driver.access(R.CONFIG + 12, 1, 7);
  assert.is(device.config.get('knob'), 7n, 'writable config field takes the write');
});

test('feature negotiation: unoffered bits or a missing VERSION_1 keep FEATURES_OK clear', async () => {
  const { driver, device } = setup();
  const base = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
  driver.status = STATUS_ACKNOWLEDGE;
  driver.status = base;
  driver.writeDriverFeatures(featureBits(VIRTIO_F_VERSION_1, 40));
  driver.status = base | STATUS_FEATURES_OK;
  assert.is(driver.status & STATUS_FEATURES_OK, 0, 'bit 40 was never offered');
  driver.writeDriverFeatures(featureBits(F_ECHO_UPPER));
  driver.status = base | STATUS_FEATURES_OK;
  assert.is(driver.status & STATUS_FEATURES_OK, 0, 'modern transport needs VERSION_1');
  driver.writeDriverFeatures(featureBits(F_ECHO_UPPER, VIRTIO_F_VERSION_1));
  driver.status = base | STATUS_FEATURES_OK;
  assert.is(driver.status, base | STATUS_FEATURES_OK);
  assert.ok(device.upper, 'device saw the accepted feature');
  driver.writeDriverFeatures(featureBits(VIRTIO_F_VERSION_1));
  assert.is(driver.status & STATUS_FEATURES_OK, STATUS_FEATURES_OK);
  await driver.init({ accept: () => featureBits(VIRTIO_F_VERSION_1) });
  assert.not.ok(device.upper, 'renegotiation after reset drops the feature');
});

test('status state machine: out-of-order and bit-clearing writes are ignored; FAILED sticks', () => {
  const { driver } = setup();
  driver.status = STATUS_DRIVER;
  assert.is(driver.status, 0, 'DRIVER before ACKNOWLEDGE');
  driver.status = STATUS_ACKNOWLEDGE;
  driver.status = STATUS_ACKNOWLEDGE | STATUS_FEATURES_OK;
  assert.is(driver.status, STATUS_ACKNOWLEDGE, 'FEATURES_OK before DRIVER');
  driver.status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK;
  assert.is(driver.status, STATUS_ACKNOWLEDGE, 'DRIVER_OK before FEATURES_OK');
  driver.status = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
  driver.status = STATUS_DRIVER;
  assert.is(driver.status, STATUS_ACKNOWLEDGE | STATUS_DRIVER, 'clearing ACKNOWLEDGE is ignored');
  driver.status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FAILED;
  assert.is(driver.status & STATUS_FAILED, STATUS_FAILED);
});

test('requests flow end to end: chains served, used ring written, interrupt raised and acknowledged', async () => {
  const { driver, doorbell } = setup();
  await driver.init();
  const q = driver.queues[0]!;
  const heads = ['hello', 'virtio', 'mmio'].map((s) => q.addChain([{ data: text(s) }, { writableLen: 16 }]));
  driver.notify(0);
  await settle();
  const used = q.takeUsed();
  assert.equal(used.map((u) => u.id), heads);
  assert.equal(used.map((u) => str(u.written)), ['HELLO', 'VIRTIO', 'MMIO']);
  assert.ok(doorbell.rings >= 1);
  assert.is(driver.acknowledgeInterrupt(), R.INTERRUPT_USED_BUFFER);
  assert.is(driver.read32(R.INTERRUPT_STATUS), 0, 'InterruptACK clears the status');
});

test('indirect chains and EVENT_IDX suppression', async () => {
  const { driver, doorbell } = setup();
  await driver.init();
  const q = driver.queues[0]!;
  q.setUsedEvent(3); // driver wants an interrupt only once the 4th buffer is used
  for (let i = 0; i < 3; i++) q.addChain([{ data: text(`x${i}`) }, { writableLen: 8 }], { indirect: true });
  driver.notify(0);
  await settle();
  assert.is(q.takeUsed().length, 3);
  assert.is(doorbell.rings, 0, 'used_event not crossed: no interrupt');
  q.addChain([{ data: text('y') }, { writableLen: 8 }]);
  driver.notify(0);
  await settle();
  assert.equal(q.takeUsed().map((u) => str(u.written)), ['Y']);
  assert.is(doorbell.rings, 1, 'crossing used_event interrupts once');
  assert.is(q.readAvailEvent(), 4, 'device published avail_event');
});

test('without EVENT_IDX, VRING_AVAIL_F_NO_INTERRUPT suppresses interrupts', async () => {
  const { driver, doorbell } = setup();
  await driver.init({ accept: (o) => o & ~featureBits(VIRTIO_F_EVENT_IDX) });
  const q = driver.queues[0]!;
  q.setAvailFlags(1);
  q.addChain([{ data: text('a') }, { writableLen: 4 }]);
  driver.notify(0);
  await settle();
  assert.is(q.takeUsed().length, 1);
  assert.is(doorbell.rings, 0);
  q.setAvailFlags(0);
  q.addChain([{ data: text('b') }, { writableLen: 4 }]);
  driver.notify(0);
  await settle();
  assert.is(doorbell.rings, 1);
});

test('a malformed chain sets DEVICE_NEEDS_RESET and raises a config interrupt; reset recovers', async () => {
  const { driver, doorbell } = setup();
  await driver.init();
  const q = driver.queues[0]!;
  const head = q.addChain([{ data: text('loop') }, { writableLen: 8 }], { publish: false });
  const d = q.readDescriptor(head);
  q.writeDescriptor(head, { ...d, flags: d.flags | VIRTQ_DESC_F_NEXT, next: head }); // a descriptor loop
  q.offer(head);
  driver.notify(0);
  await settle();
  assert.is(driver.status & STATUS_DEVICE_NEEDS_RESET, STATUS_DEVICE_NEEDS_RESET);
  assert.is(driver.acknowledgeInterrupt() & R.INTERRUPT_CONFIG_CHANGE, R.INTERRUPT_CONFIG_CHANGE);
  assert.ok(doorbell.rings >= 1);
  q.addChain([{ data: text('ignored') }, { writableLen: 8 }]);
  driver.notify(0);
  await settle();
  assert.is(q.usedIdx(), 0, 'a device that needs reset serves nothing');
  await driver.init();
  const q2 = driver.queues[0]!;
  q2.addChain([{ data: text('again') }, { writableLen: 8 }]);
  driver.notify(0);
  await settle();
  assert.equal(q2.takeUsed().map((u) => str(u.written)), ['AGAIN']);
});

test('ring addresses outside guest memory are refused with DEVICE_NEEDS_RESET at DRIVER_OK', async () => {
  const { driver, transport } = setup();
  await driver.reset();
  driver.status = STATUS_ACKNOWLEDGE;
  driver.status = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
  driver.writeDriverFeatures(featureBits(VIRTIO_F_VERSION_1));
  driver.status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
  driver.setupQueues();
  driver.write32(R.QUEUE_SEL, 0);
  driver.write32(R.QUEUE_READY, 0);
  driver.writeAddress(R.QUEUE_DESC_LOW, 2 ** 40);
  driver.write32(R.QUEUE_READY, 1);
  driver.status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
  assert.is(driver.status & STATUS_DEVICE_NEEDS_RESET, STATUS_DEVICE_NEEDS_RESET);
  assert.not.ok(transport.state.isQueueRunning(1), 'the healthy queue after the broken one was not started either');
});

test('queue registers are frozen while the queue is ready', async () => {
  const { driver, transport } = setup();
  await driver.init();
  driver.write32(R.QUEUE_SEL, 0);
  const before = { ...transport.state.queues[0]! };
  driver.write32(R.QUEUE_NUM, 8);
  driver.writeAddress(R.QUEUE_DESC_LOW, 0x1000);
  assert.equal(transport.state.queues[0], before);
});

test('reset reads 0 at once, drops in-flight completions, and queues restart only after old I/O settled', async () => {
  const { driver, device } = setup();
  await driver.init();
  const q = driver.queues[1]!;
  q.addChain([{ data: text('slow') }, { writableLen: 8 }]);
  driver.notify(1);
  await settle();
  const resetsBefore = device.resets;
  driver.status = 0;
  assert.is(driver.status, 0, 'Linux virtio-mmio never waits for status to read 0');
  assert.is(device.resets, resetsBefore + 1);
  await driver.init(); // re-probe while the old request is still in flight
  const q2 = driver.queues[1]!;
  q2.addChain([{ data: text('new') }, { writableLen: 8 }]);
  driver.notify(1);
  await settle();
  assert.is(device.slowDone, 0, 'the old request is still in flight');
  assert.is(q2.usedIdx(), 0, 'the new queue waits for it');
  await settle(device.slowMs * 2 + 40);
  assert.equal(q2.takeUsed().map((u) => str(u.written)), ['NEW'], 'only the new request is published');
});

test('stopping a queue with drain lets taken requests complete into the ring (vhost-user GET_VRING_BASE)', async () => {
  const { driver, transport, device } = setup();
  await driver.init();
  const q = driver.queues[1]!;
  device.slowMs = 10;
  q.addChain([{ data: text('kept') }, { writableLen: 8 }]);
  driver.notify(1);
  await settle();
  const stopped = await transport.state.stopQueue(1, { drain: true });
  assert.equal(q.takeUsed().map((u) => str(u.written)), ['KEPT'], 'the in-flight request was completed, not lost');
  assert.equal(stopped, { nextAvail: 1 });
  q.addChain([{ data: text('later') }, { writableLen: 8 }]);
  driver.notify(1);
  await settle(20);
  assert.is(q.usedIdx(), 1, 'a stopped queue takes nothing new');
});

test('a driver that re-offers heads it has not got back is stopped at queue-size chains in flight', async () => {
  const { driver, transport } = setup();
  await driver.init();
  const q = driver.queues[1]!; // slow queue: nothing completes while we flood it
  const head = q.addChain([{ data: text('dup') }, { writableLen: 8 }]);
  for (let i = 0; i < q.size + 8; i++) q.offer(head);
  driver.notify(1);
  await settle();
  assert.is(driver.status & STATUS_DEVICE_NEEDS_RESET, STATUS_DEVICE_NEEDS_RESET);
  assert.ok(transport.state.queues[1]!.size === q.size);
});

test('one notification never holds the event loop for more than a queue of chains', async () => {
  const { driver, device } = setup();
  await driver.init();
  const q = driver.queues[0]!;
  const head = q.addChain([{ data: text('again') }, { writableLen: 8 }]);
  let served = 0;
  device.onEcho = () => {
    served++;
    if (served < 5000) q.offer(head); // a vCPU racing the device, re-posting as fast as it completes
  };
  driver.notify(0);
  const inFirstTurn = served;
  assert.ok(inFirstTurn <= q.size, `served ${inFirstTurn} chains in one turn (queue size ${q.size})`);
  const timerRan = await new Promise<number>((r) => setTimeout(() => r(served), 0));
  assert.ok(timerRan < 5000, 'a timer got to run before the flood ended');
  for (let i = 0; i < 200 && served < 5000; i++) await settle(1);
  assert.is(served, 5000, 'the device still serves everything, one turn at a time');
});

test('after DEVICE_NEEDS_RESET no queue starts, and stopping a failed queue waits for its I/O', async () => {
  const { driver, transport, device } = setup();
  await driver.init();
  const q = driver.queues[1]!;
  q.addChain([{ data: text('slow') }, { writableLen: 8 }]);
  driver.notify(1);
  await settle();
  transport.state.needsReset('test');
  assert.not.ok(transport.state.startQueue(1), 'a device that needs reset starts no queue');
  const done = device.slowDone;
  await transport.state.stopQueue(1);
  assert.is(device.slowDone, done + 1, 'stopQueue resolved only after the in-flight request settled');
});

test('async handlers complete out of order and all are published', async () => {
  const { driver, device } = setup();
  await driver.init();
  const q = driver.queues[1]!;
  device.slowMs = 5;
  const heads = [1, 2, 3, 4].map((i) => q.addChain([{ data: text(`r${i}`) }, { writableLen: 8 }]));
  driver.notify(1);
  await settle(40);
  const used = q.takeUsed();
  assert.equal(used.map((u) => u.id).sort(), [...heads].sort());
});

test('config change bumps the generation and raises a config interrupt after DRIVER_OK', async () => {
  const { driver, device } = setup();
  await driver.init();
  const gen = driver.read32(R.CONFIG_GENERATION);
  device.config.update({ value: 99 });
  assert.is(driver.read32(R.CONFIG_GENERATION), (gen + 1) >>> 0);
  assert.is(driver.acknowledgeInterrupt(), R.INTERRUPT_CONFIG_CHANGE);
  assert.is(driver.access(R.CONFIG, 4), 99);
});

test('level doorbell stays asserted until the guest acknowledges; EOI re-rings while pending', async () => {
  const { driver, doorbell } = setup({ level: true });
  await driver.init();
  const q = driver.queues[0]!;
  q.addChain([{ data: text('a') }, { writableLen: 4 }]);
  driver.notify(0);
  await settle();
  assert.ok(doorbell.asserted);
  const rings = doorbell.rings;
  doorbell.endOfInterrupt();
  assert.is(doorbell.rings, rings + 1, 'still pending: re-asserted after EOI');
  driver.acknowledgeInterrupt();
  assert.not.ok(doorbell.asserted);
  doorbell.endOfInterrupt();
  assert.is(doorbell.rings, rings + 1, 'acknowledged: no re-assertion');
});

test('64-bit ring addresses above 4 GiB', async () => {
  const { driver } = setup({ memBase: 0x1_2000_0000 });
  await driver.init();
  const q = driver.queues[0]!;
  assert.ok(q.descTable > 2 ** 32);
  q.addChain([{ data: text('high') }, { writableLen: 8 }]);
  driver.notify(0);
  await settle();
  assert.equal(q.takeUsed().map((u) => str(u.written)), ['HIGH']);
});

test('legacy (version 1) transport: QueuePFN layout, no FEATURES_OK needed', async () => {
  const { driver, mem } = setup({ legacy: true });
  assert.is(driver.read32(R.VERSION), 1);
  driver.status = 0;
  driver.status = STATUS_ACKNOWLEDGE;
  driver.status = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
  driver.write32(R.LEGACY_GUEST_PAGE_SIZE, 4096);
  driver.write32(R.QUEUE_SEL, 0);
  driver.write32(R.QUEUE_NUM, 16);
  driver.write32(R.LEGACY_QUEUE_ALIGN, 4096);
  driver.write32(R.LEGACY_QUEUE_PFN, 0x10); // rings at 0x10000
  const { DriverQueue } = await import('../support/driver-queue.ts');
  const usedRing = Math.ceil((0x10000 + 16 * 16 + 6 + 2 * 16) / 4096) * 4096;
  const q = new DriverQueue(mem, { size: 16, descTable: 0x10000, availRing: 0x10000 + 256, usedRing, dataStart: 0x40000, dataEnd: 0x80000 });
  driver.status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK;
  assert.is(driver.read32(R.LEGACY_QUEUE_PFN), 0x10);
  q.addChain([{ data: text('old') }, { writableLen: 8 }]);
  driver.notify(0);
  await settle();
  assert.equal(q.takeUsed().map((u) => str(u.written)), ['old']);
});

test('QueueNotify for a queue that does not exist is harmless', async () => {
  const { driver } = setup();
  await driver.init();
  driver.notify(7);
  driver.notify(0xffff);
  assert.is(driver.status & STATUS_DEVICE_NEEDS_RESET, 0);
});

test('the transport declares one ioeventfd per queue at QueueNotify and a cmdline entry', () => {
  const { transport } = setup();
  assert.equal(transport.notifyRegistrations(), [
    { queueIndex: 0, address: BASE + 0x50, length: 4, datamatch: 0 },
    { queueIndex: 1, address: BASE + 0x50, length: 4, datamatch: 1 },
  ]);
  assert.is(transport.cmdline, 'virtio_mmio.device=512@0xd0000000:5');
});

test.run();
