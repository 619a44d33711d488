// The real driver behind the seam, on a host without /dev/gunyah: opening fails with a clear
// ENODEV, and the run thread plumbing is exercised with an fd that refuses GH_VCPU_RUN (ENOTTY
// from the worker's ioctl, with the caller's context), one thread per vCPU fd, gone on close.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { existsSync, readdirSync } from 'node:fs';
import { GunyahHypervisor } from '../../framework/vm/gunyah/gunyah-hypervisor.ts';
import { NativeGunyahDriver } from '../../framework/vm/gunyah/native-driver.ts';
import { VmError } from '../../framework/vm/vm-error.ts';
import { NativeError } from '../../native/errors.ts';
import { GH_VM_START } from '../../native/gunyah.ts';

const threads = () => readdirSync('/proc/self/task').length;

async function settleThreads(target: number): Promise<number> {
  for (let i = 0; i < 100 && threads() > target; i++) await new Promise((r) => setTimeout(r, 10));
  return threads();
}

test('GunyahHypervisor.open on this host: ENODEV naming /dev/gunyah (or it opens, on Gunyah hardware)', () => {
  if (existsSync('/dev/gunyah')) {
    console.log('SKIP: this host has /dev/gunyah');
    return;
  }
  assert.throws(() => GunyahHypervisor.open(), (e: unknown) => e instanceof VmError && e.code === 'ENODEV' && /\/dev\/gunyah/.test(e.message));
});

test('ioctl and mmap failures are NativeErrors with the errno name and the context', () => {
  const d = new NativeGunyahDriver();
  const fd = d.open('/dev/null', 'open /dev/null');
  try {
    assert.throws(() => d.ioctl(fd, GH_VM_START, 0, 'GH_VM_START'), (e: unknown) => e instanceof NativeError && e.message === 'GH_VM_START: ENOTTY');
    assert.throws(() => d.ioctl(fd, GH_VM_START, new Uint8Array(16), 'GH_VM_START (pointer)'), (e: unknown) => e instanceof NativeError && e.code === 'ENOTTY');
    assert.throws(() => d.mmap(fd, 4096, 'mmap run page'), (e: unknown) => e instanceof NativeError && e.message === 'mmap run page: ENODEV');
  } finally {
    d.close(fd, 'close');
  }
  const ram = d.mmap(-1, 1 << 20, 'mmap guest RAM');
  ram.bytes[ram.length - 1] = 7;
  assert.is(ram.address % 4096n, 0n);
  assert.is(d.addressOf(ram.bytes.subarray(4096)), ram.address + 4096n);
  d.munmap(ram, 'munmap guest RAM');
});

test('GH_VCPU_RUN runs on a thread of its own per vCPU fd: errors come back with context; the thread ends on close', async () => {
  const d = new NativeGunyahDriver();
  const base = threads();
  const fd = d.open('/dev/null', 'open /dev/null');
  for (let i = 0; i < 3; i++) {
    try {
      await d.run(fd, 'GH_VCPU_RUN vCPU 0');
      assert.unreachable('GH_VCPU_RUN on /dev/null');
    } catch (e) {
      assert.instance(e, NativeError);
      assert.is((e as NativeError).message, 'GH_VCPU_RUN vCPU 0: ENOTTY');
    }
  }
  assert.is(threads(), base + 1, 'one thread, reused by every call');
  d.kick(fd); // idle: nothing to interrupt
  d.close(fd, 'close vCPU');
  assert.is(await settleThreads(base), base, 'the run thread ended');
});

test.run();
