// Drives a GunyahDriver with raw ioctls, structs laid out at gcc's offsets: for the model's own
// tests, where the backend's encoders (which refuse bad values) would get in the way.

import { layout } from '../model/abi.ts';
import { IOCTL } from '../model/abi.ts';
import type { GunyahDriver, GunyahMapping } from '../../../framework/vm/gunyah/gunyah-driver.ts';

export function struct(name: string, fields: Record<string, number | bigint>): Uint8Array {
  const bytes = new Uint8Array(layout.size(name));
  const view = new DataView(bytes.buffer);
  for (const [f, v] of Object.entries(fields)) layout.write(view, name, f, v);
  return bytes;
}

export const memRegion = (label: number, flags: number, gpa: number | bigint, size: number | bigint, uaddr: bigint) =>
  struct('gh_userspace_memory_region', { label, flags, guest_phys_addr: gpa, memory_size: size, userspace_addr: uaddr });

/** A VM fd on `driver` with helpers for the calls tests make over and over. */
export class RawVm {
  readonly dev: number;
  readonly fd: number;
  /** Argument buffers handed to the driver by pointer: kept alive like C stack variables. */
  private readonly keep: Uint8Array[] = [];

  constructor(readonly driver: GunyahDriver) {
    this.dev = driver.open('/dev/gunyah', 'open /dev/gunyah');
    this.fd = driver.ioctl(this.dev, IOCTL.GH_CREATE_VM, 0, 'GH_CREATE_VM');
  }

  ioctl(request: number, arg: Uint8Array | number, context = 'raw ioctl'): number {
    return this.driver.ioctl(this.fd, request, arg, context);
  }

  /** Anonymous memory of `size` bytes (a multiple of 4096 gives a page-aligned address). */
  map(size: number): GunyahMapping {
    return this.driver.mmap(-1, size, 'mmap');
  }

  /** Maps `size` bytes and registers them at `gpa` with `label`, flags R|W|X. */
  region(label: number, gpa: number, size: number, lend = false): GunyahMapping {
    const m = this.map(size);
    this.ioctl(lend ? IOCTL.GH_VM_ANDROID_LEND_USER_MEM : IOCTL.GH_VM_SET_USER_MEM_REGION, memRegion(label, 7, gpa, size, m.address), `region ${label}`);
    return m;
  }

  /** gh_fn_desc for `arg` (kept alive), as ADD_FUNCTION/REMOVE_FUNCTION take it. */
  fnDesc(type: number, arg: Uint8Array, argSize = arg.length): Uint8Array {
    this.keep.push(arg);
    return struct('gh_fn_desc', { type, arg_size: argSize, arg: argSize > 0 ? this.driver.addressOf(arg) : 0n });
  }

  addFunction(type: number, arg: Uint8Array, context = 'GH_VM_ADD_FUNCTION', argSize = arg.length): number {
    return this.ioctl(IOCTL.GH_VM_ADD_FUNCTION, this.fnDesc(type, arg, argSize), context);
  }

  removeFunction(type: number, arg: Uint8Array, context = 'GH_VM_REMOVE_FUNCTION', argSize = arg.length): number {
    return this.ioctl(IOCTL.GH_VM_REMOVE_FUNCTION, this.fnDesc(type, arg, argSize), context);
  }

  vcpu(id: number): number {
    return this.addFunction(1, struct('gh_fn_vcpu_arg', { id }), `vcpu ${id}`);
  }

  irqfd(fd: number, label: number, flags = 0): number {
    return this.addFunction(2, struct('gh_fn_irqfd_arg', { fd, label, flags }), `irqfd ${label}`);
  }

  ioeventfd(fd: number, addr: number | bigint, len: number, flags = 0, datamatch: number | bigint = 0): number {
    return this.addFunction(3, struct('gh_fn_ioeventfd_arg', { fd, addr, len, flags, datamatch }), `ioeventfd ${addr}`);
  }

  dtbConfig(gpa: number | bigint, size: number | bigint): number {
    return this.ioctl(IOCTL.GH_VM_SET_DTB_CONFIG, struct('gh_vm_dtb_config', { guest_phys_addr: gpa, size }), 'GH_VM_SET_DTB_CONFIG');
  }

  start(): number {
    return this.ioctl(IOCTL.GH_VM_START, 0, 'GH_VM_START');
  }
}
