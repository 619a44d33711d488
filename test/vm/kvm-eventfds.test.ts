// ioeventfds and irqfds through the KVM runtime: QueueNotify writes matching an ioeventfd
// reach the eventfd without a vCPU exit; an irqfd raises an interrupt the guest's handler
// (behind the PIC) sees and acknowledges, edge-triggered and level-triggered with resample.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { EventFdDoorbell } from '../../framework/doorbell.ts';
import { EventFd } from '../../framework/eventfd.ts';
import { chooseSeed, Prng } from '../support/prng.ts';
import { kvmSkipReason, MMIO_BASE, MMIO_SEG, TestWindow, tinyVm, withTimeout } from './tiny-vm.ts';

const skip = kvmSkipReason();
if (skip) console.log(`SKIP: ${skip}`);
const kvmTest = skip ? test.skip : test;

const QUEUE_NOTIFY = 0x50; // virtio-mmio QueueNotify
const DONE = 0x0f;

kvmTest('QueueNotify writes matching the ioeventfd signal it without a vCPU exit; others exit', async () => {
  const count = new Prng(chooseSeed()).int(200, 2000);
  const window = new TestWindow();
  const { vm } = tinyVm('notify', { bits: 16, symbols: { MMIO_SEG, NOTIFY: QUEUE_NOTIFY, COUNT: count } });
  const notify = EventFd.create();
  try {
    vm.mmio.register(MMIO_BASE, 0x100, window, 'test window');
    vm.addIoEventFd({ address: MMIO_BASE + QUEUE_NOTIFY, length: 4, datamatch: 0 }, notify);
    await vm.start();
    await window.nextWrite(DONE);
    assert.is(notify.read(), BigInt(count), 'every queue-0 notification reached the eventfd');
    assert.equal(window.writes(QUEUE_NOTIFY), [1n], 'only the unmatched queue-1 write reached the bus');
    assert.is(vm.vcpus[0]!.stats().mmio, 2, 'exits: the queue-1 notify and the done marker');
  } finally {
    await vm.close();
    notify.close();
  }
});

kvmTest('a removed ioeventfd no longer swallows writes: they exit to the bus', async () => {
  const window = new TestWindow();
  const { vm } = tinyVm('notify', { bits: 16, symbols: { MMIO_SEG, NOTIFY: QUEUE_NOTIFY, COUNT: 5 } });
  const notify = EventFd.create();
  try {
    vm.mmio.register(MMIO_BASE, 0x100, window, 'test window');
    vm.addIoEventFd({ address: MMIO_BASE + QUEUE_NOTIFY, length: 4, datamatch: 0 }, notify).remove();
    await vm.start();
    await window.nextWrite(DONE);
    assert.is(notify.read(), null);
    assert.equal(window.writes(QUEUE_NOTIFY), [0n, 0n, 0n, 0n, 0n, 1n]);
  } finally {
    await vm.close();
    notify.close();
  }
});

const IRQ = 5;
const READY = 0x10;
const MARK = 0x20;

kvmTest('edge irqfd: each signal runs the guest handler once, which acknowledges over MMIO', async () => {
  const irqfd = EventFd.create();
  const marks: bigint[] = [];
  let finished!: () => void;
  const done = new Promise<void>((resolve) => { finished = resolve; });
  const window = new TestWindow(undefined, (offset, value) => {
    if (offset === READY) irqfd.signal();
    if (offset === MARK) {
      marks.push(value);
      if (marks.length < 3) irqfd.signal();
      else finished();
    }
  });
  const { vm } = tinyVm('irq', { bits: 16, symbols: { MMIO_SEG, IRQ, READY, MARK } });
  try {
    vm.mmio.register(MMIO_BASE, 0x100, window, 'test window');
    const binding = vm.addIrqFd(IRQ, irqfd, { level: false });
    assert.equal([binding.mode, binding.resample], ['edge', null]);
    await vm.start();
    await withTimeout(done, 5000, 'three interrupts');
    assert.equal(marks, [1n, 2n, 3n], 'the handler ran once per signal');
  } finally {
    await vm.close();
    irqfd.close();
  }
});

kvmTest('level irqfd with resample: the EOI comes back on the resample fd and the doorbell re-asserts while pending', async () => {
  const irqfd = EventFd.create();
  let pending = 3;
  let doorbell!: EventFdDoorbell;
  const marks: bigint[] = [];
  const window = new TestWindow(undefined, (offset, value) => {
    if (offset === READY) doorbell.ring();
    if (offset === MARK) {
      marks.push(value);
      pending--; // the "device" saw its interrupt acknowledged
    }
  });
  const { vm } = tinyVm('irq', { bits: 16, symbols: { MMIO_SEG, IRQ, READY, MARK } });
  try {
    vm.mmio.register(MMIO_BASE, 0x100, window, 'test window');
    const binding = vm.addIrqFd(IRQ, irqfd, { level: true });
    assert.is(binding.mode, 'level');
    assert.ok(binding.resample, 'KVM needs a resample fd for level irqfds; the VM made one');
    doorbell = new EventFdDoorbell(binding.irqfd, binding.mode, binding.resample);
    doorbell.bindPending(() => pending > 0);
    await vm.start();
    await withTimeout((async () => { while (marks.length < 3) await new Promise((r) => setTimeout(r, 5)); })(), 5000, 'three interrupts');
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(marks, [1n, 2n, 3n], 'one ring, then re-asserted after each EOI while pending');
    assert.is(doorbell.rings, 3, 'no ring once nothing is pending');
    doorbell.close();
  } finally {
    await vm.close();
    irqfd.close();
  }
});

test.run();
