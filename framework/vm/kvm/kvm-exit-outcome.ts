// What a KVM exit that ends a vCPU's run means for the VM (x86_64): triple fault = reset,
// system events = poweroff/reset/crash, HLT without a wake-up source = poweroff, emulation
// failures, failed entries and unexpected exits = crash. Each outcome carries the vCPU's
// registers and the bytes at its instruction pointer.

import * as kvm from '../../../native/kvm.ts';
import type { GuestMemory } from '../../guest-memory.ts';
import type { VcpuFault, VmOutcome } from '../hypervisor.ts';

const EXIT_NAMES = new Map<number, string>(
  Object.entries(kvm)
    .filter(([name, value]) => /^KVM_EXIT_[A-Z0-9_]+$/.test(name) && !/^KVM_EXIT_IO_(IN|OUT)$/.test(name) && typeof value === 'number')
    .map(([name, value]) => [value as number, name]),
);

export function kvmExitName(reason: number): string {
  return EXIT_NAMES.get(reason) ?? `KVM_EXIT_${reason}`;
}

const SUBERRORS: Record<number, string> = {
  [kvm.KVM_INTERNAL_ERROR_EMULATION]: 'emulation failure',
  [kvm.KVM_INTERNAL_ERROR_SIMUL_EX]: 'exception during exception delivery',
  [kvm.KVM_INTERNAL_ERROR_DELIVERY_EV]: 'event delivery failed',
  [kvm.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON]: 'unexpected hardware exit',
};

/** The vCPU state a fault report needs; the KvmVcpu supplies it after its thread has stopped. */
export interface VcpuSnapshotSource {
  readonly id: number;
  getRegs(): kvm.KvmRegs;
  getSregs(): kvm.KvmSregs;
  /** Guest-physical address of a linear address, or null. */
  translate(linear: bigint): number | null;
}

const INSTRUCTION_BYTES = 16;
const PAGE = 4096;

/** Registers, and up to 16 instruction bytes at cs.base + rip (read page by page). */
export function snapshotVcpu(vcpu: VcpuSnapshotSource, memory: GuestMemory, exit: string, data: readonly bigint[]): VcpuFault {
  let registers: Record<string, bigint> = {};
  let instructionAddress: number | null = null;
  let instruction: Uint8Array | null = null;
  try {
    const regs = vcpu.getRegs();
    const sregs = vcpu.getSregs();
    registers = {
      ...regs,
      cr0: sregs.cr0, cr2: sregs.cr2, cr3: sregs.cr3, cr4: sregs.cr4, efer: sregs.efer,
      cs: BigInt(sregs.cs.selector), csBase: sregs.cs.base, ss: BigInt(sregs.ss.selector),
    };
    const linear = (sregs.cs.base + regs.rip) & 0xffff_ffff_ffff_ffffn;
    const bytes: number[] = [];
    while (bytes.length < INSTRUCTION_BYTES) {
      const at = linear + BigInt(bytes.length);
      const phys = vcpu.translate(at);
      if (phys === null) break;
      if (bytes.length === 0) instructionAddress = phys;
      const inPage = Math.min(INSTRUCTION_BYTES - bytes.length, PAGE - (phys % PAGE));
      if (!memory.isValid(phys, inPage)) break;
      bytes.push(...memory.slice(phys, inPage));
    }
    if (bytes.length > 0) instruction = Uint8Array.from(bytes);
  } catch {
    // A vCPU whose state cannot be read still gets its outcome, with what we have.
  }
  return { vcpu: vcpu.id, exit, registers, instructionAddress, instruction, data };
}

/** The outcome of a run that ended with `exit`. */
export function kvmExitOutcome(exit: kvm.KvmExit, vcpu: VcpuSnapshotSource, memory: GuestMemory): VmOutcome {
  const name = kvmExitName(exit.reason);
  const fault = (data: readonly bigint[] = []) => snapshotVcpu(vcpu, memory, name, data);
  switch (exit.kind) {
    case 'shutdown':
      return { kind: 'reset', reason: 'triple fault', fault: fault() };
    case 'hlt':
      return { kind: 'poweroff', reason: 'vCPU halted with no interrupt to wake it', fault: fault() };
    case 'system_event':
      switch (exit.type) {
        case kvm.KVM_SYSTEM_EVENT_SHUTDOWN: return { kind: 'poweroff', reason: 'system event: shutdown', fault: fault(exit.data) };
        case kvm.KVM_SYSTEM_EVENT_RESET: return { kind: 'reset', reason: 'system event: reset', fault: fault(exit.data) };
        case kvm.KVM_SYSTEM_EVENT_CRASH: return { kind: 'crash', reason: 'system event: crash', fault: fault(exit.data) };
        default: return { kind: 'crash', reason: `system event ${exit.type}`, fault: fault(exit.data) };
      }
    case 'internal_error':
      return {
        kind: 'crash',
        reason: `internal error: ${SUBERRORS[exit.suberror] ?? `suberror ${exit.suberror}`}`,
        fault: fault(exit.data),
      };
    case 'fail_entry':
      return {
        kind: 'crash',
        reason: `entry failed: hardware reason 0x${exit.hardwareEntryFailureReason.toString(16)} on cpu ${exit.cpu}`,
        fault: fault([exit.hardwareEntryFailureReason]),
      };
    case 'unknown':
      return { kind: 'crash', reason: `unknown exit: hardware reason 0x${exit.hardwareExitReason.toString(16)}`, fault: fault([exit.hardwareExitReason]) };
    default:
      return { kind: 'crash', reason: `unexpected exit ${name}`, fault: fault() };
  }
}
