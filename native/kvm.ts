// The x86_64 KVM UAPI the runtime uses (<linux/kvm.h>, <asm/kvm.h>): constants under their
// header names, structs as koffi types under their header names, ioctl numbers computed from the
// koffi struct sizes, and encoders/decoders for ioctl arguments and the mmapped kvm_run page.
// Conventions: a C anonymous union is the koffi member `u` (kvm_run.u.io is C's run->io);
// flexible array members (kvm_msrs.entries, kvm_cpuid2.entries) are left out of the koffi type,
// so its size is the header size and the entries follow it. x86_64 only.
import koffi from 'koffi';
import { _IO, _IOR, _IOW, _IOWR } from './ioctl-codes.ts';
import {
  bytesAt, checkIoeventfdShape, getU64, memberLayout, memberOffset, putS32, putU16, putU32, putU64, putU8,
  structBuffer, viewOf, type U64,
} from './abi-fields.ts';

export const KVM_API_VERSION = 12;
export const KVMIO = 0xae;

// ---- exit reasons (kvm_run.exit_reason) ---------------------------------------------------------
export const KVM_EXIT_UNKNOWN = 0;
export const KVM_EXIT_EXCEPTION = 1;
export const KVM_EXIT_IO = 2;
export const KVM_EXIT_HYPERCALL = 3;
export const KVM_EXIT_DEBUG = 4;
export const KVM_EXIT_HLT = 5;
export const KVM_EXIT_MMIO = 6;
export const KVM_EXIT_IRQ_WINDOW_OPEN = 7;
export const KVM_EXIT_SHUTDOWN = 8;
export const KVM_EXIT_FAIL_ENTRY = 9;
export const KVM_EXIT_INTR = 10;
export const KVM_EXIT_SET_TPR = 11;
export const KVM_EXIT_TPR_ACCESS = 12;
export const KVM_EXIT_S390_SIEIC = 13;
export const KVM_EXIT_S390_RESET = 14;
export const KVM_EXIT_DCR = 15;
export const KVM_EXIT_NMI = 16;
export const KVM_EXIT_INTERNAL_ERROR = 17;
export const KVM_EXIT_OSI = 18;
export const KVM_EXIT_PAPR_HCALL = 19;
export const KVM_EXIT_S390_UCONTROL = 20;
export const KVM_EXIT_WATCHDOG = 21;
export const KVM_EXIT_S390_TSCH = 22;
export const KVM_EXIT_EPR = 23;
export const KVM_EXIT_SYSTEM_EVENT = 24;
export const KVM_EXIT_S390_STSI = 25;
export const KVM_EXIT_IOAPIC_EOI = 26;
export const KVM_EXIT_HYPERV = 27;
export const KVM_EXIT_ARM_NISV = 28;
export const KVM_EXIT_X86_RDMSR = 29;
export const KVM_EXIT_X86_WRMSR = 30;
export const KVM_EXIT_DIRTY_RING_FULL = 31;
export const KVM_EXIT_AP_RESET_HOLD = 32;
export const KVM_EXIT_X86_BUS_LOCK = 33;
export const KVM_EXIT_XEN = 34;
export const KVM_EXIT_RISCV_SBI = 35;
export const KVM_EXIT_RISCV_CSR = 36;
export const KVM_EXIT_NOTIFY = 37;

export const KVM_EXIT_IO_IN = 0;
export const KVM_EXIT_IO_OUT = 1;

export const KVM_INTERNAL_ERROR_EMULATION = 1;
export const KVM_INTERNAL_ERROR_SIMUL_EX = 2;
export const KVM_INTERNAL_ERROR_DELIVERY_EV = 3;
export const KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON = 4;

export const KVM_SYSTEM_EVENT_SHUTDOWN = 1;
export const KVM_SYSTEM_EVENT_RESET = 2;
export const KVM_SYSTEM_EVENT_CRASH = 3;
export const KVM_SYSTEM_EVENT_WAKEUP = 4;
export const KVM_SYSTEM_EVENT_SUSPEND = 5;
export const KVM_SYSTEM_EVENT_SEV_TERM = 6;

// ---- flags --------------------------------------------------------------------------------------
export const KVM_MEM_LOG_DIRTY_PAGES = 1 << 0;
export const KVM_MEM_READONLY = 1 << 1;

export const KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0;
export const KVM_IOEVENTFD_FLAG_PIO = 1 << 1;
export const KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2;

export const KVM_IRQFD_FLAG_DEASSIGN = 1 << 0;
export const KVM_IRQFD_FLAG_RESAMPLE = 1 << 1;

export const KVM_PIT_SPEAKER_DUMMY = 1;

export const KVM_VCPUEVENT_VALID_NMI_PENDING = 0x01;
export const KVM_VCPUEVENT_VALID_SIPI_VECTOR = 0x02;
export const KVM_VCPUEVENT_VALID_SHADOW = 0x04;
export const KVM_VCPUEVENT_VALID_SMM = 0x08;
export const KVM_VCPUEVENT_VALID_PAYLOAD = 0x10;
export const KVM_VCPUEVENT_VALID_TRIPLE_FAULT = 0x20;

/** kvm_cpuid_entry2.flags: the entry depends on ECX (the header's spelling). */
export const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0;
export const KVM_CPUID_FLAG_STATEFUL_FUNC = 1 << 1;
export const KVM_CPUID_FLAG_STATE_READ_NEXT = 1 << 2;

export const KVM_NR_INTERRUPTS = 256;
export const KVM_APIC_REG_SIZE = 0x400;

// ---- capabilities (KVM_CHECK_EXTENSION) ---------------------------------------------------------
export const KVM_CAP_IRQCHIP = 0;
export const KVM_CAP_HLT = 1;
export const KVM_CAP_USER_MEMORY = 3;
export const KVM_CAP_SET_TSS_ADDR = 4;
export const KVM_CAP_EXT_CPUID = 7;
export const KVM_CAP_NR_VCPUS = 9;
export const KVM_CAP_NR_MEMSLOTS = 10;
export const KVM_CAP_SYNC_MMU = 16;
export const KVM_CAP_IRQFD = 32;
export const KVM_CAP_PIT2 = 33;
export const KVM_CAP_IOEVENTFD = 36;
export const KVM_CAP_SET_IDENTITY_MAP_ADDR = 37;
export const KVM_CAP_INTERNAL_ERROR_DATA = 40;
export const KVM_CAP_VCPU_EVENTS = 41;
export const KVM_CAP_MAX_VCPUS = 66;
export const KVM_CAP_TSC_DEADLINE_TIMER = 72;
export const KVM_CAP_READONLY_MEM = 81;
export const KVM_CAP_IRQFD_RESAMPLE = 82;
export const KVM_CAP_IOEVENTFD_ANY_LENGTH = 122;
export const KVM_CAP_MAX_VCPU_ID = 128;
export const KVM_CAP_IMMEDIATE_EXIT = 136;
export const KVM_CAP_SYSTEM_EVENT_DATA = 215;

// ---- structs ------------------------------------------------------------------------------------
const u8Array = (length: number) => koffi.array('uint8_t', length);

export const kvm_userspace_memory_region = koffi.struct('kvm_userspace_memory_region', {
  slot: 'uint32_t',
  flags: 'uint32_t',
  guest_phys_addr: 'uint64_t',
  memory_size: 'uint64_t',
  userspace_addr: 'uint64_t',
});

export const kvm_run = koffi.struct('kvm_run', {
  request_interrupt_window: 'uint8_t',
  immediate_exit: 'uint8_t',
  padding1: u8Array(6),
  exit_reason: 'uint32_t',
  ready_for_interrupt_injection: 'uint8_t',
  if_flag: 'uint8_t',
  flags: 'uint16_t',
  cr8: 'uint64_t',
  apic_base: 'uint64_t',
  u: koffi.union({
    hw: koffi.struct({ hardware_exit_reason: 'uint64_t' }),
    fail_entry: koffi.struct({ hardware_entry_failure_reason: 'uint64_t', cpu: 'uint32_t' }),
    ex: koffi.struct({ exception: 'uint32_t', error_code: 'uint32_t' }),
    io: koffi.struct({
      direction: 'uint8_t',
      size: 'uint8_t',
      port: 'uint16_t',
      count: 'uint32_t',
      data_offset: 'uint64_t',
    }),
    mmio: koffi.struct({
      phys_addr: 'uint64_t',
      data: u8Array(8),
      len: 'uint32_t',
      is_write: 'uint8_t',
    }),
    internal: koffi.struct({
      suberror: 'uint32_t',
      ndata: 'uint32_t',
      data: koffi.array('uint64_t', 16),
    }),
    system_event: koffi.struct({
      type: 'uint32_t',
      ndata: 'uint32_t',
      u: koffi.union({ flags: 'uint64_t', data: koffi.array('uint64_t', 16) }),
    }),
    padding: u8Array(256),
  }),
  kvm_valid_regs: 'uint64_t',
  kvm_dirty_regs: 'uint64_t',
  s: koffi.union({ padding: u8Array(2048) }),
});

export const kvm_regs = koffi.struct('kvm_regs', {
  rax: 'uint64_t', rbx: 'uint64_t', rcx: 'uint64_t', rdx: 'uint64_t',
  rsi: 'uint64_t', rdi: 'uint64_t', rsp: 'uint64_t', rbp: 'uint64_t',
  r8: 'uint64_t', r9: 'uint64_t', r10: 'uint64_t', r11: 'uint64_t',
  r12: 'uint64_t', r13: 'uint64_t', r14: 'uint64_t', r15: 'uint64_t',
  rip: 'uint64_t', rflags: 'uint64_t',
});

export const kvm_segment = koffi.struct('kvm_segment', {
  base: 'uint64_t',
  limit: 'uint32_t',
  selector: 'uint16_t',
  type: 'uint8_t',
  present: 'uint8_t', dpl: 'uint8_t', db: 'uint8_t', s: 'uint8_t', l: 'uint8_t', g: 'uint8_t', avl: 'uint8_t',
  unusable: 'uint8_t',
  padding: 'uint8_t',
});

export const kvm_dtable = koffi.struct('kvm_dtable', {
  base: 'uint64_t',
  limit: 'uint16_t',
  padding: koffi.array('uint16_t', 3),
});

export const kvm_sregs = koffi.struct('kvm_sregs', {
  cs: kvm_segment, ds: kvm_segment, es: kvm_segment, fs: kvm_segment, gs: kvm_segment, ss: kvm_segment,
  tr: kvm_segment, ldt: kvm_segment,
  gdt: kvm_dtable, idt: kvm_dtable,
  cr0: 'uint64_t', cr2: 'uint64_t', cr3: 'uint64_t', cr4: 'uint64_t', cr8: 'uint64_t',
  efer: 'uint64_t',
  apic_base: 'uint64_t',
  interrupt_bitmap: koffi.array('uint64_t', Math.floor((KVM_NR_INTERRUPTS + 63) / 64)),
});

export const kvm_fpu = koffi.struct('kvm_fpu', {
  fpr: koffi.array(u8Array(16), 8),
  fcw: 'uint16_t',
  fsw: 'uint16_t',
  ftwx: 'uint8_t',
  pad1: 'uint8_t',
  last_opcode: 'uint16_t',
  last_ip: 'uint64_t',
  last_dp: 'uint64_t',
  xmm: koffi.array(u8Array(16), 16),
  mxcsr: 'uint32_t',
  pad2: 'uint32_t',
});

export const kvm_msr_entry = koffi.struct('kvm_msr_entry', {
  index: 'uint32_t',
  reserved: 'uint32_t',
  data: 'uint64_t',
});

/** Header only: `struct kvm_msr_entry entries[nmsrs]` follows it (hence 8-byte alignment). */
export const kvm_msrs = koffi.struct('kvm_msrs', {
  nmsrs: [8, 'uint32_t'],
  pad: 'uint32_t',
});

export const kvm_cpuid_entry2 = koffi.struct('kvm_cpuid_entry2', {
  function: 'uint32_t',
  index: 'uint32_t',
  flags: 'uint32_t',
  eax: 'uint32_t',
  ebx: 'uint32_t',
  ecx: 'uint32_t',
  edx: 'uint32_t',
  padding: koffi.array('uint32_t', 3),
});

/** Header only: `struct kvm_cpuid_entry2 entries[nent]` follows it. */
export const kvm_cpuid2 = koffi.struct('kvm_cpuid2', {
  nent: 'uint32_t',
  padding: 'uint32_t',
});

export const kvm_vcpu_events = koffi.struct('kvm_vcpu_events', {
  exception: koffi.struct({ injected: 'uint8_t', nr: 'uint8_t', has_error_code: 'uint8_t', pending: 'uint8_t', error_code: 'uint32_t' }),
  interrupt: koffi.struct({ injected: 'uint8_t', nr: 'uint8_t', soft: 'uint8_t', shadow: 'uint8_t' }),
  nmi: koffi.struct({ injected: 'uint8_t', pending: 'uint8_t', masked: 'uint8_t', pad: 'uint8_t' }),
  sipi_vector: 'uint32_t',
  flags: 'uint32_t',
  smi: koffi.struct({ smm: 'uint8_t', pending: 'uint8_t', smm_inside_nmi: 'uint8_t', latched_init: 'uint8_t' }),
  triple_fault: koffi.struct({ pending: 'uint8_t' }),
  reserved: u8Array(26),
  exception_has_payload: 'uint8_t',
  exception_payload: 'uint64_t',
});

export const kvm_lapic_state = koffi.struct('kvm_lapic_state', {
  regs: u8Array(KVM_APIC_REG_SIZE),
});

export const kvm_pit_config = koffi.struct('kvm_pit_config', {
  flags: 'uint32_t',
  pad: koffi.array('uint32_t', 15),
});

export const kvm_irq_level = koffi.struct('kvm_irq_level', {
  u: koffi.union({ irq: 'uint32_t', status: 'int32_t' }),
  level: 'uint32_t',
});

export const kvm_ioeventfd = koffi.struct('kvm_ioeventfd', {
  datamatch: 'uint64_t',
  addr: 'uint64_t',
  len: 'uint32_t',
  fd: 'int32_t',
  flags: 'uint32_t',
  pad: u8Array(36),
});

export const kvm_irqfd = koffi.struct('kvm_irqfd', {
  fd: 'uint32_t',
  gsi: 'uint32_t',
  flags: 'uint32_t',
  resamplefd: 'uint32_t',
  pad: u8Array(16),
});

export const kvm_translation = koffi.struct('kvm_translation', {
  linear_address: 'uint64_t',
  physical_address: 'uint64_t',
  valid: 'uint8_t',
  writeable: 'uint8_t',
  usermode: 'uint8_t',
  pad: u8Array(5),
});

// ---- ioctls -------------------------------------------------------------------------------------
// /dev/kvm
export const KVM_GET_API_VERSION = _IO(KVMIO, 0x00);
export const KVM_CREATE_VM = _IO(KVMIO, 0x01);
export const KVM_CHECK_EXTENSION = _IO(KVMIO, 0x03);
export const KVM_GET_VCPU_MMAP_SIZE = _IO(KVMIO, 0x04);
export const KVM_GET_SUPPORTED_CPUID = _IOWR(KVMIO, 0x05, koffi.sizeof(kvm_cpuid2));
// VM fd
export const KVM_CREATE_VCPU = _IO(KVMIO, 0x41);
export const KVM_SET_USER_MEMORY_REGION = _IOW(KVMIO, 0x46, koffi.sizeof(kvm_userspace_memory_region));
export const KVM_SET_TSS_ADDR = _IO(KVMIO, 0x47);
export const KVM_SET_IDENTITY_MAP_ADDR = _IOW(KVMIO, 0x48, koffi.sizeof('uint64_t'));
export const KVM_CREATE_IRQCHIP = _IO(KVMIO, 0x60);
export const KVM_IRQ_LINE = _IOW(KVMIO, 0x61, koffi.sizeof(kvm_irq_level));
export const KVM_IRQFD = _IOW(KVMIO, 0x76, koffi.sizeof(kvm_irqfd));
export const KVM_CREATE_PIT2 = _IOW(KVMIO, 0x77, koffi.sizeof(kvm_pit_config));
export const KVM_IOEVENTFD = _IOW(KVMIO, 0x79, koffi.sizeof(kvm_ioeventfd));
// vCPU fd
export const KVM_RUN = _IO(KVMIO, 0x80);
export const KVM_GET_REGS = _IOR(KVMIO, 0x81, koffi.sizeof(kvm_regs));
export const KVM_SET_REGS = _IOW(KVMIO, 0x82, koffi.sizeof(kvm_regs));
export const KVM_GET_SREGS = _IOR(KVMIO, 0x83, koffi.sizeof(kvm_sregs));
export const KVM_SET_SREGS = _IOW(KVMIO, 0x84, koffi.sizeof(kvm_sregs));
export const KVM_TRANSLATE = _IOWR(KVMIO, 0x85, koffi.sizeof(kvm_translation));
export const KVM_GET_MSRS = _IOWR(KVMIO, 0x88, koffi.sizeof(kvm_msrs));
export const KVM_SET_MSRS = _IOW(KVMIO, 0x89, koffi.sizeof(kvm_msrs));
export const KVM_GET_FPU = _IOR(KVMIO, 0x8c, koffi.sizeof(kvm_fpu));
export const KVM_SET_FPU = _IOW(KVMIO, 0x8d, koffi.sizeof(kvm_fpu));
export const KVM_GET_LAPIC = _IOR(KVMIO, 0x8e, koffi.sizeof(kvm_lapic_state));
export const KVM_SET_LAPIC = _IOW(KVMIO, 0x8f, koffi.sizeof(kvm_lapic_state));
export const KVM_SET_CPUID2 = _IOW(KVMIO, 0x90, koffi.sizeof(kvm_cpuid2));
export const KVM_GET_VCPU_EVENTS = _IOR(KVMIO, 0x9f, koffi.sizeof(kvm_vcpu_events));
export const KVM_SET_VCPU_EVENTS = _IOW(KVMIO, 0xa0, koffi.sizeof(kvm_vcpu_events));

// ---- layout of the mmapped kvm_run page (byte offsets from koffi) -------------------------------
export const kvmRunLayout = Object.freeze({
  size: koffi.sizeof(kvm_run),
  immediateExit: memberOffset(kvm_run, 'immediate_exit'),
  exitReason: memberOffset(kvm_run, 'exit_reason'),
  hwExitReason: memberOffset(kvm_run, 'u', 'hw', 'hardware_exit_reason'),
  failEntryReason: memberOffset(kvm_run, 'u', 'fail_entry', 'hardware_entry_failure_reason'),
  failEntryCpu: memberOffset(kvm_run, 'u', 'fail_entry', 'cpu'),
  ioDirection: memberOffset(kvm_run, 'u', 'io', 'direction'),
  ioSize: memberOffset(kvm_run, 'u', 'io', 'size'),
  ioPort: memberOffset(kvm_run, 'u', 'io', 'port'),
  ioCount: memberOffset(kvm_run, 'u', 'io', 'count'),
  ioDataOffset: memberOffset(kvm_run, 'u', 'io', 'data_offset'),
  mmioPhysAddr: memberOffset(kvm_run, 'u', 'mmio', 'phys_addr'),
  mmioData: memberOffset(kvm_run, 'u', 'mmio', 'data'),
  mmioDataSize: memberLayout(kvm_run, 'u', 'mmio', 'data').size,
  mmioLen: memberOffset(kvm_run, 'u', 'mmio', 'len'),
  mmioIsWrite: memberOffset(kvm_run, 'u', 'mmio', 'is_write'),
  internalSuberror: memberOffset(kvm_run, 'u', 'internal', 'suberror'),
  internalNdata: memberOffset(kvm_run, 'u', 'internal', 'ndata'),
  internalData: memberOffset(kvm_run, 'u', 'internal', 'data'),
  systemEventType: memberOffset(kvm_run, 'u', 'system_event', 'type'),
  systemEventNdata: memberOffset(kvm_run, 'u', 'system_event', 'ndata'),
  systemEventData: memberOffset(kvm_run, 'u', 'system_event', 'u', 'data'),
});

const L = kvmRunLayout;
const RUN_DATA_WORDS = 16; // internal.data[16], system_event.data[16]

// ---- kvm_run decoding ---------------------------------------------------------------------------
interface ExitBase { reason: number }
export interface KvmIoExit extends ExitBase {
  kind: 'io';
  direction: 'in' | 'out';
  /** Access width in bytes (1, 2 or 4). */
  size: number;
  port: number;
  count: number;
  /** size*count bytes inside the run mapping (no copy): the OUT data, or where IN data goes. */
  data: Uint8Array;
}
export interface KvmMmioExit extends ExitBase {
  kind: 'mmio';
  physAddr: number;
  len: number;
  isWrite: boolean;
  /** mmio.data in the run page (no copy), min(len, 8) bytes. */
  data: Uint8Array;
}
export interface KvmInternalErrorExit extends ExitBase { kind: 'internal_error'; suberror: number; data: bigint[] }
export interface KvmSystemEventExit extends ExitBase {
  kind: 'system_event';
  /** KVM_SYSTEM_EVENT_* */
  type: number;
  /** The pre-KVM_CAP_SYSTEM_EVENT_DATA `flags` word (aliases data[0]). */
  flags: bigint;
  data: bigint[];
}
export interface KvmFailEntryExit extends ExitBase { kind: 'fail_entry'; hardwareEntryFailureReason: bigint; cpu: number }
export interface KvmUnknownExit extends ExitBase { kind: 'unknown'; hardwareExitReason: bigint }
export interface KvmSimpleExit extends ExitBase { kind: 'hlt' | 'shutdown' | 'intr' | 'irq_window_open' }
export interface KvmOtherExit extends ExitBase { kind: 'other' }

export type KvmExit =
  | KvmIoExit | KvmMmioExit | KvmInternalErrorExit | KvmSystemEventExit | KvmFailEntryExit
  | KvmUnknownExit | KvmSimpleExit | KvmOtherExit;

function checkRunView(view: DataView): void {
  if (view.byteLength < L.size) {
    throw new RangeError(`kvm_run: view of ${view.byteLength} bytes is shorter than ${L.size}`);
  }
}

function u64Words(view: DataView, offset: number, countOffset: number): bigint[] {
  const n = Math.min(view.getUint32(countOffset, true), RUN_DATA_WORDS);
  const words = new Array<bigint>(n);
  for (let i = 0; i < n; i++) words[i] = view.getBigUint64(offset + 8 * i, true);
  return words;
}

/** The kvm_run.io data window, bounds-checked against the mapping. */
function ioData(view: DataView): Uint8Array {
  const length = view.getUint8(L.ioSize) * view.getUint32(L.ioCount, true);
  const offset = getU64(view, L.ioDataOffset);
  if (offset + length > view.byteLength) {
    throw new RangeError(`kvm_run.io: data at ${offset}+${length} lies outside the ${view.byteLength}-byte run mapping (map KVM_GET_VCPU_MMAP_SIZE bytes)`);
  }
  return bytesAt(view, offset, length);
}

/** exit_reason alone (KVM_EXIT_*), for dispatch without building an exit object. */
export function readKvmExitReason(view: DataView): number {
  return view.getUint32(L.exitReason, true);
}

/**
 * Decodes kvm_run after KVM_RUN returned 0. `view` must cover the whole vCPU mapping
 * (KVM_GET_VCPU_MMAP_SIZE bytes: port I/O data lives on the following page). Byte arrays are
 * views into the mapping and change on the next KVM_RUN.
 */
export function readKvmExit(view: DataView): KvmExit {
  checkRunView(view);
  const reason = view.getUint32(L.exitReason, true);
  switch (reason) {
    case KVM_EXIT_IO:
      return {
        kind: 'io', reason,
        direction: view.getUint8(L.ioDirection) === KVM_EXIT_IO_OUT ? 'out' : 'in',
        size: view.getUint8(L.ioSize),
        port: view.getUint16(L.ioPort, true),
        count: view.getUint32(L.ioCount, true),
        data: ioData(view),
      };
    case KVM_EXIT_MMIO: {
      const len = view.getUint32(L.mmioLen, true);
      return {
        kind: 'mmio', reason,
        physAddr: getU64(view, L.mmioPhysAddr),
        len,
        isWrite: view.getUint8(L.mmioIsWrite) !== 0,
        data: bytesAt(view, L.mmioData, Math.min(len, L.mmioDataSize)),
      };
    }
    case KVM_EXIT_HLT: return { kind: 'hlt', reason };
    case KVM_EXIT_SHUTDOWN: return { kind: 'shutdown', reason };
    case KVM_EXIT_INTR: return { kind: 'intr', reason };
    case KVM_EXIT_IRQ_WINDOW_OPEN: return { kind: 'irq_window_open', reason };
    case KVM_EXIT_INTERNAL_ERROR:
      return {
        kind: 'internal_error', reason,
        suberror: view.getUint32(L.internalSuberror, true),
        data: u64Words(view, L.internalData, L.internalNdata),
      };
    case KVM_EXIT_SYSTEM_EVENT:
      return {
        kind: 'system_event', reason,
        type: view.getUint32(L.systemEventType, true),
        flags: view.getBigUint64(L.systemEventData, true),
        data: u64Words(view, L.systemEventData, L.systemEventNdata),
      };
    case KVM_EXIT_FAIL_ENTRY:
      return {
        kind: 'fail_entry', reason,
        hardwareEntryFailureReason: view.getBigUint64(L.failEntryReason, true),
        cpu: view.getUint32(L.failEntryCpu, true),
      };
    case KVM_EXIT_UNKNOWN:
      return { kind: 'unknown', reason, hardwareExitReason: view.getBigUint64(L.hwExitReason, true) };
    default:
      return { kind: 'other', reason };
  }
}

/** Answers a port-I/O IN exit with raw bytes (at most size*count; the rest is zeroed). */
export function writeKvmIoIn(view: DataView, data: Uint8Array): void {
  checkRunView(view);
  const target = ioData(view);
  if (data.length > target.length) throw new RangeError(`kvm_run.io: ${data.length} bytes exceed size*count = ${target.length}`);
  target.set(data);
  target.fill(0, data.length);
}

/** Answers a single (count 1) IN with an integer, little-endian over io.size bytes. No allocation. */
export function writeKvmIoInValue(view: DataView, value: number): void {
  checkRunView(view);
  const size = view.getUint8(L.ioSize);
  const offset = getU64(view, L.ioDataOffset);
  if (offset + size > view.byteLength) throw new RangeError('kvm_run.io: data lies outside the run mapping');
  if (size === 1) putU8(view, offset, value, 'kvm_run.io data');
  else if (size === 2) putU16(view, offset, value, 'kvm_run.io data');
  else if (size === 4) putU32(view, offset, value, 'kvm_run.io data');
  else throw new RangeError(`kvm_run.io.size: ${size} is not 1, 2 or 4`);
}

/** Answers an MMIO read: copies `data` (at most 8 bytes) into mmio.data, zeroing the rest. */
export function writeKvmMmioReadData(view: DataView, data: Uint8Array): void {
  checkRunView(view);
  if (data.length > L.mmioDataSize) throw new RangeError(`kvm_run.mmio.data: ${data.length} bytes do not fit in 8`);
  const target = bytesAt(view, L.mmioData, L.mmioDataSize);
  target.set(data);
  target.fill(0, data.length);
}

/** Answers an MMIO read with an integer value (little-endian). No allocation. */
export function writeKvmMmioReadValue(view: DataView, value: number): void {
  checkRunView(view);
  putU64(view, L.mmioData, value, 'kvm_run.mmio.data');
}

/** Sets or clears immediate_exit; while set KVM_RUN returns EINTR at once. */
export function setKvmImmediateExit(view: DataView, on: boolean): void {
  checkRunView(view);
  view.setUint8(L.immediateExit, on ? 1 : 0);
}

// ---- VM-fd argument encoders --------------------------------------------------------------------
export interface KvmUserMemRegion {
  slot: number;
  /** KVM_MEM_* */
  flags: number;
  guestPhysAddr: U64;
  /** 0 deletes the slot. */
  memorySize: U64;
  userspaceAddr: U64;
}

const MEM_FLAGS = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY;

export function encodeKvmUserMemRegion(region: KvmUserMemRegion): Uint8Array {
  if ((region.flags & ~MEM_FLAGS) !== 0) throw new RangeError(`kvm_userspace_memory_region.flags: unknown bits in ${region.flags}`);
  const T = kvm_userspace_memory_region;
  const { bytes, view } = structBuffer(koffi.sizeof(T));
  putU32(view, memberOffset(T, 'slot'), region.slot, 'kvm_userspace_memory_region.slot');
  putU32(view, memberOffset(T, 'flags'), region.flags, 'kvm_userspace_memory_region.flags');
  putU64(view, memberOffset(T, 'guest_phys_addr'), region.guestPhysAddr, 'kvm_userspace_memory_region.guest_phys_addr');
  putU64(view, memberOffset(T, 'memory_size'), region.memorySize, 'kvm_userspace_memory_region.memory_size');
  putU64(view, memberOffset(T, 'userspace_addr'), region.userspaceAddr, 'kvm_userspace_memory_region.userspace_addr');
  return bytes;
}

export interface KvmIoeventfd {
  addr: U64;
  /** 1, 2, 4 or 8; 0 = any width (KVM_CAP_IOEVENTFD_ANY_LENGTH, not with datamatch). */
  len: number;
  fd: number;
  /** Sets KVM_IOEVENTFD_FLAG_DATAMATCH. */
  datamatch?: U64;
  /** Port I/O instead of MMIO (KVM_IOEVENTFD_FLAG_PIO). */
  pio?: boolean;
  /** Remove a registration made with the same fields (KVM_IOEVENTFD_FLAG_DEASSIGN). */
  deassign?: boolean;
}

export function encodeKvmIoeventfd(arg: KvmIoeventfd): Uint8Array {
  checkIoeventfdShape('kvm_ioeventfd', arg.len, arg.fd, arg.datamatch);
  const flags = (arg.datamatch === undefined ? 0 : KVM_IOEVENTFD_FLAG_DATAMATCH)
    | (arg.pio ? KVM_IOEVENTFD_FLAG_PIO : 0) | (arg.deassign ? KVM_IOEVENTFD_FLAG_DEASSIGN : 0);
  const T = kvm_ioeventfd;
  const { bytes, view } = structBuffer(koffi.sizeof(T));
  putU64(view, memberOffset(T, 'datamatch'), arg.datamatch ?? 0, 'kvm_ioeventfd.datamatch');
  putU64(view, memberOffset(T, 'addr'), arg.addr, 'kvm_ioeventfd.addr');
  putU32(view, memberOffset(T, 'len'), arg.len, 'kvm_ioeventfd.len');
  putS32(view, memberOffset(T, 'fd'), arg.fd, 'kvm_ioeventfd.fd');
  putU32(view, memberOffset(T, 'flags'), flags, 'kvm_ioeventfd.flags');
  return bytes;
}

export interface KvmIrqfd {
  fd: number;
  gsi: number;
  /** Level-triggered: KVM signals this eventfd when the guest EOIs (KVM_IRQFD_FLAG_RESAMPLE). */
  resamplefd?: number;
  deassign?: boolean;
}

export function encodeKvmIrqfd(arg: KvmIrqfd): Uint8Array {
  if (arg.deassign && arg.resamplefd !== undefined) throw new RangeError('kvm_irqfd: deassign takes no resamplefd');
  const flags = (arg.deassign ? KVM_IRQFD_FLAG_DEASSIGN : 0) | (arg.resamplefd !== undefined ? KVM_IRQFD_FLAG_RESAMPLE : 0);
  const T = kvm_irqfd;
  const { bytes, view } = structBuffer(koffi.sizeof(T));
  putU32(view, memberOffset(T, 'fd'), arg.fd, 'kvm_irqfd.fd');
  putU32(view, memberOffset(T, 'gsi'), arg.gsi, 'kvm_irqfd.gsi');
  putU32(view, memberOffset(T, 'flags'), flags, 'kvm_irqfd.flags');
  putU32(view, memberOffset(T, 'resamplefd'), arg.resamplefd ?? 0, 'kvm_irqfd.resamplefd');
  return bytes;
}

export function encodeKvmIrqLevel(arg: { irq: number; level: number }): Uint8Array {
  const { bytes, view } = structBuffer(koffi.sizeof(kvm_irq_level));
  putU32(view, memberOffset(kvm_irq_level, 'u', 'irq'), arg.irq, 'kvm_irq_level.irq');
  putU32(view, memberOffset(kvm_irq_level, 'level'), arg.level, 'kvm_irq_level.level');
  return bytes;
}

export function encodeKvmPitConfig(arg: { flags: number }): Uint8Array {
  const { bytes, view } = structBuffer(koffi.sizeof(kvm_pit_config));
  putU32(view, memberOffset(kvm_pit_config, 'flags'), arg.flags, 'kvm_pit_config.flags');
  return bytes;
}

export function encodeKvmTranslation(linearAddress: U64): Uint8Array {
  const { bytes, view } = structBuffer(koffi.sizeof(kvm_translation));
  putU64(view, memberOffset(kvm_translation, 'linear_address'), linearAddress, 'kvm_translation.linear_address');
  return bytes;
}

export interface KvmTranslation { linearAddress: bigint; physicalAddress: bigint; valid: boolean; writeable: boolean; usermode: boolean }

export function decodeKvmTranslation(bytes: Uint8Array): KvmTranslation {
  const T = kvm_translation;
  const view = viewOf(bytes, koffi.sizeof(T), 'kvm_translation');
  return {
    linearAddress: view.getBigUint64(memberOffset(T, 'linear_address'), true),
    physicalAddress: view.getBigUint64(memberOffset(T, 'physical_address'), true),
    valid: view.getUint8(memberOffset(T, 'valid')) !== 0,
    writeable: view.getUint8(memberOffset(T, 'writeable')) !== 0,
    usermode: view.getUint8(memberOffset(T, 'usermode')) !== 0,
  };
}

// ---- registers ----------------------------------------------------------------------------------
export const kvmRegNames = Object.freeze([
  'rax', 'rbx', 'rcx', 'rdx', 'rsi', 'rdi', 'rsp', 'rbp',
  'r8', 'r9', 'r10', 'r11', 'r12', 'r13', 'r14', 'r15', 'rip', 'rflags',
] as const);
export type KvmRegs = Record<(typeof kvmRegNames)[number], bigint>;

export function encodeKvmRegs(regs: KvmRegs): Uint8Array {
  const { bytes, view } = structBuffer(koffi.sizeof(kvm_regs));
  for (const name of kvmRegNames) putU64(view, memberOffset(kvm_regs, name), regs[name], `kvm_regs.${name}`);
  return bytes;
}

export function decodeKvmRegs(bytes: Uint8Array): KvmRegs {
  const view = viewOf(bytes, koffi.sizeof(kvm_regs), 'kvm_regs');
  const regs = {} as KvmRegs;
  for (const name of kvmRegNames) regs[name] = view.getBigUint64(memberOffset(kvm_regs, name), true);
  return regs;
}

export interface KvmSegment {
  base: bigint; limit: number; selector: number; type: number;
  present: number; dpl: number; db: number; s: number; l: number; g: number; avl: number; unusable: number;
}
export interface KvmDtable { base: bigint; limit: number }

const SEGMENT_BYTE_FIELDS = ['type', 'present', 'dpl', 'db', 's', 'l', 'g', 'avl', 'unusable'] as const;
const SEGMENT_NAMES = ['cs', 'ds', 'es', 'fs', 'gs', 'ss', 'tr', 'ldt'] as const;
const DTABLE_NAMES = ['gdt', 'idt'] as const;
const CONTROL_NAMES = [['cr0', 'cr0'], ['cr2', 'cr2'], ['cr3', 'cr3'], ['cr4', 'cr4'], ['cr8', 'cr8'],
  ['efer', 'efer'], ['apicBase', 'apic_base']] as const;

export type KvmSregs = Record<(typeof SEGMENT_NAMES)[number], KvmSegment>
  & Record<(typeof DTABLE_NAMES)[number], KvmDtable>
  & Record<(typeof CONTROL_NAMES)[number][0], bigint>
  & { /** 256 bits, one per interrupt vector: 4 words. */ interruptBitmap: bigint[] };

function putSegment(view: DataView, base: number, seg: KvmSegment, what: string): void {
  putU64(view, base + memberOffset(kvm_segment, 'base'), seg.base, `${what}.base`);
  putU32(view, base + memberOffset(kvm_segment, 'limit'), seg.limit, `${what}.limit`);
  putU16(view, base + memberOffset(kvm_segment, 'selector'), seg.selector, `${what}.selector`);
  for (const f of SEGMENT_BYTE_FIELDS) putU8(view, base + memberOffset(kvm_segment, f), seg[f], `${what}.${f}`);
}

function getSegment(view: DataView, base: number): KvmSegment {
  const seg = {
    base: view.getBigUint64(base + memberOffset(kvm_segment, 'base'), true),
    limit: view.getUint32(base + memberOffset(kvm_segment, 'limit'), true),
    selector: view.getUint16(base + memberOffset(kvm_segment, 'selector'), true),
  } as KvmSegment;
  for (const f of SEGMENT_BYTE_FIELDS) seg[f] = view.getUint8(base + memberOffset(kvm_segment, f));
  return seg;
}

const BITMAP_WORDS = memberLayout(kvm_sregs, 'interrupt_bitmap').size / 8;

export function encodeKvmSregs(sregs: KvmSregs): Uint8Array {
  const { bytes, view } = structBuffer(koffi.sizeof(kvm_sregs));
  for (const name of SEGMENT_NAMES) putSegment(view, memberOffset(kvm_sregs, name), sregs[name], `kvm_sregs.${name}`);
  for (const name of DTABLE_NAMES) {
    putU64(view, memberOffset(kvm_sregs, name, 'base'), sregs[name].base, `kvm_sregs.${name}.base`);
    putU16(view, memberOffset(kvm_sregs, name, 'limit'), sregs[name].limit, `kvm_sregs.${name}.limit`);
  }
  for (const [js, c] of CONTROL_NAMES) putU64(view, memberOffset(kvm_sregs, c), sregs[js], `kvm_sregs.${c}`);
  if (sregs.interruptBitmap.length !== BITMAP_WORDS) {
    throw new RangeError(`kvm_sregs.interrupt_bitmap: ${sregs.interruptBitmap.length} words, expected ${BITMAP_WORDS}`);
  }
  const bitmap = memberOffset(kvm_sregs, 'interrupt_bitmap');
  sregs.interruptBitmap.forEach((w, i) => putU64(view, bitmap + 8 * i, w, `kvm_sregs.interrupt_bitmap[${i}]`));
  return bytes;
}

export function decodeKvmSregs(bytes: Uint8Array): KvmSregs {
  const view = viewOf(bytes, koffi.sizeof(kvm_sregs), 'kvm_sregs');
  const sregs = {} as KvmSregs;
  for (const name of SEGMENT_NAMES) sregs[name] = getSegment(view, memberOffset(kvm_sregs, name));
  for (const name of DTABLE_NAMES) {
    sregs[name] = {
      base: view.getBigUint64(memberOffset(kvm_sregs, name, 'base'), true),
      limit: view.getUint16(memberOffset(kvm_sregs, name, 'limit'), true),
    };
  }
  for (const [js, c] of CONTROL_NAMES) sregs[js] = view.getBigUint64(memberOffset(kvm_sregs, c), true);
  const bitmap = memberOffset(kvm_sregs, 'interrupt_bitmap');
  sregs.interruptBitmap = Array.from({ length: BITMAP_WORDS }, (_, i) => view.getBigUint64(bitmap + 8 * i, true));
  return sregs;
}

export interface KvmFpu {
  /** 8 x87 registers, 16 bytes each (fxsave layout). */
  fpr: Uint8Array;
  fcw: number;
  fsw: number;
  /** Abridged tag word, fxsave format. */
  ftwx: number;
  lastOpcode: number;
  lastIp: bigint;
  lastDp: bigint;
  /** 16 XMM registers, 16 bytes each. */
  xmm: Uint8Array;
  mxcsr: number;
}

const FPR = memberLayout(kvm_fpu, 'fpr');
const XMM = memberLayout(kvm_fpu, 'xmm');

/** Fields left out are zero (the usual reset state sets only fcw = 0x37f and mxcsr = 0x1f80). */
export function encodeKvmFpu(fpu: Partial<KvmFpu>): Uint8Array {
  const { bytes, view } = structBuffer(koffi.sizeof(kvm_fpu));
  for (const [bytesIn, where, name] of [[fpu.fpr, FPR, 'fpr'], [fpu.xmm, XMM, 'xmm']] as const) {
    if (bytesIn === undefined) continue;
    if (bytesIn.length !== where.size) throw new RangeError(`kvm_fpu.${name}: ${bytesIn.length} bytes, expected ${where.size}`);
    bytes.set(bytesIn, where.offset);
  }
  putU16(view, memberOffset(kvm_fpu, 'fcw'), fpu.fcw ?? 0, 'kvm_fpu.fcw');
  putU16(view, memberOffset(kvm_fpu, 'fsw'), fpu.fsw ?? 0, 'kvm_fpu.fsw');
  putU8(view, memberOffset(kvm_fpu, 'ftwx'), fpu.ftwx ?? 0, 'kvm_fpu.ftwx');
  putU16(view, memberOffset(kvm_fpu, 'last_opcode'), fpu.lastOpcode ?? 0, 'kvm_fpu.last_opcode');
  putU64(view, memberOffset(kvm_fpu, 'last_ip'), fpu.lastIp ?? 0n, 'kvm_fpu.last_ip');
  putU64(view, memberOffset(kvm_fpu, 'last_dp'), fpu.lastDp ?? 0n, 'kvm_fpu.last_dp');
  putU32(view, memberOffset(kvm_fpu, 'mxcsr'), fpu.mxcsr ?? 0, 'kvm_fpu.mxcsr');
  return bytes;
}

export function decodeKvmFpu(bytes: Uint8Array): KvmFpu {
  const view = viewOf(bytes, koffi.sizeof(kvm_fpu), 'kvm_fpu');
  return {
    fpr: bytes.slice(FPR.offset, FPR.offset + FPR.size),
    fcw: view.getUint16(memberOffset(kvm_fpu, 'fcw'), true),
    fsw: view.getUint16(memberOffset(kvm_fpu, 'fsw'), true),
    ftwx: view.getUint8(memberOffset(kvm_fpu, 'ftwx')),
    lastOpcode: view.getUint16(memberOffset(kvm_fpu, 'last_opcode'), true),
    lastIp: view.getBigUint64(memberOffset(kvm_fpu, 'last_ip'), true),
    lastDp: view.getBigUint64(memberOffset(kvm_fpu, 'last_dp'), true),
    xmm: bytes.slice(XMM.offset, XMM.offset + XMM.size),
    mxcsr: view.getUint32(memberOffset(kvm_fpu, 'mxcsr'), true),
  };
}

// ---- MSRs and CPUID (header + flexible array) ---------------------------------------------------
export interface KvmMsrEntry { index: number; data: U64 }

const MSRS_HEADER = koffi.sizeof(kvm_msrs);
const MSR_ENTRY = koffi.sizeof(kvm_msr_entry);

/** struct kvm_msrs with its entries, for KVM_SET_MSRS (data written) or KVM_GET_MSRS (data filled in). */
export function encodeKvmMsrs(entries: readonly KvmMsrEntry[]): Uint8Array {
  const { bytes, view } = structBuffer(MSRS_HEADER + entries.length * MSR_ENTRY);
  putU32(view, memberOffset(kvm_msrs, 'nmsrs'), entries.length, 'kvm_msrs.nmsrs');
  entries.forEach((e, i) => {
    const at = MSRS_HEADER + i * MSR_ENTRY;
    putU32(view, at + memberOffset(kvm_msr_entry, 'index'), e.index, `kvm_msrs.entries[${i}].index`);
    putU64(view, at + memberOffset(kvm_msr_entry, 'data'), e.data, `kvm_msrs.entries[${i}].data`);
  });
  return bytes;
}

/** The first `count` entries (default nmsrs; KVM_GET_MSRS returns how many it actually read). */
export function decodeKvmMsrs(bytes: Uint8Array, count?: number): { index: number; data: bigint }[] {
  const view = viewOf(bytes, MSRS_HEADER, 'kvm_msrs');
  const n = count ?? view.getUint32(memberOffset(kvm_msrs, 'nmsrs'), true);
  if (MSRS_HEADER + n * MSR_ENTRY > bytes.byteLength) throw new RangeError(`kvm_msrs: ${n} entries exceed the ${bytes.byteLength}-byte buffer`);
  return Array.from({ length: n }, (_, i) => {
    const at = MSRS_HEADER + i * MSR_ENTRY;
    return {
      index: view.getUint32(at + memberOffset(kvm_msr_entry, 'index'), true),
      data: view.getBigUint64(at + memberOffset(kvm_msr_entry, 'data'), true),
    };
  });
}

export interface KvmCpuidEntry2 {
  function: number; index: number; flags: number; eax: number; ebx: number; ecx: number; edx: number;
}

const CPUID2_HEADER = koffi.sizeof(kvm_cpuid2);
const CPUID_ENTRY = koffi.sizeof(kvm_cpuid_entry2);
const CPUID_FIELDS = ['function', 'index', 'flags', 'eax', 'ebx', 'ecx', 'edx'] as const;

/** struct kvm_cpuid2 with `entries`, for KVM_SET_CPUID2. */
export function encodeKvmCpuid2(entries: readonly KvmCpuidEntry2[]): Uint8Array {
  const bytes = allocKvmCpuid2(entries.length);
  const view = new DataView(bytes.buffer);
  entries.forEach((e, i) => {
    const at = CPUID2_HEADER + i * CPUID_ENTRY;
    for (const f of CPUID_FIELDS) putU32(view, at + memberOffset(kvm_cpuid_entry2, f), e[f], `kvm_cpuid2.entries[${i}].${f}`);
  });
  return bytes;
}

/** An empty struct kvm_cpuid2 with room for `capacity` entries (nent = capacity), for KVM_GET_SUPPORTED_CPUID. */
export function allocKvmCpuid2(capacity: number): Uint8Array {
  const { bytes, view } = structBuffer(CPUID2_HEADER + capacity * CPUID_ENTRY);
  putU32(view, memberOffset(kvm_cpuid2, 'nent'), capacity, 'kvm_cpuid2.nent');
  return bytes;
}

export function decodeKvmCpuid2(bytes: Uint8Array): KvmCpuidEntry2[] {
  const view = viewOf(bytes, CPUID2_HEADER, 'kvm_cpuid2');
  const n = view.getUint32(memberOffset(kvm_cpuid2, 'nent'), true);
  if (CPUID2_HEADER + n * CPUID_ENTRY > bytes.byteLength) throw new RangeError(`kvm_cpuid2: nent ${n} exceeds the ${bytes.byteLength}-byte buffer`);
  return Array.from({ length: n }, (_, i) => {
    const at = CPUID2_HEADER + i * CPUID_ENTRY;
    const e = {} as KvmCpuidEntry2;
    for (const f of CPUID_FIELDS) e[f] = view.getUint32(at + memberOffset(kvm_cpuid_entry2, f), true);
    return e;
  });
}
