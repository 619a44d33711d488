// Guest RAM for a KVM VM: one anonymous private mapping per region (MAP_NORESERVE, so a large
// guest costs only the pages it touches), each registered as a KVM memory slot and exposed as
// a zero-copy GuestMemory region. Release marks every region inaccessible before unmapping it,
// so a device still holding the GuestMemory gets a GuestMemoryError, never a dead process.

import * as libc from '../../../native/libc.ts';
import * as kvm from '../../../native/kvm.ts';
import { GuestMemory, type GuestRegion } from '../../guest-memory.ts';
import type { MemoryRegionConfig } from '../hypervisor.ts';
import { VmError } from '../vm-error.ts';

const PAGE = 4096;
/** Guest-physical pages KVM's x86 real-mode support needs (KVM_SET_IDENTITY_MAP_ADDR, KVM_SET_TSS_ADDR). */
export const KVM_IDENTITY_MAP_ADDRESS = 0xfffb_c000;
export const KVM_TSS_ADDRESS = 0xfffb_d000;
const RESERVED_START = KVM_IDENTITY_MAP_ADDRESS;
const RESERVED_END = KVM_TSS_ADDRESS + 3 * PAGE;

export interface KvmGuestRam {
  readonly memory: GuestMemory;
  /** Unmaps everything (regions become inaccessible first). Idempotent. */
  release(): void;
}

/** Checks a RAM layout; throws VmError EINVAL naming the first problem. */
export function checkRamLayout(regions: readonly MemoryRegionConfig[], maxSlots: number): void {
  if (regions.length === 0) throw new VmError('EINVAL', 'guest RAM: no regions');
  if (regions.length > maxSlots) throw new VmError('EINVAL', `guest RAM: ${regions.length} regions, KVM has ${maxSlots} slots`);
  const sorted = [...regions].sort((a, b) => a.base - b.base);
  let previousEnd = 0;
  for (const r of sorted) {
    const where = `guest RAM region 0x${r.base.toString(16)}+0x${r.size.toString(16)}`;
    if (!Number.isSafeInteger(r.base) || !Number.isSafeInteger(r.size) || r.base < 0 || r.size <= 0
        || r.base % PAGE !== 0 || r.size % PAGE !== 0) {
      throw new VmError('EINVAL', `${where}: base and size must be page multiples, size > 0`);
    }
    if (r.base < previousEnd) throw new VmError('EINVAL', `${where}: overlaps the region before it`);
    if (r.base < RESERVED_END && RESERVED_START < r.base + r.size) {
      throw new VmError('EINVAL', `${where}: overlaps KVM's identity map and TSS at 0x${RESERVED_START.toString(16)}`);
    }
    previousEnd = r.base + r.size;
  }
}

export function mapGuestRam(vmFd: number, regions: readonly MemoryRegionConfig[], maxSlots: number): KvmGuestRam {
  checkRamLayout(regions, maxSlots);
  const mapped: { address: bigint; size: number }[] = [];
  const guestRegions: GuestRegion[] = [];
  const unmapAll = () => {
    for (const m of mapped.splice(0)) libc.munmap(m.address, m.size, 'munmap guest RAM');
  };
  try {
    regions.forEach((r, slot) => {
      const address = libc.mmap(r.size, libc.PROT_READ | libc.PROT_WRITE,
        libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE, -1, 0, `mmap guest RAM slot ${slot}`);
      mapped.push({ address, size: r.size });
      libc.ioctlPtr(vmFd, kvm.KVM_SET_USER_MEMORY_REGION, kvm.encodeKvmUserMemRegion({
        slot, flags: 0, guestPhysAddr: r.base, memorySize: r.size, userspaceAddr: address,
      }), `KVM_SET_USER_MEMORY_REGION slot ${slot} at 0x${r.base.toString(16)}`);
      guestRegions.push({ base: r.base, size: r.size, bytes: new Uint8Array(libc.view(address, r.size)), hostAddress: address, label: slot });
    });
  } catch (e) {
    unmapAll();
    throw e;
  }
  const memory = new GuestMemory(guestRegions);
  let released = false;
  return {
    memory,
    release() {
      if (released) return;
      released = true;
      for (const r of guestRegions) memory.setAccessible(r.base, false);
      unmapAll();
    },
  };
}
