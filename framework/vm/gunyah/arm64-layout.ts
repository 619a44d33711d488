// Where things sit in an arm64 Gunyah guest's physical address space, in one place: RAM at
// 2 GiB (as crosvm and QEMU's Gunyah RFC put it), the GICv3 distributor and redistributors
// just below 1 GiB (the addresses Gunyah's resource manager uses for the virtual GIC), and
// the virtio-mmio windows on the first 2 MiB boundary above RAM, so they lie inside the IPA
// layout that /gunyah-vm-config/memory/base-address starts. Device interrupts are SPIs from 16
// (QEMU virt's virtio-mmio range); the doorbell label of an SPI is the SPI number itself.

import { VmError } from '../vm-error.ts';

export const PAGE_SIZE = 4096;
const MIB = 1024 * 1024;

/** Guest RAM base; Gunyah enters the kernel at the start of the region holding the DTB. */
export const ARM64_RAM_BASE = 0x8000_0000;
/** The RM aligns the VM's memory base to 2 MiB; so do we, for RAM base and device windows. */
export const ARM64_BLOCK = 2 * MIB;

export const GIC_DIST_BASE = 0x3fff_0000;
export const GIC_DIST_SIZE = 0x1_0000;
/** One GICv3 redistributor frame pair (RD + SGI) per vCPU, packed below the distributor. */
export const GIC_REDIST_SIZE_PER_CPU = 0x2_0000;
/** vCPUs the redistributor area is laid out for. */
export const ARM64_MAX_VCPUS = 8;

export const VIRTIO_MMIO_WINDOW = 0x200;
export const FIRST_DEVICE_SPI = 16;
/** GICv3 SPIs are 0..987 (INTIDs 32..1019). */
export const LAST_SPI = 987;

/** Room given to the DTB: the blob plus the resource manager's overlay (crosvm passes 2 MiB). */
export const DTB_REGION_SIZE = 2 * MIB;

export interface GicLayout {
  readonly distBase: number;
  readonly distSize: number;
  readonly redistBase: number;
  readonly redistSize: number;
}

export function gicLayout(vcpus: number): GicLayout {
  if (!Number.isInteger(vcpus) || vcpus < 1 || vcpus > ARM64_MAX_VCPUS) {
    throw new VmError('EINVAL', `arm64 layout: ${vcpus} vCPUs (1..${ARM64_MAX_VCPUS})`);
  }
  const redistSize = GIC_REDIST_SIZE_PER_CPU * vcpus;
  return { distBase: GIC_DIST_BASE, distSize: GIC_DIST_SIZE, redistBase: GIC_DIST_BASE - redistSize, redistSize };
}

/** One virtio-mmio device's register window and interrupt. */
export interface VirtioMmioSlot {
  readonly base: number;
  readonly size: number;
  /** SPI number (the GIC INTID minus 32); also the doorbell label. */
  readonly spi: number;
  /** Level-triggered (GH_IRQFD_FLAGS_LEVEL, IRQ_TYPE_LEVEL_HIGH) or edge (IRQ_TYPE_EDGE_RISING). */
  readonly level: boolean;
}

/** The doorbell label that carries interrupt `spi`: the irqfd label and the DT `label` agree on it. */
export function doorbellLabel(spi: number): number {
  return spi;
}

export const alignUp = (n: number, a: number): number => Math.ceil(n / a) * a;

/** `count` virtio-mmio slots above the end of RAM (`ramEnd`), SPIs from FIRST_DEVICE_SPI. */
export function virtioMmioSlots(ramEnd: number, count: number, level = true): VirtioMmioSlot[] {
  if (FIRST_DEVICE_SPI + count - 1 > LAST_SPI) throw new VmError('EINVAL', `arm64 layout: ${count} devices need more SPIs than the GIC has`);
  const first = alignUp(ramEnd, ARM64_BLOCK);
  return Array.from({ length: count }, (_, i) => ({
    base: first + i * VIRTIO_MMIO_WINDOW,
    size: VIRTIO_MMIO_WINDOW,
    spi: FIRST_DEVICE_SPI + i,
    level,
  }));
}

/** The single RAM region of a simple guest: `size` bytes at ARM64_RAM_BASE. */
export function ramRegion(size: number): { base: number; size: number } {
  if (!Number.isSafeInteger(size) || size < 2 * DTB_REGION_SIZE || size % ARM64_BLOCK !== 0) {
    throw new VmError('EINVAL', `arm64 layout: RAM size ${size} must be a multiple of 2 MiB and at least 4 MiB`);
  }
  return { base: ARM64_RAM_BASE, size };
}
