// The whole Gunyah boot through the model of the Android-14 driver, with virtio block, console
// and rng attached: the exact ioctl sequence and argument bytes, the VM the resource manager
// builds from our device tree, the guest driving each device through real MMIO exits (reads
// answered in mmio.data before the vCPU runs again), queue kicks taken by ioeventfds without an
// exit, completions raised through irqfds on the SPI the device tree names, and the end.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../../devices/block-request.ts';
import { ARM64_RAM_BASE, DTB_REGION_SIZE, FIRST_DEVICE_SPI } from '../../framework/vm/gunyah/arm64-layout.ts';
import { GH_RM_EXIT_TYPE } from '../../framework/vm/gunyah/gunyah-exit-outcome.ts';
import * as R from '../../transports/virtio-mmio/registers.ts';
import { setupCalls } from './support/calls.ts';
import { DISK_SECTORS, RAM_SIZE, withFixture } from './support/fixture.ts';

const text = (s: string) => new TextEncoder().encode(s);

test('the ioctl sequence and every argument, in order, up to GH_VM_START', () => withFixture({}, async (f) => {
  await f.vm.start();
  const calls = setupCalls(f.model);
  const ram = calls.find((c) => c.op === 'mmap' && c.target === 'anon')!;
  assert.is(ram.arg, RAM_SIZE);
  const ramAddress = f.vm.memory.regions[0]!.hostAddress!;
  const notifyAt = (i: number) => BigInt(f.slots[i]!.base + R.QUEUE_NOTIFY);
  const expected = [
    { op: 'open', target: '/dev/gunyah' },
    { op: 'ioctl', target: '/dev/gunyah', request: 'GH_CREATE_VM', arg: 0 },
    { op: 'mmap', target: 'anon', arg: RAM_SIZE },
    {
      op: 'ioctl', target: 'vm0', request: 'GH_VM_SET_USER_MEM_REGION',
      arg: { label: 0n, flags: 7n, guest_phys_addr: BigInt(ARM64_RAM_BASE), memory_size: BigInt(RAM_SIZE), userspace_addr: ramAddress },
    },
    { op: 'ioctl', target: 'vm0', request: 'GH_VM_ADD_FUNCTION', fnType: 1n, fn: { id: 0n } },
    { op: 'ioctl', target: 'vm0/vcpu0', request: 'GH_VCPU_MMAP_SIZE', arg: 0 },
    { op: 'mmap', target: 'vm0/vcpu0', arg: 4096 },
    ...[f.block, f.console, f.rng].flatMap((d, i) => [
      {
        op: 'ioctl', target: 'vm0', request: 'GH_VM_ADD_FUNCTION', fnType: 2n,
        fn: { fd: BigInt(d.irqfd.fd), label: BigInt(FIRST_DEVICE_SPI + i), flags: 1n, padding: 0n },
      },
      {
        op: 'ioctl', target: 'vm0', request: 'GH_VM_ADD_FUNCTION', fnType: 3n,
        // One ioeventfd per QueueNotify, without datamatch (see ioevent-fanout.ts); its fd is the fan-out's.
        fn: { datamatch: 0n, addr: notifyAt(i), len: 4n, flags: 0n, padding: 0n },
      },
    ]),
    {
      op: 'ioctl', target: 'vm0', request: 'GH_VM_SET_DTB_CONFIG',
      arg: { guest_phys_addr: BigInt(ARM64_RAM_BASE + RAM_SIZE - DTB_REGION_SIZE), size: BigInt(DTB_REGION_SIZE) },
    },
    { op: 'ioctl', target: 'vm0', request: 'GH_VM_START', arg: 0 },
  ];
  assert.is(calls.length, expected.length, calls.map((c) => `${c.target} ${c.request ?? c.op}`).join('\n'));
  expected.forEach((e, i) => {
    const c = calls[i]!;
    const where = `call ${i} (${e.request ?? e.op})`;
    assert.is(c.op, e.op, where);
    assert.is(c.target, e.target, where);
    assert.is(c.request, e.request, where);
    assert.not.equal(c.outcome, undefined, where);
    assert.ok(typeof c.outcome === 'number', `${where} succeeded`);
    if ('fnType' in e) {
      const desc = c.arg as Record<string, bigint>;
      assert.is(desc.type, e.fnType, where);
      const fn = { ...c.fn! };
      if (e.fnType === 3n) delete fn.fd; // checked below: a live eventfd of the fan-out
      assert.equal(fn, e.fn, where);
    } else if (e.arg !== undefined) {
      assert.equal(c.arg, e.arg, where);
    }
  });
  // The vCPU fd, the ioeventfd fds: real eventfds, distinct from the irqfds.
  const ioFds = calls.filter((c) => c.fn && (c.arg as Record<string, bigint>).type === 3n).map((c) => Number(c.fn!.fd));
  assert.is(new Set(ioFds).size, 3);
  for (const fd of ioFds) assert.not.ok([f.block, f.console, f.rng].some((d) => d.irqfd.fd === fd));
}));

test('the resource manager reads our device tree: entry at the kernel, x0 = DTB, a doorbell per device on its SPI', () => withFixture({}, async (f) => {
  await f.vm.start();
  const mvm = f.modelVm();
  assert.equal(mvm.boot, { entry: BigInt(ARM64_RAM_BASE), x0: BigInt(f.layout.dtb.address) });
  const g = f.guest();
  assert.equal(g.memory.slice(ARM64_RAM_BASE, f.kernel.length), f.kernel, 'the Image sits at the entry point');
  assert.equal(g.memory.slice(f.layout.initrd!.address, f.initrd.length), f.initrd);
  const config = mvm.config!;
  assert.equal(config.vcpus, [0]);
  for (const [i, d] of [f.block, f.console, f.rng].entries()) {
    const spi = g.deviceSpi(d.slot.base);
    assert.is(spi, FIRST_DEVICE_SPI + i);
    const bell = config.doorbells.find((b) => b.spi === spi)!;
    assert.is(bell.label, spi, 'doorbell label = irqfd label');
    const irqfd = mvm.irqfds.find((q) => q.fd === d.irqfd.fd)!;
    assert.ok(irqfd.bell, 'the irqfd got its doorbell by label');
    assert.is(irqfd.bell!.spi, spi);
    assert.ok(irqfd.bell!.level);
  }
}));

test('identification registers: every read is an MMIO exit answered in mmio.data by the device', () => withFixture({}, async (f) => {
  await f.vm.start();
  const g = f.guest();
  const vcpu = f.modelVm().vcpus[0]!;
  const before = vcpu.exits;
  const ids = [];
  for (const d of [f.block, f.console, f.rng]) {
    assert.is(await g.read32(d.slot.base + R.MAGIC_VALUE), R.MAGIC);
    assert.is(await g.read32(d.slot.base + R.VERSION), 2);
    ids.push(await g.read32(d.slot.base + R.DEVICE_ID));
  }
  assert.equal(ids, [2, 3, 4], 'block, console, entropy');
  assert.is(vcpu.exits - before, 9, 'one exit per read');
  // A 1-byte read of config space: the width the guest used is the width the device sees.
  assert.is(Number(await g.read(f.block.slot.base + R.CONFIG, 1)), DISK_SECTORS, 'capacity low byte');
}));

test('rng: a kick goes through the ioeventfd (no exit), the completion through the irqfd, bytes land in the guest', () => withFixture({}, async (f) => {
  await f.vm.start();
  const rng = f.driver('rng');
  await rng.init();
  const vcpu = f.modelVm().vcpus[0]!;
  const q = rng.queues[0]!;
  const head = q.addChain([{ writableLen: 64 }]);
  const exits = vcpu.exits;
  await rng.notify(0);
  assert.is(vcpu.exits, exits, 'QueueNotify never left the kernel');
  assert.is(await rng.interrupt(), R.INTERRUPT_USED_BUFFER);
  const used = q.takeUsed();
  assert.is(used.length, 1);
  assert.is(used[0]!.id, head);
  assert.is(used[0]!.len, 64);
  assert.ok(used[0]!.written.some((b) => b !== 0), 'entropy, not zeros');
  assert.is(f.rng.notified[0], 1);
}));

test('block: write a sector, read it back, GET_ID gives the serial', () => withFixture({}, async (f) => {
  await f.vm.start();
  const blk = f.driver('block');
  await blk.init();
  const q = blk.queues[0]!;
  const header = (type: number, sector: number) => {
    const h = new Uint8Array(16);
    const v = new DataView(h.buffer);
    v.setUint32(0, type, true);
    v.setBigUint64(8, BigInt(sector), true);
    return h;
  };
  const sector = text('hello from a Gunyah guest'.padEnd(512, '.'));
  q.addChain([{ data: header(VIRTIO_BLK_T_OUT, 3) }, { data: sector }, { writableLen: 1 }]);
  await blk.notify(0);
  await blk.interrupt();
  assert.equal([...q.takeUsed()[0]!.written], [VIRTIO_BLK_S_OK]);
  q.addChain([{ data: header(VIRTIO_BLK_T_IN, 3) }, { writableLen: 512 }, { writableLen: 1 }]);
  await blk.notify(0);
  await blk.interrupt();
  const read = q.takeUsed()[0]!.written;
  assert.equal(read.subarray(0, 512), sector);
  assert.is(read[512], VIRTIO_BLK_S_OK);
  q.addChain([{ data: header(VIRTIO_BLK_T_GET_ID, 0) }, { writableLen: 20 }, { writableLen: 1 }]);
  await blk.notify(0);
  await blk.interrupt();
  const id = q.takeUsed()[0]!.written;
  assert.is(new TextDecoder().decode(id.subarray(0, 11)), 'gunyah-disk');
}));

test('console: guest output reaches the host; host input reaches the guest with an interrupt', () => withFixture({}, async (f) => {
  await f.vm.start();
  const con = f.driver('console');
  await con.init();
  const [rx, tx] = con.queues as [typeof con.queues[0], typeof con.queues[0]];
  rx!.addChain([{ writableLen: 64 }]);
  await con.notify(0);
  tx!.addChain([{ data: text('Booting Linux on physical CPU 0x0\n') }]);
  await con.notify(1);
  await con.interrupt();
  assert.is(f.consoleHost.text(), 'Booting Linux on physical CPU 0x0\n');
  assert.is(tx!.takeUsed().length, 1);
  f.consoleHost.input.next(text('root\n'));
  await con.interrupt();
  const got = rx!.takeUsed()[0]!;
  assert.is(new TextDecoder().decode(got.written), 'root\n');
}));

test('power-off ends the VM with outcome poweroff; close releases every fd, mapping and watch', () => withFixture({}, async (f) => {
  await f.vm.start();
  const g = f.guest();
  assert.is(await g.read32(f.rng.slot.base + R.MAGIC_VALUE), R.MAGIC);
  g.exit(GH_RM_EXIT_TYPE.PSCI_POWER_OFF);
  const outcome = await f.vm.outcome;
  assert.equal(outcome, { kind: 'poweroff', reason: 'PSCI_POWER_OFF' });
  assert.is(f.vm.state, 'ended');
  await f.close();
  assert.is(f.model.openFds, 0, 'every fd the driver handed out was closed');
  assert.is(f.model.space.mappedCount, 0, 'every mapping was unmapped');
  assert.ok(f.modelVm().freed, 'the driver freed the VM');
  assert.is(f.modelVm().activeWatches, 0);
  assert.is(f.model.lockedPages, 0n, 'pinned pages were released');
}));

test.run();
