// What a Machine needs from the hypervisor and architecture underneath it: the VM, where the
// n-th device's register window and interrupt go, and how a kernel is put into guest memory.
// One implementation per hypervisor/architecture pair (kvm-x86-platform.ts,
// gunyah-arm64-platform.ts); nothing above this seam knows which one it runs on. createOwnedVm
// ties a platform's VM to the hypervisor handle it opened for it.

import type { Observable } from 'rxjs';
import type { Hypervisor, Vm } from '../hypervisor.ts';

/** Where a device goes: its register window and its interrupt line. */
export interface DeviceSlot {
  readonly base: number;
  /** Bytes reserved for the window. */
  readonly size: number;
  /** x86 GSI or arm64 SPI. */
  readonly irq: number;
  /** Level-triggered irqfd (arm64 GIC) or edge (x86 ISA lines). */
  readonly level: boolean;
}

export interface PlatformDevice {
  readonly base: number;
  readonly irq: number;
  readonly transport: { readonly size: number };
}

export interface PlatformBoot {
  readonly kernel: Uint8Array;
  readonly initrd?: Uint8Array;
  /** The user's words, appended to what the platform adds. */
  readonly cmdline: string;
  readonly devices: readonly PlatformDevice[];
}

export interface MachinePlatform {
  readonly kind: 'kvm' | 'gunyah';
  readonly vm: Vm;
  /** The platform's own serial console output, if it has one. */
  readonly serial$?: Observable<Uint8Array>;
  /** The slot of the `index`-th device (0-based); throws when the platform has no more. */
  deviceSlot(index: number): DeviceSlot;
  /** Writes kernel, initramfs and boot data and points the boot vCPU at the kernel; returns the full command line. */
  load(boot: PlatformBoot): string;
  /** Closes the VM and the hypervisor handle. */
  close(): Promise<void>;
}

/**
 * The VM of a platform that opened `hv` for it alone: `create` makes it, and when that fails `hv`
 * is closed again; `close` closes the VM, then `hv` (also when the VM's close fails).
 */
export function createOwnedVm<V extends Vm>(hv: Hypervisor, create: () => V): { readonly vm: V; close(): Promise<void> } {
  let vm: V;
  try {
    vm = create();
  } catch (e) {
    hv.close();
    throw e;
  }
  return {
    vm,
    async close() {
      try {
        await vm.close();
      } finally {
        hv.close();
      }
    },
  };
}
