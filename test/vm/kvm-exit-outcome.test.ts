// What each fatal KVM exit means for the VM, decoded from a kvm_run page laid out by the
// native ABI module: outcome kind, reason, the exit-specific words and a fault report whose
// instruction bytes are read page by page through the vCPU's own translation.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import * as kvm from '../../native/kvm.ts';
import { GuestMemory } from '../../framework/guest-memory.ts';
import { kvmExitOutcome, type VcpuSnapshotSource } from '../../framework/vm/kvm/kvm-exit-outcome.ts';
import { zeroRegs } from '../../framework/vm/x86/entry-state.ts';
import { chooseSeed, Prng } from '../support/prng.ts';

const L = kvm.kvmRunLayout;

function runPage(reason: number, fill: (v: DataView) => void = () => {}): DataView {
  const view = new DataView(new ArrayBuffer(8192));
  view.setUint32(L.exitReason, reason, true);
  fill(view);
  return view;
}

/** A vCPU at cs.base + rip = 0x1ffa whose linear pages map to other physical pages. */
function fakeVcpu(memory: GuestMemory, mapping: Map<number, number>): VcpuSnapshotSource {
  const sregs = { cs: { base: 0x1000n, selector: 0x100 }, ss: { selector: 0 }, cr0: 1n, cr2: 0n, cr3: 0n, cr4: 0n, efer: 0n } as unknown as kvm.KvmSregs;
  return {
    id: 3,
    getRegs: () => ({ ...zeroRegs(), rip: 0xffan, rax: 42n }),
    getSregs: () => sregs,
    translate: (linear) => {
      const page = Number(linear) & ~0xfff;
      const phys = mapping.get(page);
      return phys === undefined ? null : phys + (Number(linear) & 0xfff);
    },
  };
}

function setup() {
  const rng = new Prng(chooseSeed());
  const memory = GuestMemory.allocate(0x10000);
  const first = rng.bytes(6);
  const second = rng.bytes(10);
  memory.write(0x5ffa, first); // linear page 0x1000 -> physical 0x5000
  memory.write(0x8000, second); // linear page 0x2000 -> physical 0x8000
  const vcpu = fakeVcpu(memory, new Map([[0x1000, 0x5000], [0x2000, 0x8000]]));
  return { memory, vcpu, expected: Uint8Array.from([...first, ...second]) };
}

test('emulation failure: crash with the internal-error words and the 16 bytes at rip across a page boundary', () => {
  const { memory, vcpu, expected } = setup();
  const page = runPage(kvm.KVM_EXIT_INTERNAL_ERROR, (v) => {
    v.setUint32(L.internalSuberror, kvm.KVM_INTERNAL_ERROR_EMULATION, true);
    v.setUint32(L.internalNdata, 2, true);
    v.setBigUint64(L.internalData, 0x1234n, true);
    v.setBigUint64(L.internalData + 8, 0xcc0fn, true);
  });
  const outcome = kvmExitOutcome(kvm.readKvmExit(page), vcpu, memory);
  assert.is(outcome.kind, 'crash');
  if (outcome.kind !== 'crash') return;
  assert.is(outcome.reason, 'internal error: emulation failure');
  const fault = outcome.fault!;
  assert.equal([fault.vcpu, fault.exit, fault.data], [3, 'KVM_EXIT_INTERNAL_ERROR', [0x1234n, 0xcc0fn]]);
  assert.equal([fault.registers.rip, fault.registers.rax, fault.registers.csBase], [0xffan, 42n, 0x1000n]);
  assert.is(fault.instructionAddress, 0x5ffa);
  assert.equal(fault.instruction, expected);
});

test('instruction bytes stop where the translation stops', () => {
  const { memory, expected } = setup();
  const vcpu = fakeVcpu(memory, new Map([[0x1000, 0x5000]]));
  const outcome = kvmExitOutcome(kvm.readKvmExit(runPage(kvm.KVM_EXIT_SHUTDOWN)), vcpu, memory);
  assert.equal(outcome.kind === 'reset' && outcome.fault?.instruction, expected.subarray(0, 6));
});

test('system events: shutdown is poweroff, reset is reset, crash is crash, each with its data', () => {
  const { memory, vcpu } = setup();
  const event = (type: number) => kvmExitOutcome(kvm.readKvmExit(runPage(kvm.KVM_EXIT_SYSTEM_EVENT, (v) => {
    v.setUint32(L.systemEventType, type, true);
    v.setUint32(L.systemEventNdata, 1, true);
    v.setBigUint64(L.systemEventData, 7n, true);
  })), vcpu, memory);
  const summary = (o: ReturnType<typeof event>) => [o.kind, 'reason' in o ? o.reason : '', 'fault' in o ? o.fault?.data : []];
  assert.equal(summary(event(kvm.KVM_SYSTEM_EVENT_SHUTDOWN)), ['poweroff', 'system event: shutdown', [7n]]);
  assert.equal(summary(event(kvm.KVM_SYSTEM_EVENT_RESET)), ['reset', 'system event: reset', [7n]]);
  assert.equal(summary(event(kvm.KVM_SYSTEM_EVENT_CRASH)), ['crash', 'system event: crash', [7n]]);
});

test('failed entry, HLT and unexpected exits', () => {
  const { memory, vcpu } = setup();
  const failed = kvmExitOutcome(kvm.readKvmExit(runPage(kvm.KVM_EXIT_FAIL_ENTRY, (v) => {
    v.setBigUint64(L.failEntryReason, 0x80000021n, true);
    v.setUint32(L.failEntryCpu, 1, true);
  })), vcpu, memory);
  assert.equal([failed.kind, 'reason' in failed && failed.reason], ['crash', 'entry failed: hardware reason 0x80000021 on cpu 1']);
  const hlt = kvmExitOutcome(kvm.readKvmExit(runPage(kvm.KVM_EXIT_HLT)), vcpu, memory);
  assert.is(hlt.kind, 'poweroff');
  const odd = kvmExitOutcome(kvm.readKvmExit(runPage(kvm.KVM_EXIT_DEBUG)), vcpu, memory);
  assert.equal([odd.kind, 'reason' in odd && odd.reason], ['crash', 'unexpected exit KVM_EXIT_DEBUG']);
});

test('a vCPU whose state cannot be read still yields its outcome', () => {
  const memory = GuestMemory.allocate(0x1000);
  const broken: VcpuSnapshotSource = { id: 0, getRegs: () => { throw new Error('EBADF'); }, getSregs: () => { throw new Error('EBADF'); }, translate: () => null };
  const outcome = kvmExitOutcome(kvm.readKvmExit(runPage(kvm.KVM_EXIT_SHUTDOWN)), broken, memory);
  assert.equal(outcome.kind === 'reset' && [outcome.fault!.registers, outcome.fault!.instruction], [{}, null]);
});

test.run();
