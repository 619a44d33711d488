// Every work-around an unmodified Linux guest needs on KVM provided by the kvm_pvm module
// (guest kernel code run by KVM's instruction emulator, user code native), in one place. On a
// KVM with hardware virtualization none of this applies and nothing here is used: callers ask
// `pvmQuirks()`, which returns null unless /sys/module/kvm_pvm exists.
//
// 1. Kernel command line: `noxsave` (XRSTOR cannot be emulated) and clearcpuid= for features
//    whose instructions the emulator lacks (KVM_SET_CPUID2 cannot hide native leaf 1/7 bits).
// 2. CPUID: no KVM paravirt leaves (0x40000000-0x4000ffff): a VMCALL from guest kernel mode
//    never returns under kvm_pvm.
// 3. Emulation failures (KVM_EXIT_INTERNAL_ERROR, suberror 1, instruction bytes attached) for
//    instructions the emulator rejects are completed here and the vCPU resumes: INT3 (#BP
//    injected after it), CLAC/STAC (RFLAGS.AC), FWAIT (a no-op without pending x87 faults),
//    UD2 (#UD). KVM queues a #UD before such an exit; writing the vCPU events replaces it.
// 4. SYSCALL from user mode loads RIP/RCX/R11 but stays at CPL 3, so fetching LSTAR (a
//    supervisor page) faults and the #PF entry's first instruction, CLAC, exits here. When the
//    exception frame on the stack (error code, rip, cs, rflags, rsp, ss) says rip == LSTAR from
//    CPL 3, the frame is dropped and the SYSCALL transition done here: CS/SS from STAR, RIP =
//    LSTAR, RSP = the user's, RFLAGS = R11 & ~SFMASK.
// Caveat: with noxsave the guest saves only x87/SSE state on context switches while its user
// code runs natively with the host's AVX enabled, so AVX registers can leak between guest
// processes. Acceptable for tests and demos.

import { existsSync } from 'node:fs';
import koffi from 'koffi';
import { memberOffset, structBuffer } from '../../../native/abi-fields.ts';
import * as libc from '../../../native/libc.ts';
import * as kvm from '../../../native/kvm.ts';
import type { GuestMemory } from '../../guest-memory.ts';
import type { KvmVcpu } from './kvm-vcpu.ts';

export const KVM_PVM_SYSFS = '/sys/module/kvm_pvm';

/** Whether this host's KVM is kvm_pvm. */
export function isKvmPvm(sysfs = KVM_PVM_SYSFS): boolean {
  return existsSync(sysfs);
}

/** Kernel command-line words the guest needs under kvm_pvm. */
export const PVM_CMDLINE: readonly string[] = Object.freeze(['noxsave', 'clearcpuid=popcnt,fsgsbase,rdpid,rdrand,rdseed']);

const PARAVIRT_LEAVES_FIRST = 0x4000_0000;
const PARAVIRT_LEAVES_LAST = 0x4000_ffff;

const KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1n;
const MSR_STAR = 0xc000_0081;
const MSR_LSTAR = 0xc000_0082;
const MSR_SYSCALL_MASK = 0xc000_0084;
const RFLAGS_AC = 1n << 18n;
const RFLAGS_RESERVED = 2n;
const BP_VECTOR = 3;
const UD_VECTOR = 6;
const U64_MASK = 0xffff_ffff_ffff_ffffn;

/** What the quirks did, per kind (for reports and tests). */
export interface PvmQuirkCounts {
  int3: number;
  clac: number;
  stac: number;
  fwait: number;
  ud2: number;
  syscall: number;
  /** Emulation failures left to end the VM (an instruction not listed above). */
  unhandled: number;
}

export interface PvmQuirks {
  /** Appended to the guest's kernel command line. */
  readonly cmdline: readonly string[];
  /** KvmVmConfig.cpuid: the table without KVM's paravirt leaves. */
  cpuid(entries: kvm.KvmCpuidEntry2[], vcpuId: number): kvm.KvmCpuidEntry2[];
  /** KvmVmConfig.interceptExit: completes the instructions kvm_pvm rejects. */
  interceptExit(exit: kvm.KvmExit, vcpu: KvmVcpu, memory: GuestMemory): boolean;
  readonly counts: Readonly<PvmQuirkCounts>;
}

/** The kvm_pvm work-arounds when this host needs them, else null. */
export function pvmQuirks(sysfs = KVM_PVM_SYSFS): PvmQuirks | null {
  return isKvmPvm(sysfs) ? createPvmQuirks() : null;
}

/** The work-arounds regardless of the host (tests). */
export function createPvmQuirks(): PvmQuirks {
  const counts: PvmQuirkCounts = { int3: 0, clac: 0, stac: 0, fwait: 0, ud2: 0, syscall: 0, unhandled: 0 };
  return {
    cmdline: PVM_CMDLINE,
    counts,
    cpuid: dropParavirtLeaves,
    interceptExit(exit, vcpu, memory) {
      if (exit.kind !== 'internal_error' || exit.suberror !== kvm.KVM_INTERNAL_ERROR_EMULATION) return false;
      const handled = completeInstruction(exit.data, vcpu, memory, counts);
      if (!handled) counts.unhandled++;
      return handled;
    },
  };
}

export function dropParavirtLeaves(entries: kvm.KvmCpuidEntry2[]): kvm.KvmCpuidEntry2[] {
  return entries.filter((e) => e.function < PARAVIRT_LEAVES_FIRST || e.function > PARAVIRT_LEAVES_LAST);
}

/**
 * The instruction bytes of an emulation failure (struct kvm_run.emulation_failure: data[0] =
 * flags, then insn_size and 15 bytes), or null when KVM did not attach them.
 */
export function emulationFailureBytes(data: readonly bigint[]): Uint8Array | null {
  if (data.length < 3 || (data[0]! & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) === 0n) return null;
  const raw = new Uint8Array(16);
  const view = new DataView(raw.buffer);
  view.setBigUint64(0, data[1]!, true);
  view.setBigUint64(8, data[2]!, true);
  const size = Math.min(raw[0]!, 15);
  return raw.subarray(1, 1 + size);
}

type Insn = 'int3' | 'clac' | 'stac' | 'fwait' | 'ud2';

/** The instruction at the start of `bytes`, if it is one kvm_pvm needs completed. */
export function classifyInstruction(bytes: Uint8Array): Insn | null {
  const [b0, b1, b2] = bytes;
  if (b0 === 0xcc) return 'int3';
  if (b0 === 0x9b) return 'fwait';
  if (b0 === 0x0f && b1 === 0x0b) return 'ud2';
  if (b0 === 0x0f && b1 === 0x01 && b2 === 0xca) return 'clac';
  if (b0 === 0x0f && b1 === 0x01 && b2 === 0xcb) return 'stac';
  return null;
}

function completeInstruction(data: readonly bigint[], vcpu: KvmVcpu, memory: GuestMemory, counts: PvmQuirkCounts): boolean {
  const bytes = emulationFailureBytes(data);
  const insn = bytes && classifyInstruction(bytes);
  if (!insn) return false;
  const regs = vcpu.getRegs();
  switch (insn) {
    case 'int3':
      regs.rip = (regs.rip + 1n) & U64_MASK;
      vcpu.setRegs(regs);
      setException(vcpu, BP_VECTOR);
      break;
    case 'ud2':
      setException(vcpu, UD_VECTOR);
      break;
    case 'fwait':
      regs.rip = (regs.rip + 1n) & U64_MASK;
      vcpu.setRegs(regs);
      setException(vcpu, null);
      break;
    case 'clac':
      if (completeSyscall(regs, vcpu, memory)) {
        counts.syscall++;
        return true;
      }
      regs.rip = (regs.rip + 3n) & U64_MASK;
      regs.rflags &= ~RFLAGS_AC;
      vcpu.setRegs(regs);
      setException(vcpu, null);
      break;
    case 'stac':
      regs.rip = (regs.rip + 3n) & U64_MASK;
      regs.rflags |= RFLAGS_AC;
      vcpu.setRegs(regs);
      setException(vcpu, null);
      break;
  }
  counts[insn]++;
  return true;
}

const FRAME_WORDS = 6; // error code, rip, cs, rflags, rsp, ss

/**
 * At a CLAC that opens an exception entry: if the hardware frame at RSP is a fetch of LSTAR from
 * CPL 3 (a SYSCALL that stayed in user mode), performs the SYSCALL transition instead.
 */
function completeSyscall(regs: kvm.KvmRegs, vcpu: KvmVcpu, memory: GuestMemory): boolean {
  const frame = readFrame(regs.rsp, vcpu, memory);
  if (!frame) return false;
  const [, rip, cs, , rsp, ss] = frame as [bigint, bigint, bigint, bigint, bigint, bigint];
  if ((cs & 3n) !== 3n || (ss & 3n) !== 3n) return false;
  const msrs = readMsrs(vcpu, [MSR_STAR, MSR_LSTAR, MSR_SYSCALL_MASK]);
  const [star, lstar, mask] = msrs as [bigint, bigint, bigint];
  if (rip !== lstar || lstar === 0n) return false;
  const selector = Number((star >> 32n) & 0xfffcn);
  const sregs = vcpu.getSregs();
  const flat = { base: 0n, limit: 0xffff_ffff, present: 1, dpl: 0, s: 1, g: 1, avl: 0, unusable: 0 };
  sregs.cs = { ...flat, selector, type: 0xb, db: 0, l: 1 };
  sregs.ss = { ...flat, selector: selector + 8, type: 0x3, db: 1, l: 0 };
  vcpu.setSregs(sregs);
  regs.rip = lstar;
  regs.rsp = rsp;
  regs.rflags = (regs.r11 & ~mask & U64_MASK) | RFLAGS_RESERVED;
  vcpu.setRegs(regs);
  setException(vcpu, null);
  return true;
}

/** Six u64 at linear `rsp`, translated word by word (the frame may straddle a page), or null. */
function readFrame(rsp: bigint, vcpu: KvmVcpu, memory: GuestMemory): bigint[] | null {
  const words: bigint[] = [];
  for (let i = 0; i < FRAME_WORDS; i++) {
    const phys = vcpu.translate((rsp + BigInt(8 * i)) & U64_MASK);
    if (phys === null || !memory.isValid(phys, 8)) return null;
    words.push(memory.readU64(phys));
  }
  return words;
}

function readMsrs(vcpu: KvmVcpu, indexes: readonly number[]): bigint[] {
  const buf = kvm.encodeKvmMsrs(indexes.map((index) => ({ index, data: 0 })));
  const n = libc.ioctlPtr(vcpu.fd, kvm.KVM_GET_MSRS, buf, `KVM_GET_MSRS vCPU ${vcpu.id}`);
  const got = kvm.decodeKvmMsrs(buf, n);
  return indexes.map((index) => got.find((e) => e.index === index)?.data ?? 0n);
}

const EVENTS_SIZE = koffi.sizeof(kvm.kvm_vcpu_events);
const EX = {
  injected: memberOffset(kvm.kvm_vcpu_events, 'exception', 'injected'),
  nr: memberOffset(kvm.kvm_vcpu_events, 'exception', 'nr'),
  hasErrorCode: memberOffset(kvm.kvm_vcpu_events, 'exception', 'has_error_code'),
  pending: memberOffset(kvm.kvm_vcpu_events, 'exception', 'pending'),
  errorCode: memberOffset(kvm.kvm_vcpu_events, 'exception', 'error_code'),
  hasPayload: memberOffset(kvm.kvm_vcpu_events, 'exception_has_payload'),
};

/**
 * Replaces the vCPU's exception state (the #UD KVM queued with the failure) by `vector`
 * injected without an error code, or by none; the rest of the events round-trips unchanged.
 */
function setException(vcpu: KvmVcpu, vector: number | null): void {
  const { bytes, view } = structBuffer(EVENTS_SIZE);
  libc.ioctlPtr(vcpu.fd, kvm.KVM_GET_VCPU_EVENTS, bytes, `KVM_GET_VCPU_EVENTS vCPU ${vcpu.id}`);
  view.setUint8(EX.injected, vector === null ? 0 : 1);
  view.setUint8(EX.nr, vector ?? 0);
  view.setUint8(EX.hasErrorCode, 0);
  view.setUint8(EX.pending, 0);
  view.setUint32(EX.errorCode, 0, true);
  view.setUint8(EX.hasPayload, 0);
  libc.ioctlPtr(vcpu.fd, kvm.KVM_SET_VCPU_EVENTS, bytes, `KVM_SET_VCPU_EVENTS vCPU ${vcpu.id}`);
}
