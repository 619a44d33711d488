// The Gunyah backend against the model of the Android-14 driver: how a VM ends (STATUS exits,
// stop, a failing device, a failed start), level and edge doorbells, lent and read-only memory
// as devices see it, ioeventfd and irqfd registration rules, several vCPUs, and every error the
// driver can return surfacing from the backend as a clear error.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { EventFd } from '../../framework/eventfd.ts';
import { ARM64_RAM_BASE, virtioMmioSlots } from '../../framework/vm/gunyah/arm64-layout.ts';
import { GH_RM_EXIT_TYPE, ghStatusOutcome } from '../../framework/vm/gunyah/gunyah-exit-outcome.ts';
import { GunyahHypervisor } from '../../framework/vm/gunyah/gunyah-hypervisor.ts';
import type { VmEvent } from '../../framework/vm/hypervisor.ts';
import { VmError } from '../../framework/vm/vm-error.ts';
import { STATUS_DEVICE_NEEDS_RESET } from '../../framework/virtio/constants.ts';
import { NativeError } from '../../native/errors.ts';
import { GH_VM_STATUS_CRASHED, GH_VM_STATUS_EXITED, GH_VM_STATUS_LOAD_FAILED } from '../../native/gunyah.ts';
import * as R from '../../transports/virtio-mmio/registers.ts';
import { GunyahModel } from './model/gunyah-model.ts';
import { decode, setupCalls } from './support/calls.ts';
import { RAM_SIZE, gunyahFixture, withFixture } from './support/fixture.ts';

const MIB = 1 << 20;
const LENT_BASE = 0x1_0000_0000;

async function rejects(p: Promise<unknown>, check: (e: unknown) => boolean, what: string): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    assert.ok(check(e), `${what}: got ${String(e)}`);
    return e;
  }
  assert.unreachable(`${what}: no error`);
}

const nativeError = (message: string) => (e: unknown) => e instanceof NativeError && e.message === message;

test('no /dev/gunyah: a clear ENODEV naming the device', () => {
  assert.throws(() => GunyahHypervisor.open({ driver: new GunyahModel({ present: false }) }),
    (e: unknown) => e instanceof VmError && e.code === 'ENODEV' && /\/dev\/gunyah: no Gunyah on this host/.test(e.message));
});

test('memory the driver refuses surfaces with the ioctl and label; nothing is left behind', () => {
  const cases: [string, object, string][] = [
    ['overlapping regions', { memory: [{ base: ARM64_RAM_BASE, size: 4 * MIB }, { base: ARM64_RAM_BASE + 2 * MIB, size: 4 * MIB }] }, 'GH_VM_SET_USER_MEM_REGION label 1: EEXIST'],
    ['a size that is no page multiple', { memory: [{ base: ARM64_RAM_BASE, size: 4 * MIB + 100 }] }, 'GH_VM_SET_USER_MEM_REGION label 0: EINVAL'],
    ['a misaligned base', { memory: [{ base: ARM64_RAM_BASE + 512, size: 4 * MIB }] }, 'GH_VM_SET_USER_MEM_REGION label 0: EINVAL'],
    ['a lent region past RLIMIT_MEMLOCK', { memory: [{ base: ARM64_RAM_BASE, size: 4 * MIB }, { base: LENT_BASE, size: 8 * MIB, lend: true }] }, 'GH_VM_ANDROID_LEND_USER_MEM label 1: ENOMEM'],
  ];
  for (const [what, config, message] of cases) {
    const model = new GunyahModel({ memlockLimit: 8 * MIB });
    const hv = GunyahHypervisor.open({ driver: model });
    assert.throws(() => hv.createVm(config as never), nativeError(message), what);
    assert.is(model.openFds, 1, `${what}: only /dev/gunyah stays open`);
    assert.is(model.space.mappedCount, 0, `${what}: guest memory unmapped`);
    hv.close();
  }
});

test('a DTB outside every region: start fails with GH_VM_START EINVAL, the VM ends with that error', async () => {
  const f = gunyahFixture();
  try {
    f.vm.setBootConfig({ dtb: { address: 0x4000_0000, size: 2 * MIB } });
    const events: VmEvent[] = [];
    f.vm.events$.subscribe((e) => events.push(e));
    await rejects(f.vm.start(), nativeError('GH_VM_START: EINVAL'), 'start');
    const outcome = await f.vm.outcome;
    assert.is(outcome.kind, 'error');
    assert.is(outcome.kind === 'error' && outcome.error.message, 'GH_VM_START: EINVAL');
    assert.is(f.vm.state, 'ended');
    assert.equal(events.map((e) => e.type), ['outcome']);
    await rejects(f.vm.start(), (e) => e instanceof VmError && e.code === 'EBUSY', 'start again');
    assert.match(f.modelVm().kernelLog.join('\n'), /memory_handle for DTB/);
    assert.ok(f.model.callsOf('run').length === 0, 'no vCPU ever ran');
  } finally {
    await f.close();
  }
});

test('STATUS exits become outcomes: power-off, reset, crash, with the exit type and reason', async () => {
  const cases: [number, string, string][] = [
    [GH_RM_EXIT_TYPE.VM_EXIT, 'poweroff', 'VM_EXIT'],
    [GH_RM_EXIT_TYPE.PSCI_POWER_OFF, 'poweroff', 'PSCI_POWER_OFF'],
    [GH_RM_EXIT_TYPE.PSCI_SYSTEM_RESET, 'reset', 'PSCI_SYSTEM_RESET'],
    [GH_RM_EXIT_TYPE.PSCI_SYSTEM_RESET2, 'reset', 'PSCI_SYSTEM_RESET2 (reason 01000080)'],
    [GH_RM_EXIT_TYPE.WDT_BITE, 'crash', 'WDT_BITE'],
    [GH_RM_EXIT_TYPE.HYP_ERROR, 'crash', 'HYP_ERROR'],
    [GH_RM_EXIT_TYPE.ASYNC_EXT_ABORT, 'crash', 'ASYNC_EXT_ABORT'],
    [GH_RM_EXIT_TYPE.VM_FORCE_STOPPED, 'poweroff', 'VM_FORCE_STOPPED'],
    [42, 'crash', 'exit type 42'],
  ];
  for (const [type, kind, reason] of cases) {
    await withFixture({}, async (f) => {
      await f.vm.start();
      f.guest().exit(type, type === GH_RM_EXIT_TYPE.PSCI_SYSTEM_RESET2 ? Uint8Array.of(1, 0, 0, 0x80) : undefined);
      assert.equal(await f.vm.outcome, { kind, reason }, `exit type ${type}`);
    });
  }
  await withFixture({}, async (f) => {
    await f.vm.start();
    f.guest().crash();
    assert.equal(await f.vm.outcome, { kind: 'crash', reason: 'GH_VM_STATUS_CRASHED' });
  });
  // LOAD_FAILED never reaches a started backend (START fails first); its mapping is checked directly.
  const load = ghStatusOutcome({ kind: 'status', status: GH_VM_STATUS_LOAD_FAILED, exitInfo: { type: 0, reasonSize: 0, reason: new Uint8Array(0) } });
  assert.ok(load.kind === 'error' && load.error instanceof VmError && load.error.code === 'ENOEXEC');
  assert.is(ghStatusOutcome({ kind: 'status', status: 9, exitInfo: { type: 0, reasonSize: 0, reason: new Uint8Array(0) } }).kind, 'crash');
  assert.is(ghStatusOutcome({ kind: 'status', status: GH_VM_STATUS_EXITED, exitInfo: { type: 1, reasonSize: 0, reason: new Uint8Array(0) } }).kind, 'poweroff');
  assert.is(ghStatusOutcome({ kind: 'status', status: GH_VM_STATUS_CRASHED, exitInfo: { type: 1, reasonSize: 0, reason: new Uint8Array(0) } }).kind, 'crash');
});

test('a failed resource-manager start: GH_VM_START fails with its errno, nothing runs', async () => {
  const f = gunyahFixture({ model: { rmStartError: 'EIO' } });
  try {
    await rejects(f.vm.start(), nativeError('GH_VM_START: EIO'), 'start');
    assert.is((await f.vm.outcome).kind, 'error');
  } finally {
    await f.close();
  }
});

test('stop: immediate_exit, a kick, EINTR, outcome "stopped"; events for start, end and outcome', () => withFixture({}, async (f) => {
  const events: VmEvent[] = [];
  f.vm.events$.subscribe((e) => events.push(e));
  await f.vm.start();
  await new Promise((r) => setTimeout(r, 5)); // the vCPU is blocked in GH_VCPU_RUN
  assert.equal(await f.vm.stop(), { kind: 'stopped' });
  const runs = f.model.callsOf('run');
  assert.is(runs[runs.length - 1]!.outcome, 'EINTR');
  assert.is(f.modelVm().vcpus[0]!.page[0], 1, 'immediate_exit set (and never cleared)');
  assert.equal(events.map((e) => e.type), ['vcpu-started', 'vcpu-ended', 'outcome']);
  assert.is(f.vm.vcpus[0]!.stats().interrupted, 1);
  assert.equal(await f.vm.stop(), { kind: 'stopped' }, 'idempotent');
}));

test('a device that throws on MMIO ends the VM with outcome "error" instead of resuming the guest', () => withFixture({}, async (f) => {
  const boom = new Error('device bug');
  f.vm.mmio.register(0xa000_0000, 0x1000, { read() { throw boom; }, write() {} }, 'broken');
  await f.vm.start();
  void f.guest().read(0xa000_0000, 4).catch(() => {});
  const outcome = await f.vm.outcome;
  assert.ok(outcome.kind === 'error' && outcome.error === boom);
}));

test('several vCPUs: each has its function and run page, each is served, one exit ends them all', () => withFixture({ vcpus: 3 }, async (f) => {
  await f.vm.start();
  const adds = setupCalls(f.model).filter((c) => c.fn && (c.arg as Record<string, bigint>).type === 1n);
  assert.equal(adds.map((c) => c.fn!.id), [0n, 1n, 2n]);
  assert.equal(f.modelVm().config!.vcpus, [0, 1, 2], 'the device tree told the RM about three cpus');
  const g = f.guest();
  for (const id of [2, 0, 1]) assert.is(await g.on(id).read32(f.rng.slot.base + R.DEVICE_ID), 4, `vCPU ${id}`);
  assert.equal(f.modelVm().vcpus.map((v) => v.exits), [1, 1, 1]);
  g.exit(GH_RM_EXIT_TYPE.PSCI_SYSTEM_RESET);
  assert.is((await f.vm.outcome).kind, 'reset');
  assert.ok(f.vm.vcpus.every((v) => v.state === 'ended'));
}));

test('level doorbells: rings while asserted merge into one interrupt; after the guest takes it the next one is new', () => withFixture({}, async (f) => {
  await f.vm.start();
  const rng = f.driver('rng');
  await rng.init({ accept: (offered) => offered & ~(1n << 29n) }); // no EVENT_IDX: every completion rings
  const q = rng.queues[0]!;
  const line = f.guest().line(rng.spi);
  q.addChain([{ writableLen: 16 }]);
  await rng.notify(0);
  await line.whenPending();
  q.addChain([{ writableLen: 16 }]);
  await rng.notify(0);
  for (let i = 0; i < 50 && q.usedIdx() < 2; i++) await new Promise((r) => setTimeout(r, 2));
  await new Promise((r) => setTimeout(r, 10));
  assert.is(f.rng.doorbell.rings, 2, 'the device rang twice');
  assert.is(line.deliveries, 1, 'one interrupt while asserted');
  assert.is(line.coalesced, 1);
  assert.is(await rng.interrupt(), R.INTERRUPT_USED_BUFFER);
  assert.is(q.takeUsed().length, 2, 'one interrupt, both completions');
  q.addChain([{ writableLen: 16 }]);
  await rng.notify(0);
  await rng.interrupt();
  assert.is(line.deliveries, 2);
}));

test('edge doorbells: irqfds without GH_IRQFD_FLAGS_LEVEL and rising-edge interrupts in the device tree', () => withFixture({ level: false }, async (f) => {
  await f.vm.start();
  const irqfds = setupCalls(f.model).filter((c) => c.fn && (c.arg as Record<string, bigint>).type === 2n);
  assert.equal(irqfds.map((c) => c.fn!.flags), [0n, 0n, 0n]);
  assert.ok(f.modelVm().config!.doorbells.every((d) => d.flags === 1));
  assert.equal(f.vm.vcpus.length, 1);
  const rng = f.driver('rng');
  await rng.init();
  rng.queues[0]!.addChain([{ writableLen: 8 }]);
  await rng.notify(0);
  assert.is(await rng.interrupt(), R.INTERRUPT_USED_BUFFER);
  assert.is(f.rng.binding.mode, 'edge');
}));

test('lent memory: writable for the loader until START, refused to devices after (NEEDS_RESET), the guest still has it', () => withFixture({ extraMemory: [{ base: LENT_BASE, size: 2 * MIB, lend: true }] }, async (f) => {
  const lend = setupCalls(f.model).find((c) => c.request === 'GH_VM_ANDROID_LEND_USER_MEM')!;
  assert.equal((lend.arg as Record<string, bigint>).label, 1n);
  assert.equal((lend.arg as Record<string, bigint>).flags, 7n);
  assert.ok(f.vm.memory.isValid(LENT_BASE, 4096, true), 'the host may fill it before START');
  f.vm.memory.write(LENT_BASE, Uint8Array.of(1, 2, 3));
  await f.vm.start();
  assert.not.ok(f.vm.memory.isValid(LENT_BASE, 1), 'gone from the host at START');
  assert.ok(f.vm.memory.isValid(ARM64_RAM_BASE, 1), 'shared memory stays');
  const g = f.guest();
  assert.equal(g.memory.slice(LENT_BASE, 3), Uint8Array.of(1, 2, 3), 'the guest has what the loader wrote');
  const rng = f.driver('rng');
  await rng.init();
  // A buffer in lent memory: the device cannot write there.
  rng.queues[0]!.writeDescriptor(0, { addr: LENT_BASE + 4096, len: 64, flags: 2, next: 0 });
  rng.queues[0]!.setAvailEntry(0, 0);
  rng.queues[0]!.setAvailIdx(1);
  await rng.notify(0);
  assert.is(await rng.interrupt(), R.INTERRUPT_CONFIG_CHANGE);
  assert.ok((await rng.read32(R.STATUS)) & STATUS_DEVICE_NEEDS_RESET, 'the device reports DEVICE_NEEDS_RESET');
  assert.equal(g.memory.slice(LENT_BASE + 4096, 64), new Uint8Array(64), 'nothing was written there');
}));

test('read-only memory is registered R|X and devices cannot write it', () => withFixture({ extraMemory: [{ base: LENT_BASE, size: 2 * MIB, readOnly: true }] }, async (f) => {
  const region = setupCalls(f.model).filter((c) => c.request === 'GH_VM_SET_USER_MEM_REGION')[1]!;
  assert.equal((region.arg as Record<string, bigint>).flags, 5n);
  assert.not.ok(f.vm.memory.isValid(LENT_BASE, 1, true));
  assert.ok(f.vm.memory.isValid(LENT_BASE, 1, false));
}));

test('irqfd and ioeventfd rules: one label per doorbell, one kernel ioeventfd per address, MMIO only, no resample', () => withFixture({}, async (f) => {
  const e = EventFd.create();
  try {
    assert.throws(() => f.vm.addIrqFd(f.rng.slot.spi, e, { level: true }), nativeError(`GH_VM_ADD_FUNCTION irqfd label ${f.rng.slot.spi}: EEXIST`));
    assert.throws(() => f.vm.addIrqFd(40, e, { level: true, resample: e }), (x: unknown) => x instanceof VmError && x.code === 'EINVAL');
    assert.throws(() => f.vm.addIoEventFd({ address: 0x60, length: 1, space: 'pio' }, e), (x: unknown) => x instanceof VmError && /MMIO only/.test(x.message));
    assert.throws(() => f.vm.addIoEventFd({ address: f.rng.slot.base + R.QUEUE_NOTIFY, length: 4 }, e),
      (x: unknown) => x instanceof VmError && x.code === 'EEXIST', 'a datamatch fan-out already serves QueueNotify');
    const direct = f.vm.addIoEventFd({ address: 0xa000_0000, length: 0 }, e);
    assert.throws(() => f.vm.addIoEventFd({ address: 0xa000_0000, length: 4, datamatch: 1 }, e), (x: unknown) => x instanceof VmError && x.code === 'EEXIST');
    const before = f.model.calls.length;
    direct.remove();
    direct.remove();
    const removes = f.model.calls.slice(before).map(decode);
    assert.equal(removes.map((c) => `${c.request} ${c.outcome}`), ['GH_VM_REMOVE_FUNCTION 0']);
    assert.equal(removes[0]!.fn!.addr, 0xa000_0000n);
    assert.throws(() => f.vm.addIoEventFd({ address: 0xa000_0010, length: 3 as never }, e), /len: 3/);
  } finally {
    e.close();
  }
}));

test('a datamatch fan-out: every kick at QueueNotify reaches each queue of the device; removing all removes the ioeventfd', () => withFixture({}, async (f) => {
  await f.vm.start();
  const con = f.driver('console');
  await con.init();
  await con.notify(1);
  for (let i = 0; i < 50 && f.console.notified[1] === 0; i++) await new Promise((r) => setTimeout(r, 2));
  assert.equal(f.console.notified, [1, 1], 'the kernel cannot tell the queues apart: both are told');
  const before = f.model.calls.length;
  f.console.close();
  const removes = f.model.calls.slice(before).map(decode).filter((c) => c.request === 'GH_VM_REMOVE_FUNCTION');
  assert.equal(removes.map((c) => (c.arg as Record<string, bigint>).type), [3n, 2n], 'one ioeventfd, then the irqfd');
  assert.ok(removes.every((c) => c.outcome === 0));
}));

test('closing a VM that never started releases everything; the hypervisor can make another', async () => {
  const model = new GunyahModel();
  const hv = GunyahHypervisor.open({ driver: model });
  for (let i = 0; i < 3; i++) {
    const vm = hv.createVm({ memory: [{ base: ARM64_RAM_BASE, size: RAM_SIZE }], vcpus: 2 });
    const slots = virtioMmioSlots(ARM64_RAM_BASE + RAM_SIZE, 1);
    const irq = EventFd.create();
    vm.addIrqFd(slots[0]!.spi, irq, { level: true });
    await vm.close();
    assert.equal(await vm.outcome, { kind: 'stopped' });
    assert.is(vm.state, 'closed');
    irq.close();
    assert.ok(model.vms[i]!.freed);
  }
  assert.is(model.openFds, 1);
  hv.close();
  assert.is(model.openFds, 0);
  assert.throws(() => hv.createVm({ memory: [{ base: ARM64_RAM_BASE, size: RAM_SIZE }] }), (e: unknown) => e instanceof VmError && e.code === 'EBADF');
});

test.run();
