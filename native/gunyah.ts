// The Gunyah VM-manager UAPI of Android 14 (android14-6.1 <linux/gunyah.h>, == upstream series
// v14 plus the Android-only 'A' ioctls), exactly as /work/shared/seed/gunyah.h defines it:
// every ioctl, #define and enum value under its header name, every struct as a koffi type under
// its header name, and the encoders/decoders the runtime uses on /dev/gunyah, VM and vCPU fds.
// Ioctl numbers are computed from the koffi struct sizes, never typed in.
// Conventions: a C anonymous union is the koffi member `u` (gh_vcpu_run.u.mmio is C's run->mmio).
// Later ABI variants (v15+ `GUNYAH_*`, guest_memfd) belong in a sibling module, not here.
import koffi from 'koffi';
import { _IO, _IOW } from './ioctl-codes.ts';
import {
  bytesAt, checkIoeventfdShape, getU64, memberLayout, memberOffset, putS32, putU32, putU64, structBuffer, type U64,
} from './abi-fields.ts';

// ---- ioctl types --------------------------------------------------------------------------------
export const GH_IOCTL_TYPE = 'G'.charCodeAt(0);
export const GH_ANDROID_IOCTL_TYPE = 'A'.charCodeAt(0);

// ---- enum gh_mem_flags --------------------------------------------------------------------------
export const GH_MEM_ALLOW_READ = 1 << 0;
export const GH_MEM_ALLOW_WRITE = 1 << 1;
export const GH_MEM_ALLOW_EXEC = 1 << 2;

// ---- enum gh_fn_type ----------------------------------------------------------------------------
export const GH_FN_VCPU = 1;
export const GH_FN_IRQFD = 2;
export const GH_FN_IOEVENTFD = 3;

export const GH_FN_MAX_ARG_SIZE = 256;

// ---- enum gh_irqfd_flags / gh_ioeventfd_flags ---------------------------------------------------
export const GH_IRQFD_FLAGS_LEVEL = 1 << 0;
export const GH_IOEVENTFD_FLAGS_DATAMATCH = 1 << 0;

// ---- enum gh_vm_status --------------------------------------------------------------------------
export const GH_VM_STATUS_LOAD_FAILED = 1;
export const GH_VM_STATUS_EXITED = 2;
export const GH_VM_STATUS_CRASHED = 3;

export const GH_VM_MAX_EXIT_REASON_SIZE = 8;

// ---- enum gh_vcpu_exit --------------------------------------------------------------------------
export const GH_VCPU_EXIT_UNKNOWN = 0;
export const GH_VCPU_EXIT_MMIO = 1;
export const GH_VCPU_EXIT_STATUS = 2;

// ---- structs ------------------------------------------------------------------------------------
export const gh_userspace_memory_region = koffi.struct('gh_userspace_memory_region', {
  label: 'uint32_t',
  flags: 'uint32_t',
  guest_phys_addr: 'uint64_t',
  memory_size: 'uint64_t',
  userspace_addr: 'uint64_t',
});

export const gh_vm_dtb_config = koffi.struct('gh_vm_dtb_config', {
  guest_phys_addr: 'uint64_t',
  size: 'uint64_t',
});

export const gh_fn_vcpu_arg = koffi.struct('gh_fn_vcpu_arg', {
  id: 'uint32_t',
});

export const gh_fn_irqfd_arg = koffi.struct('gh_fn_irqfd_arg', {
  fd: 'uint32_t',
  label: 'uint32_t',
  flags: 'uint32_t',
  padding: 'uint32_t',
});

export const gh_fn_ioeventfd_arg = koffi.struct('gh_fn_ioeventfd_arg', {
  datamatch: 'uint64_t',
  addr: 'uint64_t',
  len: 'uint32_t',
  fd: 'int32_t',
  flags: 'uint32_t',
  padding: 'uint32_t',
});

export const gh_fn_desc = koffi.struct('gh_fn_desc', {
  type: 'uint32_t',
  arg_size: 'uint32_t',
  arg: 'uint64_t',
});

export const gh_vm_exit_info = koffi.struct('gh_vm_exit_info', {
  type: 'uint16_t',
  padding: 'uint16_t',
  reason_size: 'uint32_t',
  reason: koffi.array('uint8_t', GH_VM_MAX_EXIT_REASON_SIZE),
});

export const gh_vcpu_run = koffi.struct('gh_vcpu_run', {
  immediate_exit: 'uint8_t',
  padding: koffi.array('uint8_t', 7),
  exit_reason: 'uint32_t',
  u: koffi.union({
    mmio: koffi.struct({
      phys_addr: 'uint64_t',
      data: koffi.array('uint8_t', 8),
      len: 'uint32_t',
      is_write: 'uint8_t',
    }),
    status: koffi.struct({
      status: 'uint32_t', // enum gh_vm_status
      exit_info: gh_vm_exit_info,
    }),
  }),
});

export const gh_vm_firmware_config = koffi.struct('gh_vm_firmware_config', {
  guest_phys_addr: 'uint64_t',
  size: 'uint64_t',
});

// ---- ioctls -------------------------------------------------------------------------------------
/** /dev/gunyah: argument must be 0; returns a VM fd. */
export const GH_CREATE_VM = _IO(GH_IOCTL_TYPE, 0x0);
export const GH_VM_SET_USER_MEM_REGION = _IOW(GH_IOCTL_TYPE, 0x1, koffi.sizeof(gh_userspace_memory_region));
export const GH_VM_SET_DTB_CONFIG = _IOW(GH_IOCTL_TYPE, 0x2, koffi.sizeof(gh_vm_dtb_config));
export const GH_VM_START = _IO(GH_IOCTL_TYPE, 0x3);
/** Returns an fd for GH_FN_VCPU, 0 otherwise. */
export const GH_VM_ADD_FUNCTION = _IOW(GH_IOCTL_TYPE, 0x4, koffi.sizeof(gh_fn_desc));
export const GH_VCPU_RUN = _IO(GH_IOCTL_TYPE, 0x5);
/** On a vCPU fd: returns the size to mmap it with (one page holding struct gh_vcpu_run). */
export const GH_VCPU_MMAP_SIZE = _IO(GH_IOCTL_TYPE, 0x6);
export const GH_VM_REMOVE_FUNCTION = _IOW(GH_IOCTL_TYPE, 0x7, koffi.sizeof(gh_fn_desc));
export const GH_VM_ANDROID_LEND_USER_MEM = _IOW(GH_ANDROID_IOCTL_TYPE, 0x11, koffi.sizeof(gh_userspace_memory_region));
export const GH_VM_ANDROID_SET_FW_CONFIG = _IOW(GH_ANDROID_IOCTL_TYPE, 0x12, koffi.sizeof(gh_vm_firmware_config));

// ---- layout of the mmapped vCPU run page (byte offsets from koffi) ------------------------------
export const ghVcpuRunLayout = Object.freeze({
  size: koffi.sizeof(gh_vcpu_run),
  immediateExit: memberOffset(gh_vcpu_run, 'immediate_exit'),
  exitReason: memberOffset(gh_vcpu_run, 'exit_reason'),
  mmioPhysAddr: memberOffset(gh_vcpu_run, 'u', 'mmio', 'phys_addr'),
  mmioData: memberOffset(gh_vcpu_run, 'u', 'mmio', 'data'),
  mmioDataSize: memberLayout(gh_vcpu_run, 'u', 'mmio', 'data').size,
  mmioLen: memberOffset(gh_vcpu_run, 'u', 'mmio', 'len'),
  mmioIsWrite: memberOffset(gh_vcpu_run, 'u', 'mmio', 'is_write'),
  status: memberOffset(gh_vcpu_run, 'u', 'status', 'status'),
  exitInfoType: memberOffset(gh_vcpu_run, 'u', 'status', 'exit_info', 'type'),
  exitInfoReasonSize: memberOffset(gh_vcpu_run, 'u', 'status', 'exit_info', 'reason_size'),
  exitInfoReason: memberOffset(gh_vcpu_run, 'u', 'status', 'exit_info', 'reason'),
});

const RUN_SIZE = ghVcpuRunLayout.size;
const RUN_IMMEDIATE_EXIT = ghVcpuRunLayout.immediateExit;
const RUN_EXIT_REASON = ghVcpuRunLayout.exitReason;
const MMIO_PHYS_ADDR = ghVcpuRunLayout.mmioPhysAddr;
const MMIO_DATA = ghVcpuRunLayout.mmioData;
const MMIO_DATA_SIZE = ghVcpuRunLayout.mmioDataSize;
const MMIO_LEN = ghVcpuRunLayout.mmioLen;
const MMIO_IS_WRITE = ghVcpuRunLayout.mmioIsWrite;
const STATUS = ghVcpuRunLayout.status;
const EXIT_INFO_TYPE = ghVcpuRunLayout.exitInfoType;
const EXIT_INFO_REASON_SIZE = ghVcpuRunLayout.exitInfoReasonSize;
const EXIT_INFO_REASON = ghVcpuRunLayout.exitInfoReason;

// ---- VM-fd argument encoders --------------------------------------------------------------------
const MEM_FLAGS = GH_MEM_ALLOW_READ | GH_MEM_ALLOW_WRITE | GH_MEM_ALLOW_EXEC;

export interface GhUserMemRegion {
  label: number;
  /** GH_MEM_ALLOW_* bits. */
  flags: number;
  guestPhysAddr: U64;
  memorySize: U64;
  /** Host address of the mapping (koffi pointers are bigint). */
  userspaceAddr: U64;
}

/** struct gh_userspace_memory_region for GH_VM_SET_USER_MEM_REGION / GH_VM_ANDROID_LEND_USER_MEM. */
export function encodeUserMemRegion(region: GhUserMemRegion): Uint8Array {
  if ((region.flags & ~MEM_FLAGS) !== 0) throw new RangeError(`gh_userspace_memory_region.flags: unknown bits in ${region.flags}`);
  const { bytes, view } = structBuffer(koffi.sizeof(gh_userspace_memory_region));
  putU32(view, memberOffset(gh_userspace_memory_region, 'label'), region.label, 'gh_userspace_memory_region.label');
  putU32(view, memberOffset(gh_userspace_memory_region, 'flags'), region.flags, 'gh_userspace_memory_region.flags');
  putU64(view, memberOffset(gh_userspace_memory_region, 'guest_phys_addr'), region.guestPhysAddr, 'gh_userspace_memory_region.guest_phys_addr');
  putU64(view, memberOffset(gh_userspace_memory_region, 'memory_size'), region.memorySize, 'gh_userspace_memory_region.memory_size');
  putU64(view, memberOffset(gh_userspace_memory_region, 'userspace_addr'), region.userspaceAddr, 'gh_userspace_memory_region.userspace_addr');
  return bytes;
}

export interface GhGuestRange {
  guestPhysAddr: U64;
  size: U64;
}

/** struct gh_vm_dtb_config for GH_VM_SET_DTB_CONFIG (size includes room for the RM overlay). */
export function encodeDtbConfig(config: GhGuestRange): Uint8Array {
  const { bytes, view } = structBuffer(koffi.sizeof(gh_vm_dtb_config));
  putU64(view, memberOffset(gh_vm_dtb_config, 'guest_phys_addr'), config.guestPhysAddr, 'gh_vm_dtb_config.guest_phys_addr');
  putU64(view, memberOffset(gh_vm_dtb_config, 'size'), config.size, 'gh_vm_dtb_config.size');
  return bytes;
}

/** struct gh_vm_firmware_config for GH_VM_ANDROID_SET_FW_CONFIG. */
export function encodeFwConfig(config: GhGuestRange): Uint8Array {
  const { bytes, view } = structBuffer(koffi.sizeof(gh_vm_firmware_config));
  putU64(view, memberOffset(gh_vm_firmware_config, 'guest_phys_addr'), config.guestPhysAddr, 'gh_vm_firmware_config.guest_phys_addr');
  putU64(view, memberOffset(gh_vm_firmware_config, 'size'), config.size, 'gh_vm_firmware_config.size');
  return bytes;
}

/**
 * struct gh_fn_desc for GH_VM_ADD_FUNCTION / GH_VM_REMOVE_FUNCTION. `argAddr` is the host
 * address of the encoded argument struct (which must stay alive across the ioctl).
 */
export function encodeFnDesc(type: number, argAddr: bigint, argSize: number): Uint8Array {
  if (type !== GH_FN_VCPU && type !== GH_FN_IRQFD && type !== GH_FN_IOEVENTFD) {
    throw new RangeError(`gh_fn_desc.type: unknown function type ${type}`);
  }
  if (!Number.isInteger(argSize) || argSize <= 0 || argSize > GH_FN_MAX_ARG_SIZE) {
    throw new RangeError(`gh_fn_desc.arg_size: ${argSize} is not in 1..${GH_FN_MAX_ARG_SIZE}`);
  }
  const { bytes, view } = structBuffer(koffi.sizeof(gh_fn_desc));
  putU32(view, memberOffset(gh_fn_desc, 'type'), type, 'gh_fn_desc.type');
  putU32(view, memberOffset(gh_fn_desc, 'arg_size'), argSize, 'gh_fn_desc.arg_size');
  putU64(view, memberOffset(gh_fn_desc, 'arg'), argAddr, 'gh_fn_desc.arg');
  return bytes;
}

/** struct gh_fn_vcpu_arg (GH_FN_VCPU). */
export function encodeVcpuArg(arg: { id: number }): Uint8Array {
  const { bytes, view } = structBuffer(koffi.sizeof(gh_fn_vcpu_arg));
  putU32(view, memberOffset(gh_fn_vcpu_arg, 'id'), arg.id, 'gh_fn_vcpu_arg.id');
  return bytes;
}

/** struct gh_fn_irqfd_arg (GH_FN_IRQFD): `label` is the doorbell label in the guest DT. */
export function encodeIrqfdArg(arg: { fd: number; label: number; level?: boolean }): Uint8Array {
  const { bytes, view } = structBuffer(koffi.sizeof(gh_fn_irqfd_arg));
  putU32(view, memberOffset(gh_fn_irqfd_arg, 'fd'), arg.fd, 'gh_fn_irqfd_arg.fd');
  putU32(view, memberOffset(gh_fn_irqfd_arg, 'label'), arg.label, 'gh_fn_irqfd_arg.label');
  putU32(view, memberOffset(gh_fn_irqfd_arg, 'flags'), arg.level ? GH_IRQFD_FLAGS_LEVEL : 0, 'gh_fn_irqfd_arg.flags');
  return bytes;
}

export interface GhIoeventfd {
  /** Guest physical MMIO address; matching is on this exact address. */
  addr: U64;
  /** Access width 1, 2, 4 or 8; 0 matches any width (not with datamatch). */
  len: number;
  fd: number;
  /** Signal only when the written value equals this (sets GH_IOEVENTFD_FLAGS_DATAMATCH). */
  datamatch?: U64;
}

/** struct gh_fn_ioeventfd_arg (GH_FN_IOEVENTFD), rejecting what the driver would answer EINVAL. */
export function encodeIoeventfdArg(arg: GhIoeventfd): Uint8Array {
  checkIoeventfdShape('gh_fn_ioeventfd_arg', arg.len, arg.fd, arg.datamatch);
  const { bytes, view } = structBuffer(koffi.sizeof(gh_fn_ioeventfd_arg));
  putU64(view, memberOffset(gh_fn_ioeventfd_arg, 'datamatch'), arg.datamatch ?? 0, 'gh_fn_ioeventfd_arg.datamatch');
  putU64(view, memberOffset(gh_fn_ioeventfd_arg, 'addr'), arg.addr, 'gh_fn_ioeventfd_arg.addr');
  putU32(view, memberOffset(gh_fn_ioeventfd_arg, 'len'), arg.len, 'gh_fn_ioeventfd_arg.len');
  putS32(view, memberOffset(gh_fn_ioeventfd_arg, 'fd'), arg.fd, 'gh_fn_ioeventfd_arg.fd');
  putU32(view, memberOffset(gh_fn_ioeventfd_arg, 'flags'),
    arg.datamatch === undefined ? 0 : GH_IOEVENTFD_FLAGS_DATAMATCH, 'gh_fn_ioeventfd_arg.flags');
  return bytes;
}

// ---- vCPU run page ------------------------------------------------------------------------------
export interface GhMmioExit {
  kind: 'mmio';
  physAddr: number;
  len: number;
  isWrite: boolean;
  /**
   * mmio.data in the run page itself (no copy), `min(len, 8)` bytes: the written value for a
   * write; for a read, fill it (or use writeGhMmioReadData) before the next GH_VCPU_RUN.
   */
  data: Uint8Array;
}

export interface GhStatusExit {
  kind: 'status';
  /** GH_VM_STATUS_* */
  status: number;
  exitInfo: {
    /** How the VM exited (VM_EXIT 0, PSCI_POWER_OFF 1, SYSTEM_RESET 2, ... see notes). */
    type: number;
    /** Valid bytes of `reason`, clamped to GH_VM_MAX_EXIT_REASON_SIZE. */
    reasonSize: number;
    reason: Uint8Array;
  };
}

export interface GhUnknownExit {
  kind: 'unknown';
  exitReason: number;
}

export type GhExit = GhMmioExit | GhStatusExit | GhUnknownExit;

function checkRunView(view: DataView): void {
  if (view.byteLength < RUN_SIZE) {
    throw new RangeError(`gh_vcpu_run: view of ${view.byteLength} bytes is shorter than ${RUN_SIZE}`);
  }
}

/** exit_reason alone (GH_VCPU_EXIT_*), for dispatch without building an exit object. */
export function readGhExitReason(view: DataView): number {
  return view.getUint32(RUN_EXIT_REASON, true);
}

/** Decodes the run page after GH_VCPU_RUN returned 0. Byte arrays are views into the page. */
export function readGhExit(view: DataView): GhExit {
  checkRunView(view);
  const exitReason = view.getUint32(RUN_EXIT_REASON, true);
  if (exitReason === GH_VCPU_EXIT_MMIO) {
    const len = view.getUint32(MMIO_LEN, true);
    return {
      kind: 'mmio',
      physAddr: getU64(view, MMIO_PHYS_ADDR),
      len,
      isWrite: view.getUint8(MMIO_IS_WRITE) !== 0,
      data: bytesAt(view, MMIO_DATA, Math.min(len, MMIO_DATA_SIZE)),
    };
  }
  if (exitReason === GH_VCPU_EXIT_STATUS) {
    const reasonSize = Math.min(view.getUint32(EXIT_INFO_REASON_SIZE, true), GH_VM_MAX_EXIT_REASON_SIZE);
    return {
      kind: 'status',
      status: view.getUint32(STATUS, true),
      exitInfo: {
        type: view.getUint16(EXIT_INFO_TYPE, true),
        reasonSize,
        reason: bytesAt(view, EXIT_INFO_REASON, reasonSize),
      },
    };
  }
  return { kind: 'unknown', exitReason };
}

/** Answers an MMIO read: copies `data` (at most 8 bytes) into mmio.data, zeroing the rest. */
export function writeGhMmioReadData(view: DataView, data: Uint8Array): void {
  checkRunView(view);
  if (data.length > MMIO_DATA_SIZE) throw new RangeError(`gh_vcpu_run.mmio.data: ${data.length} bytes do not fit in 8`);
  const target = bytesAt(view, MMIO_DATA, MMIO_DATA_SIZE);
  target.set(data);
  target.fill(0, data.length);
}

/** Answers an MMIO read with an integer value (little-endian, as the guest reads it). No allocation. */
export function writeGhMmioReadValue(view: DataView, value: number): void {
  checkRunView(view);
  putU64(view, MMIO_DATA, value, 'gh_vcpu_run.mmio.data');
}

/** Sets or clears immediate_exit; while set, GH_VCPU_RUN returns EINTR (the kernel never clears it). */
export function setGhImmediateExit(view: DataView, on: boolean): void {
  checkRunView(view);
  view.setUint8(RUN_IMMEDIATE_EXIT, on ? 1 : 0);
}
