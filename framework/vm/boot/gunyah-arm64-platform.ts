// arm64 on Gunyah as a Machine sees it: one RAM region at 2 GiB, virtio-mmio windows above RAM
// on SPIs from 16 (level doorbells), and the kernel Image, initramfs and device tree placed by
// the Gunyah backend's loader. The backend itself lives in ../gunyah/.

import type { GunyahDriver } from '../gunyah/gunyah-driver.ts';
import { GunyahHypervisor } from '../gunyah/gunyah-hypervisor.ts';
import type { GunyahVm } from '../gunyah/gunyah-vm.ts';
import { ramRegion, virtioMmioSlots } from '../gunyah/arm64-layout.ts';
import { loadLinux } from '../gunyah/linux-loader.ts';
import { composeCmdline } from './cmdline.ts';
import { createOwnedVm, type DeviceSlot, type MachinePlatform, type PlatformBoot } from './machine-platform.ts';

export interface GunyahPlatformOptions {
  readonly memory: number;
  readonly cpus: number;
  /** /dev/gunyah by default. */
  readonly path?: string | undefined;
  /** The kernel interface (tests pass a model of the driver). */
  readonly driver?: GunyahDriver | undefined;
}

export interface GunyahArm64Platform extends MachinePlatform {
  readonly kind: 'gunyah';
  readonly vm: GunyahVm;
}

export function createGunyahArm64Platform(options: GunyahPlatformOptions): GunyahArm64Platform {
  const region = ramRegion(options.memory);
  const hv = GunyahHypervisor.open({ ...(options.path ? { path: options.path } : {}), ...(options.driver ? { driver: options.driver } : {}) });
  const { vm, close } = createOwnedVm(hv, () => hv.createVm({ memory: [region], vcpus: options.cpus }));
  const ramEnd = region.base + region.size;
  const slot = (index: number) => virtioMmioSlots(ramEnd, index + 1, true)[index]!;
  return {
    kind: 'gunyah',
    vm,
    deviceSlot(index: number): DeviceSlot {
      const s = slot(index);
      return { base: s.base, size: s.size, irq: s.spi, level: s.level };
    },
    load(boot: PlatformBoot): string {
      const cmdline = composeCmdline({ user: boot.cmdline });
      loadLinux(vm, {
        kernel: boot.kernel,
        ...(boot.initrd ? { initrd: boot.initrd } : {}),
        cmdline,
        devices: boot.devices.map((_, i) => slot(i)),
      });
      return cmdline;
    },
    close,
  };
}
