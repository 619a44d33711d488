// The Android-14 Gunyah UAPI as the model of the driver sees it: ioctl numbers, constants and
// struct layouts from the table gcc recorded for shared/seed/gunyah.h (test/abi/recorded), NOT
// from native/gunyah.ts, so the model is an independent check of what the backend sends.

import { parseTable } from '../../abi/c-probe.ts';
import { gccLayout } from '../../abi/gcc-layout.ts';
import { GUNYAH_GCC } from '../../abi/recorded/gunyah-gcc.ts';

const table = parseTable(GUNYAH_GCC);
export const layout = gccLayout(GUNYAH_GCC);

export function abiValue(name: string): number {
  const v = table.get(`value ${name}`);
  if (v === undefined) throw new Error(`model abi: no recorded value ${name}`);
  return v;
}

export const IOCTL = Object.freeze({
  GH_CREATE_VM: abiValue('GH_CREATE_VM'),
  GH_VM_SET_USER_MEM_REGION: abiValue('GH_VM_SET_USER_MEM_REGION'),
  GH_VM_SET_DTB_CONFIG: abiValue('GH_VM_SET_DTB_CONFIG'),
  GH_VM_START: abiValue('GH_VM_START'),
  GH_VM_ADD_FUNCTION: abiValue('GH_VM_ADD_FUNCTION'),
  GH_VCPU_RUN: abiValue('GH_VCPU_RUN'),
  GH_VCPU_MMAP_SIZE: abiValue('GH_VCPU_MMAP_SIZE'),
  GH_VM_REMOVE_FUNCTION: abiValue('GH_VM_REMOVE_FUNCTION'),
  GH_VM_ANDROID_LEND_USER_MEM: abiValue('GH_VM_ANDROID_LEND_USER_MEM'),
  GH_VM_ANDROID_SET_FW_CONFIG: abiValue('GH_VM_ANDROID_SET_FW_CONFIG'),
});

const IOCTL_NAMES = new Map<number, string>(Object.entries(IOCTL).map(([name, value]) => [value, name]));

export function ioctlName(request: number): string {
  return IOCTL_NAMES.get(request) ?? `ioctl 0x${request.toString(16)}`;
}

export const GH = Object.freeze({
  MEM_ALLOW_READ: abiValue('GH_MEM_ALLOW_READ'),
  MEM_ALLOW_WRITE: abiValue('GH_MEM_ALLOW_WRITE'),
  MEM_ALLOW_EXEC: abiValue('GH_MEM_ALLOW_EXEC'),
  FN_VCPU: abiValue('GH_FN_VCPU'),
  FN_IRQFD: abiValue('GH_FN_IRQFD'),
  FN_IOEVENTFD: abiValue('GH_FN_IOEVENTFD'),
  FN_MAX_ARG_SIZE: abiValue('GH_FN_MAX_ARG_SIZE'),
  IRQFD_FLAGS_LEVEL: abiValue('GH_IRQFD_FLAGS_LEVEL'),
  IOEVENTFD_FLAGS_DATAMATCH: abiValue('GH_IOEVENTFD_FLAGS_DATAMATCH'),
  VM_STATUS_LOAD_FAILED: abiValue('GH_VM_STATUS_LOAD_FAILED'),
  VM_STATUS_EXITED: abiValue('GH_VM_STATUS_EXITED'),
  VM_STATUS_CRASHED: abiValue('GH_VM_STATUS_CRASHED'),
  VM_MAX_EXIT_REASON_SIZE: abiValue('GH_VM_MAX_EXIT_REASON_SIZE'),
  VCPU_EXIT_MMIO: abiValue('GH_VCPU_EXIT_MMIO'),
  VCPU_EXIT_STATUS: abiValue('GH_VCPU_EXIT_STATUS'),
});

/** Reads a struct the model received: every field by its gcc offset and width, as bigint. */
export function readStruct(bytes: Uint8Array, struct: string, fields: readonly string[]): Record<string, bigint> {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: Record<string, bigint> = {};
  for (const f of fields) out[f] = layout.read(view, struct, f);
  return out;
}

export const PAGE = 4096n;
export const U64_MAX = (1n << 64n) - 1n;
