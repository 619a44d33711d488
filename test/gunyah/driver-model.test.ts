// The model of the Android-14 Gunyah driver on its own, driven with raw ioctls: every rule and
// errno of the driver's table, in the driver's order, plus the behaviours the backend relies on
// (resources bound by label at START, run states, immediate_exit, the boolean datamatch).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { FdtWriter } from '../../framework/fdt/fdt-writer.ts';
import { EventFd } from '../../framework/eventfd.ts';
import { ARM64_RAM_BASE, virtioMmioSlots } from '../../framework/vm/gunyah/arm64-layout.ts';
import { buildGunyahDeviceTree, type GunyahDeviceTreeSpec } from '../../framework/vm/gunyah/device-tree.ts';
import { NativeError } from '../../native/errors.ts';
import * as libc from '../../native/libc.ts';
import { GH_VCPU_MMAP_SIZE, readGhExit } from '../../native/gunyah.ts';
import { GH, IOCTL } from './model/abi.ts';
import { GunyahModel, type GunyahModelOptions } from './model/gunyah-model.ts';
import { ModelGuest } from './model/guest.ts';
import { RawVm, memRegion, struct } from './support/raw-driver.ts';

const MIB = 1 << 20;
const BASE = ARM64_RAM_BASE;

function throwsErrno(fn: () => unknown, code: string, context?: string): void {
  try {
    fn();
  } catch (e) {
    assert.instance(e, NativeError, `expected NativeError ${code}, got ${String(e)}`);
    const n = e as NativeError;
    assert.is(n.code, code, n.message);
    if (context !== undefined) assert.is(n.message, `${context}: ${code}`);
    return;
  }
  assert.unreachable(`expected ${code}`);
}

async function rejectsErrno(p: Promise<unknown>, code: string): Promise<void> {
  try {
    await p;
  } catch (e) {
    assert.instance(e, NativeError, String(e));
    assert.is((e as NativeError).code, code, (e as NativeError).message);
    return;
  }
  assert.unreachable(`expected ${code}`);
}

function setup(options: GunyahModelOptions = {}) {
  const model = new GunyahModel(options);
  return { model, raw: new RawVm(model) };
}

/** Region 0 (4 MiB at BASE) holding a DTB at +2 MiB built from `spec` (or given bytes); DTB config set. */
function bootable(raw: RawVm, dtb: Uint8Array | Partial<GunyahDeviceTreeSpec> = {}) {
  const ram = raw.region(0, BASE, 4 * MIB);
  const blob = dtb instanceof Uint8Array ? dtb : buildGunyahDeviceTree({
    memory: [{ base: BASE, size: 4 * MIB }], vcpus: 1, cmdline: '', devices: [], ...dtb,
  });
  ram.bytes.set(blob, 2 * MIB);
  raw.dtbConfig(BASE + 2 * MIB, 2 * MIB);
  return ram;
}

test('/dev/gunyah: absent is ENOENT; GH_CREATE_VM takes only 0; other ioctls are ENOTTY', () => {
  throwsErrno(() => new GunyahModel({ present: false }).open('/dev/gunyah', 'open /dev/gunyah'), 'ENOENT', 'open /dev/gunyah');
  const model = new GunyahModel();
  const dev = model.open('/dev/gunyah', 'open');
  throwsErrno(() => model.ioctl(dev, IOCTL.GH_CREATE_VM, 1, 'GH_CREATE_VM'), 'EINVAL', 'GH_CREATE_VM');
  throwsErrno(() => model.ioctl(dev, IOCTL.GH_VM_START, 0, 'GH_VM_START on /dev/gunyah'), 'ENOTTY');
  assert.ok(model.ioctl(dev, IOCTL.GH_CREATE_VM, 0, 'GH_CREATE_VM') > 0);
  throwsErrno(() => model.ioctl(424242, IOCTL.GH_VM_START, 0, 'bad fd'), 'EBADF');
});

test('memory regions: flags, size and alignment EINVAL; overflow EOVERFLOW; label and range EEXIST; pins EFAULT', () => {
  const { raw } = setup();
  const m = raw.map(2 * MIB);
  const region = (label: number, flags: number, gpa: number | bigint, size: number | bigint, uaddr = m.address) =>
    raw.ioctl(IOCTL.GH_VM_SET_USER_MEM_REGION, memRegion(label, flags, gpa, size, uaddr), `GH_VM_SET_USER_MEM_REGION label ${label}`);
  throwsErrno(() => region(0, 8, BASE, MIB), 'EINVAL', 'GH_VM_SET_USER_MEM_REGION label 0');
  throwsErrno(() => region(0, 7, BASE, 0), 'EINVAL');
  throwsErrno(() => region(0, 7, BASE, 4095), 'EINVAL');
  throwsErrno(() => region(0, 7, BASE + 512, MIB), 'EINVAL');
  throwsErrno(() => region(0, 7, BASE, MIB, m.address + 16n), 'EINVAL');
  throwsErrno(() => region(0, 7, 0xffff_ffff_ffff_f000n, 0x2000), 'EOVERFLOW');
  throwsErrno(() => region(0, 7, BASE, 4 * MIB), 'EFAULT', 'GH_VM_SET_USER_MEM_REGION label 0'); // more than is mapped: partial pin
  throwsErrno(() => region(0, 7, BASE, MIB, 0x1000n), 'EFAULT');
  throwsErrno(() => raw.ioctl(IOCTL.GH_VM_SET_USER_MEM_REGION, 0, 'null argument'), 'EFAULT');
  assert.is(region(0, 7, BASE, MIB), 0);
  throwsErrno(() => region(0, 7, BASE + 8 * MIB, MIB, m.address + BigInt(MIB)), 'EEXIST', 'GH_VM_SET_USER_MEM_REGION label 0');
  throwsErrno(() => region(1, 7, BASE + MIB - 4096, MIB, m.address + BigInt(MIB)), 'EEXIST', 'GH_VM_SET_USER_MEM_REGION label 1');
  assert.is(region(1, 5, BASE + MIB, MIB, m.address + BigInt(MIB)), 0, 'adjacent R|X region');
  throwsErrno(() => raw.ioctl(IOCTL.GH_VM_ANDROID_LEND_USER_MEM, memRegion(2, 7, BASE + MIB, MIB, m.address), 'LEND label 2'), 'EEXIST');
});

test('memory regions count against RLIMIT_MEMLOCK: ENOMEM past the limit, released with the VM', () => {
  const { model, raw } = setup({ memlockLimit: 3 * MIB });
  raw.region(0, BASE, 2 * MIB);
  throwsErrno(() => raw.region(1, BASE + 2 * MIB, 2 * MIB), 'ENOMEM', 'region 1');
  raw.region(1, BASE + 2 * MIB, MIB);
  assert.is(model.lockedPages, BigInt(3 * MIB / 4096));
  model.close(raw.fd, 'close');
  assert.is(model.lockedPages, 0n);
});

test('GH_VM_SET_DTB_CONFIG: the size is page-aligned up, overflow is EOVERFLOW', () => {
  const { raw } = setup();
  throwsErrno(() => raw.dtbConfig(0xffff_ffff_ffff_f000n, 0x1000), 'EOVERFLOW', 'GH_VM_SET_DTB_CONFIG');
  throwsErrno(() => raw.dtbConfig(0xffff_ffff_ffff_e000n, 0x1001), 'EOVERFLOW'); // 0x1001 becomes 0x2000
  assert.is(raw.dtbConfig(0xffff_ffff_ffff_e000n, 0x1000), 0);
  assert.is(raw.dtbConfig(BASE, 100), 0);
});

test('START: a DTB outside every region is EINVAL and the VM is dead (START again ENODEV, vCPUs ENODEV)', async () => {
  const { model, raw } = setup();
  const ram = raw.region(0, BASE, 4 * MIB);
  ram.bytes.set(buildGunyahDeviceTree({ memory: [{ base: BASE, size: 4 * MIB }], vcpus: 1, cmdline: '', devices: [] }), 0);
  const vcpu = raw.vcpu(0);
  raw.dtbConfig(BASE + 64 * MIB, 2 * MIB);
  throwsErrno(() => raw.start(), 'EINVAL');
  throwsErrno(() => raw.start(), 'ENODEV', 'GH_VM_START');
  await rejectsErrno(model.run(vcpu, 'GH_VCPU_RUN'), 'ENODEV');
});

test('START: the resource manager refuses what it cannot use (EINVAL, VM dead)', () => {
  // Bytes that are no device tree.
  {
    const { raw } = setup();
    bootable(raw, new Uint8Array(4096).fill(0x5a));
    throwsErrno(() => raw.start(), 'EINVAL');
    throwsErrno(() => raw.start(), 'ENODEV', 'GH_VM_START');
  }
  // The DTB range overlaps the region but runs past its end.
  {
    const { raw } = setup();
    bootable(raw);
    raw.dtbConfig(BASE + 3 * MIB, 2 * MIB);
    throwsErrno(() => raw.start(), 'EINVAL');
  }
  // memory@X instead of /memory; no /gunyah-vm-config; no image-name.
  const trees = {
    'memory@80000000': (w: FdtWriter) => { w.beginNode('memory@80000000'); w.propertyString('device_type', 'memory'); w.endNode(); },
    'no vm config': null,
  };
  for (const [name, extra] of Object.entries(trees)) {
    const w = new FdtWriter();
    w.beginNode('');
    w.beginNode('cpus');
    w.beginNode('cpu@0');
    w.propertyString('device_type', 'cpu');
    w.endNode();
    w.endNode();
    extra?.(w);
    w.endNode();
    const { raw } = setup();
    bootable(raw, w.finish());
    try {
      raw.start();
      assert.unreachable(name);
    } catch (e) {
      assert.is((e as NativeError).message, 'GH_VM_START: EINVAL', name);
      assert.match(raw.driver instanceof GunyahModel ? raw.driver.vms[0]!.kernelLog.join('\n') : '', /resource manager/, name);
    }
  }
});

test('START on a running VM is 0 (ensure_started); after the VM exited it is ENODEV', async () => {
  const { model, raw } = setup();
  bootable(raw);
  assert.is(raw.start(), 0);
  assert.is(raw.start(), 0);
  new ModelGuest(model.vms[0]!).exit(1);
  throwsErrno(() => raw.start(), 'ENODEV', 'GH_VM_START');
});

test('GH_VCPU_RUN before START is ENODEV; vCPU ioctls: MMAP_SIZE is a page, anything else EINVAL', async () => {
  const { model, raw } = setup();
  const vcpu = raw.vcpu(0);
  await rejectsErrno(model.run(vcpu, 'GH_VCPU_RUN'), 'ENODEV');
  assert.is(model.ioctl(vcpu, GH_VCPU_MMAP_SIZE, 0, 'GH_VCPU_MMAP_SIZE'), 4096);
  throwsErrno(() => model.ioctl(vcpu, IOCTL.GH_VM_START, 0, 'GH_VM_START on a vCPU'), 'EINVAL', 'GH_VM_START on a vCPU');
  throwsErrno(() => raw.ioctl(0x4799, 0, 'unknown VM ioctl'), 'ENOTTY');
});

test('ADD_FUNCTION: arg_size > 256 or wrong EINVAL, unknown type ENOENT, duplicate vCPU id EEXIST, bad pointers EFAULT', () => {
  const { raw } = setup();
  const id = struct('gh_fn_vcpu_arg', { id: 0 });
  throwsErrno(() => raw.addFunction(1, new Uint8Array(257), 'GH_VM_ADD_FUNCTION vcpu 0'), 'EINVAL', 'GH_VM_ADD_FUNCTION vcpu 0');
  throwsErrno(() => raw.addFunction(1, new Uint8Array(8)), 'EINVAL');
  throwsErrno(() => raw.addFunction(9, id, 'GH_VM_ADD_FUNCTION type 9'), 'ENOENT', 'GH_VM_ADD_FUNCTION type 9');
  throwsErrno(() => raw.ioctl(IOCTL.GH_VM_ADD_FUNCTION, struct('gh_fn_desc', { type: 1, arg_size: 4, arg: 0x10 }), 'bad arg'), 'EFAULT');
  throwsErrno(() => raw.ioctl(IOCTL.GH_VM_ADD_FUNCTION, 16, 'bad desc'), 'EFAULT');
  assert.ok(raw.addFunction(1, id) > 0);
  throwsErrno(() => raw.addFunction(1, struct('gh_fn_vcpu_arg', { id: 0 }), 'GH_VM_ADD_FUNCTION vcpu 0'), 'EEXIST', 'GH_VM_ADD_FUNCTION vcpu 0');
  assert.ok(raw.vcpu(1) > 0);
});

test('irqfd: bad fd EBADF, not an eventfd EINVAL, unknown flag EINVAL, duplicate label EEXIST', () => {
  const { raw } = setup();
  const a = EventFd.create();
  const b = EventFd.create();
  const devNull = libc.open('/dev/null', libc.O_RDWR | libc.O_CLOEXEC);
  try {
    throwsErrno(() => raw.irqfd(987_654, 16), 'EBADF', 'irqfd 16');
    throwsErrno(() => raw.irqfd(devNull, 16), 'EINVAL');
    throwsErrno(() => raw.irqfd(raw.fd, 16), 'EINVAL', 'irqfd 16'); // a Gunyah VM fd is no eventfd either
    throwsErrno(() => raw.irqfd(a.fd, 16, 2), 'EINVAL');
    throwsErrno(() => raw.addFunction(2, new Uint8Array(12)), 'EINVAL');
    assert.is(raw.irqfd(a.fd, 16, GH.IRQFD_FLAGS_LEVEL), 0);
    throwsErrno(() => raw.irqfd(b.fd, 16), 'EEXIST', 'irqfd 16');
    assert.is(raw.irqfd(b.fd, 17), 0);
  } finally {
    raw.driver.close(raw.fd, 'close vm');
    a.close();
    b.close();
    libc.close(devNull);
  }
});

test('ioeventfd: len not 0/1/2/4/8, len 0 with DATAMATCH, flags other than 1 EINVAL; bad fd EBADF; overlapping EEXIST', () => {
  const { raw } = setup();
  const e = EventFd.create();
  const devNull = libc.open('/dev/null', libc.O_RDWR | libc.O_CLOEXEC);
  const at = 0x9000_0050;
  try {
    for (const len of [3, 5, 16]) throwsErrno(() => raw.ioeventfd(e.fd, at, len), 'EINVAL', `ioeventfd ${at}`);
    throwsErrno(() => raw.ioeventfd(e.fd, at, 0, GH.IOEVENTFD_FLAGS_DATAMATCH), 'EINVAL');
    throwsErrno(() => raw.ioeventfd(e.fd, at, 4, 1 << 1, 1), 'EINVAL'); // the shifted flag one public VMM sends
    throwsErrno(() => raw.ioeventfd(e.fd, 0xffff_ffff_ffff_fffen, 4), 'EINVAL'); // addr + len overflows
    throwsErrno(() => raw.ioeventfd(987_654, at, 4), 'EBADF');
    throwsErrno(() => raw.ioeventfd(devNull, at, 4), 'EINVAL');
    throwsErrno(() => raw.addFunction(3, new Uint8Array(24)), 'EINVAL');
    for (const len of [0, 1, 2, 4, 8]) assert.is(raw.ioeventfd(e.fd, 0x9000_1000 + len * 16, len), 0);
    assert.is(raw.ioeventfd(e.fd, at, 4), 0);
    throwsErrno(() => raw.ioeventfd(e.fd, at, 4), 'EEXIST', `ioeventfd ${at}`);
    throwsErrno(() => raw.ioeventfd(e.fd, at, 2, GH.IOEVENTFD_FLAGS_DATAMATCH, 1), 'EEXIST'); // the any-value handler covers it
    // Datamatch compares as a boolean in this driver: a second datamatch of the same length is EEXIST.
    assert.is(raw.ioeventfd(e.fd, 0x9000_2050, 4, GH.IOEVENTFD_FLAGS_DATAMATCH, 0), 0);
    throwsErrno(() => raw.ioeventfd(e.fd, 0x9000_2050, 4, GH.IOEVENTFD_FLAGS_DATAMATCH, 1), 'EEXIST');
    assert.is(raw.ioeventfd(e.fd, 0x9000_2050, 2, GH.IOEVENTFD_FLAGS_DATAMATCH, 1), 0, 'another length is another key');
  } finally {
    raw.driver.close(raw.fd, 'close vm');
    e.close();
    libc.close(devNull);
  }
});

test('REMOVE_FUNCTION: nothing matching ENOENT; vCPUs by id (then ENODEV), irqfds by label, ioeventfds by address', async () => {
  const { model, raw } = setup();
  const e = EventFd.create();
  try {
    throwsErrno(() => raw.removeFunction(1, struct('gh_fn_vcpu_arg', { id: 3 }), 'GH_VM_REMOVE_FUNCTION vcpu 3'), 'ENOENT', 'GH_VM_REMOVE_FUNCTION vcpu 3');
    assert.is(raw.removeFunction(1, new Uint8Array(0), 'empty'), 0, 'arg_size 0 removes nothing and succeeds');
    const vcpu = raw.vcpu(3);
    assert.is(raw.removeFunction(1, struct('gh_fn_vcpu_arg', { id: 3 })), 0);
    await rejectsErrno(model.run(vcpu, 'GH_VCPU_RUN'), 'ENODEV');
    raw.irqfd(e.fd, 20);
    assert.is(raw.removeFunction(2, struct('gh_fn_irqfd_arg', { fd: 0, label: 20 })), 0, 'matched on label alone');
    throwsErrno(() => raw.removeFunction(2, struct('gh_fn_irqfd_arg', { fd: e.fd, label: 20 })), 'ENOENT');
    raw.ioeventfd(e.fd, 0x9000_0050, 4, GH.IOEVENTFD_FLAGS_DATAMATCH, 7);
    raw.ioeventfd(e.fd, 0x9000_0050, 2, GH.IOEVENTFD_FLAGS_DATAMATCH, 7);
    assert.is(raw.removeFunction(3, struct('gh_fn_ioeventfd_arg', { addr: 0x9000_0050 })), 0);
    assert.equal(model.vms[0]!.ioHandlers, [], 'both ioeventfds at the address went');
  } finally {
    raw.driver.close(raw.fd, 'close vm');
    e.close();
  }
});

test('run: MMIO read exits wait for mmio.data; writes matching an ioeventfd never exit (datamatch as a boolean)', async () => {
  const { model, raw } = setup();
  const anyValue = EventFd.create();
  const dm = EventFd.create();
  try {
    bootable(raw);
    const vcpu = raw.vcpu(0);
    const size = model.ioctl(vcpu, GH_VCPU_MMAP_SIZE, 0, 'mmap size');
    const page = model.mmap(vcpu, size, 'mmap run');
    const view = new DataView(page.bytes.buffer, page.bytes.byteOffset, size);
    raw.ioeventfd(anyValue.fd, 0x9000_0050, 4);
    raw.ioeventfd(dm.fd, 0x9000_0250, 4, GH.IOEVENTFD_FLAGS_DATAMATCH, 1);
    raw.start();
    const guest = new ModelGuest(model.vms[0]!);
    const read = guest.read(0x9000_0000, 4);
    assert.is(await model.run(vcpu, 'run'), 0);
    const exit = readGhExit(view);
    assert.equal({ ...exit, data: undefined }, { kind: 'mmio', physAddr: 0x9000_0000, len: 4, isWrite: false, data: undefined });
    view.setUint32(24, 0x74726976, true); // the VMM's answer in mmio.data
    const writes = [
      guest.write(0x9000_0050, 1, 0), // any-value handler: taken (its length is not checked)
      guest.write(0x9000_0250, 4, 5), // datamatch 1 takes any non-zero value
      guest.write(0x9000_0250, 4, 0), // ...but never 0: exits
    ];
    assert.is(await model.run(vcpu, 'run'), 0);
    assert.is(await read, 0x74726976n, 'the read completes with what the VMM left in mmio.data');
    const w = readGhExit(view);
    assert.equal({ ...w, data: [...(w as { data: Uint8Array }).data] }, { kind: 'mmio', physAddr: 0x9000_0250, len: 4, isWrite: true, data: [0, 0, 0, 0] });
    assert.is(anyValue.read(), 1n);
    assert.is(dm.read(), 1n);
    const pending = model.run(vcpu, 'run');
    await Promise.all(writes);
    guest.exit(GH.VM_STATUS_EXITED, Uint8Array.of(0xde, 0xad));
    assert.is(await pending, 0);
  } finally {
    model.close(raw.fd, 'close');
    anyValue.close();
    dm.close();
  }
});

test('immediate_exit: EINTR at once or when kicked; a read cut short that way completes with 0 (the driver drops the data)', async () => {
  const { model, raw } = setup();
  bootable(raw);
  const vcpu = raw.vcpu(0);
  const page = model.mmap(vcpu, 4096, 'mmap run').bytes;
  raw.start();
  const guest = new ModelGuest(model.vms[0]!);
  const blocked = model.run(vcpu, 'GH_VCPU_RUN vCPU 0');
  model.kick(vcpu); // a signal without immediate_exit: the call is restarted and keeps waiting
  await new Promise((r) => setTimeout(r, 5));
  page[0] = 1;
  model.kick(vcpu);
  await rejectsErrno(blocked, 'EINTR');
  await rejectsErrno(model.run(vcpu, 'GH_VCPU_RUN vCPU 0'), 'EINTR');
  page[0] = 0;
  const read = guest.read(0x9000_0000, 4);
  assert.is(await model.run(vcpu, 'run'), 0);
  page.fill(0xff, 24, 32);
  page[0] = 1;
  await rejectsErrno(model.run(vcpu, 'run'), 'EINTR');
  page[0] = 0;
  const next = model.run(vcpu, 'run');
  assert.is(await read, 0n);
  guest.crash();
  assert.is(await next, 0);
  const status = readGhExit(new DataView(page.buffer, page.byteOffset, 4096));
  assert.is(status.kind === 'status' && status.status, GH.VM_STATUS_CRASHED);
});

test('STATUS: exit type and reason; every later run returns the same page; LOAD_FAILED after a failed RM start', async () => {
  {
    const { model, raw } = setup();
    bootable(raw);
    const vcpu = raw.vcpu(0);
    const page = model.mmap(vcpu, 4096, 'mmap run').bytes;
    raw.start();
    new ModelGuest(model.vms[0]!).exit(4, Uint8Array.of(1, 2, 3));
    const view = new DataView(page.buffer, page.byteOffset, 4096);
    for (let i = 0; i < 2; i++) {
      assert.is(await model.run(vcpu, 'run'), 0);
      const s = readGhExit(view);
      assert.equal(s.kind === 'status' && { status: s.status, type: s.exitInfo.type, reason: [...s.exitInfo.reason] },
        { status: GH.VM_STATUS_EXITED, type: 4, reason: [1, 2, 3] });
    }
  }
  {
    const { model, raw } = setup({ rmStartError: 'EIO' });
    bootable(raw);
    const vcpu = raw.vcpu(0);
    const page = model.mmap(vcpu, 4096, 'mmap run').bytes;
    throwsErrno(() => raw.start(), 'EIO');
    assert.is(await model.run(vcpu, 'run'), 0);
    const s = readGhExit(new DataView(page.buffer, page.byteOffset, 4096));
    assert.is(s.kind === 'status' && s.status, GH.VM_STATUS_LOAD_FAILED);
  }
});

test('doorbells bind by label at START: early signals are dropped, unknown labels never ring, level lines coalesce', async () => {
  const { model, raw } = setup();
  const slots = virtioMmioSlots(BASE + 4 * MIB, 2);
  const bound = EventFd.create();
  const stray = EventFd.create();
  try {
    bootable(raw, { devices: slots });
    raw.irqfd(bound.fd, slots[0]!.spi, GH.IRQFD_FLAGS_LEVEL);
    raw.irqfd(stray.fd, 99);
    bound.signal();
    await new Promise((r) => setTimeout(r, 10));
    const vm = model.vms[0]!;
    assert.is(vm.irqfds[0]!.premature, 1, 'signal before START: "Premature injection", dropped');
    raw.start();
    const guest = new ModelGuest(vm);
    const line = guest.line(guest.deviceSpi(slots[0]!.base));
    assert.not.ok(line.pending);
    bound.signal();
    await line.whenPending();
    bound.signal();
    await new Promise((r) => setTimeout(r, 10));
    assert.is(line.deliveries, 1);
    assert.is(line.coalesced, 1, 'still asserted: the second ring merges');
    await guest.interrupt(line.spi);
    bound.signal();
    await line.whenPending();
    assert.is(line.deliveries, 2);
    stray.signal();
    await new Promise((r) => setTimeout(r, 10));
    assert.is(vm.irqfds[1]!.premature, 1, 'label 99 has no doorbell in the device tree');
  } finally {
    model.close(raw.fd, 'close');
    bound.close();
    stray.close();
  }
});

test('without vcpus { affinity = "proxy" } the host gets no vCPU to run (ENODEV after START)', async () => {
  const w = new FdtWriter();
  w.beginNode('');
  w.beginNode('cpus');
  w.beginNode('cpu@0');
  w.propertyString('device_type', 'cpu');
  w.endNode();
  w.endNode();
  w.beginNode('intc');
  w.propertyString('compatible', 'arm,gic-v3');
  w.propertyEmpty('interrupt-controller');
  w.propertyU32('phandle', 1);
  w.endNode();
  w.beginNode('gunyah-vm-config');
  w.propertyString('image-name', 'no-proxy');
  w.beginNode('memory');
  w.propertyU64('base-address', BASE);
  w.endNode();
  w.beginNode('interrupts');
  w.propertyU32('config', 1);
  w.endNode();
  w.endNode();
  w.endNode();
  const { model, raw } = setup();
  bootable(raw, w.finish());
  const vcpu = raw.vcpu(0);
  assert.is(raw.start(), 0);
  await rejectsErrno(model.run(vcpu, 'run'), 'ENODEV');
});

test('the call record keeps every ioctl with its bytes and outcome, failures included', () => {
  const { model, raw } = setup();
  try { raw.ioctl(IOCTL.GH_VM_SET_USER_MEM_REGION, memRegion(0, 8, BASE, 4096, 0n), 'bad'); } catch { /* recorded */ }
  const last = model.calls[model.calls.length - 1]!;
  assert.is(last.request, 'GH_VM_SET_USER_MEM_REGION');
  assert.is(last.target, 'vm0');
  assert.is(last.outcome, 'EINVAL');
  assert.equal(last.arg, memRegion(0, 8, BASE, 4096, 0n));
});

test.run();
