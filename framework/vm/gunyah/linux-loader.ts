// Puts an arm64 Linux guest into a GunyahVm before start: the kernel Image at the very start of
// the first region (without a boot-context ioctl the resource manager enters there, with x0 =
// the DTB), the device tree in that region's last 2 MiB (the blob plus room for the resource
// manager's overlay), and the initramfs just below the device tree.

import { VmError } from '../vm-error.ts';
import { DTB_REGION_SIZE, PAGE_SIZE, type VirtioMmioSlot } from './arm64-layout.ts';
import { parseArm64Image } from './arm64-image.ts';
import { buildGunyahDeviceTree } from './device-tree.ts';
import type { GuestRange, GunyahVm } from './gunyah-vm.ts';

export interface LinuxBootSpec {
  /** An arm64 Linux `Image` (not compressed). */
  readonly kernel: Uint8Array;
  readonly initrd?: Uint8Array;
  readonly cmdline: string;
  /** The virtio-mmio devices the guest is told about (their irqfds are labelled by SPI). */
  readonly devices: readonly VirtioMmioSlot[];
}

export interface LinuxBootLayout {
  readonly kernel: GuestRange;
  readonly initrd: GuestRange | null;
  readonly dtb: GuestRange;
  /** The blob itself (also written at dtb.address). */
  readonly deviceTree: Uint8Array;
}

const alignDown = (n: number, a: number) => Math.floor(n / a) * a;

/** Writes kernel, initramfs and device tree into guest memory and sets the VM's boot config. */
export function loadLinux(vm: GunyahVm, spec: LinuxBootSpec): LinuxBootLayout {
  const primary = vm.regions[0]!;
  const image = parseArm64Image(spec.kernel);
  if (image.textOffset !== 0) {
    throw new VmError('ENOEXEC', `arm64 Image: text_offset 0x${image.textOffset.toString(16)}; Gunyah enters at the start of the region, which needs text_offset 0 (Linux 5.8+)`);
  }
  const end = primary.base + primary.size;
  const dtbAddress = end - DTB_REGION_SIZE;
  const kernelEnd = primary.base + image.effectiveSize;
  let initrd: GuestRange | null = null;
  if (spec.initrd) {
    const start = alignDown(dtbAddress - spec.initrd.length, PAGE_SIZE);
    initrd = { address: start, size: spec.initrd.length };
  }
  const floor = initrd ? initrd.address : dtbAddress;
  if (kernelEnd > floor) {
    throw new VmError('ENOMEM', `guest memory label 0: kernel (${image.effectiveSize} bytes)${initrd ? `, initramfs (${initrd.size})` : ''} and the 2 MiB DTB area do not fit in ${primary.size} bytes`);
  }
  const deviceTree = buildGunyahDeviceTree({
    memory: vm.regions.map((r) => ({ base: r.base, size: r.size })),
    vcpus: vm.vcpus.length,
    cmdline: spec.cmdline,
    initrd: initrd ? { start: initrd.address, end: initrd.address + initrd.size } : undefined,
    devices: spec.devices,
  });
  if (deviceTree.length > DTB_REGION_SIZE / 2) throw new VmError('E2BIG', `device tree of ${deviceTree.length} bytes leaves no room for the overlay`);
  const memory = vm.memory;
  memory.write(primary.base, spec.kernel);
  if (spec.initrd && initrd) memory.write(initrd.address, spec.initrd);
  memory.slice(dtbAddress, DTB_REGION_SIZE, true).fill(0);
  memory.write(dtbAddress, deviceTree);
  const dtb = { address: dtbAddress, size: DTB_REGION_SIZE };
  vm.setBootConfig({ dtb });
  return { kernel: { address: primary.base, size: spec.kernel.length }, initrd, dtb, deviceTree };
}
