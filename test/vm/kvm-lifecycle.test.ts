// How a KVM VM starts and ends: a vCPU halted in the kernel or spinning in the guest is
// stopped by the host (signal kick); a triple fault ends it with 'reset' and a register
// report; the first outcome wins; misuse is refused with errno-named errors.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import type { VmEvent } from '../../framework/vm/hypervisor.ts';
import { VmError } from '../../framework/vm/vm-error.ts';
import { kvmSkipReason, tinyVm, withTimeout } from './tiny-vm.ts';

const skip = kvmSkipReason();
if (skip) console.log(`SKIP: ${skip}`);
const kvmTest = skip ? test.skip : test;

const settledWithin = async (p: Promise<unknown>, ms: number) => {
  const never = Symbol('pending');
  return (await Promise.race([p, new Promise((r) => setTimeout(() => r(never), ms))])) !== never;
};

for (const guest of ['halt', 'spin'] as const) {
  kvmTest(`a vCPU that ${guest === 'halt' ? 'halts with interrupts off' : 'spins without exits'} runs until stopped, then ends 'stopped'`, async () => {
    const { vm } = tinyVm(guest, { bits: 16 });
    const events: VmEvent['type'][] = [];
    vm.events$.subscribe((e) => events.push(e.type));
    try {
      await vm.start();
      assert.is(vm.state, 'running');
      assert.not.ok(await settledWithin(vm.outcome, 150), 'nothing ends it by itself');
      const t0 = performance.now();
      const outcome = await withTimeout(vm.stop(), 2000, 'stop');
      const ms = performance.now() - t0;
      assert.equal(outcome, { kind: 'stopped' });
      assert.ok(ms < 500, `stop took ${ms.toFixed(1)} ms`);
      assert.is(vm.state, 'ended');
      assert.equal(events, ['vcpu-started', 'vcpu-ended', 'outcome']);
      if (guest === 'spin') assert.ok(vm.vcpus[0]!.stats().interrupted >= 1, 'KVM_RUN was interrupted by the kick');
    } finally {
      await vm.close();
    }
  });
}

kvmTest('every vCPU gets its own thread; stop ends them all, the application processor waiting for SIPI too', async () => {
  const { vm } = tinyVm('halt', { bits: 16 }, { vcpus: 2 });
  const started: number[] = [];
  vm.events$.subscribe((e) => { if (e.type === 'vcpu-started') started.push(e.vcpu); });
  try {
    await vm.start();
    assert.equal(started.sort(), [0, 1]);
    assert.equal(vm.vcpus.map((v) => v.state), ['running', 'running']);
    assert.equal(await withTimeout(vm.stop(), 2000, 'stop'), { kind: 'stopped' });
    assert.equal(vm.vcpus.map((v) => v.state), ['ended', 'ended']);
  } finally {
    await vm.close();
  }
});

kvmTest('a triple fault ends the VM with reset, the registers and the faulting instruction bytes', async () => {
  const unmapped = 0x80_0000_0000n; // above the 4 GiB identity map
  const { vm, image } = tinyVm('triple-fault64', { bits: 64, symbols: { UNMAPPED: unmapped } });
  try {
    await vm.start();
    const outcome = await withTimeout(vm.outcome, 5000, 'the triple fault');
    assert.is(outcome.kind, 'reset');
    if (outcome.kind !== 'reset') return;
    assert.is(outcome.reason, 'triple fault');
    const fault = outcome.fault!;
    assert.is(fault.exit, 'KVM_EXIT_SHUTDOWN');
    assert.is(fault.registers.rip, BigInt(image.symbols.fault!), 'rip at the load that faulted');
    assert.is(fault.registers.cr2, unmapped, 'cr2 holds the address of the page fault');
    assert.is(fault.instructionAddress, image.symbols.fault);
    const at = image.symbols.fault! - image.origin;
    assert.equal(fault.instruction!.subarray(0, image.bytes.length - at), image.bytes.subarray(at), 'the bytes at rip');
    assert.is(fault.instruction!.length, 16);
  } finally {
    await vm.close();
  }
});

kvmTest('the first outcome wins; later finish() calls get it too', async () => {
  const { vm } = tinyVm('halt', { bits: 16 });
  try {
    await vm.start();
    const first = vm.finish({ kind: 'poweroff', reason: 'test' });
    const second = vm.finish({ kind: 'crash', reason: 'too late' });
    assert.equal(await first, { kind: 'poweroff', reason: 'test' });
    assert.equal(await second, { kind: 'poweroff', reason: 'test' });
    assert.equal(await vm.stop(), { kind: 'poweroff', reason: 'test' });
    assert.equal(await vm.outcome, { kind: 'poweroff', reason: 'test' });
  } finally {
    await vm.close();
  }
});

kvmTest('misuse is refused with errno names: double start, late vCPU, registers while running, use after close', async () => {
  const { vm } = tinyVm('halt', { bits: 16 });
  const vcpu = vm.vcpus[0]!;
  const code = (f: () => unknown) => {
    try {
      f();
    } catch (e) {
      assert.instance(e, VmError);
      return (e as VmError).code;
    }
    return 'no error';
  };
  try {
    await vm.start();
    assert.is(await vm.start().then(() => 'no error', (e: VmError) => e.code), 'EBUSY');
    assert.is(code(() => vm.createVcpu()), 'EBUSY');
    assert.is(code(() => vcpu.getRegs()), 'EBUSY');
    await vm.stop();
    assert.ok(vcpu.getRegs().rip > 0n, 'registers are readable once the thread has ended');
  } finally {
    await vm.close();
  }
  await vm.close(); // idempotent
  assert.is(vm.state, 'closed');
  assert.is(code(() => vcpu.getRegs()), 'EBADF');
  assert.is(code(() => vm.addIrqFd(5, null as never, { level: false })), 'EBADF');
  assert.throws(() => vm.memory.readU8(0x1000), /inaccessible/, 'guest RAM is refused, not a dangling view');
});

kvmTest('a VM that never started closes cleanly with outcome stopped', async () => {
  const { vm } = tinyVm('halt', { bits: 16 });
  await vm.close();
  assert.equal(await vm.outcome, { kind: 'stopped' });
  assert.is(vm.state, 'closed');
});

test.run();
