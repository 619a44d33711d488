// /dev/gunyah as a Hypervisor: opened once through a GunyahDriver (the native one by default,
// a model of the driver in tests); every VM it creates is a GunyahVm on the Android-14 UAPI.
// The UAPI has no capability queries: what it offers is fixed by the ABI.

import { isNativeError } from '../../../native/errors.ts';
import type { Hypervisor, HypervisorCapabilities } from '../hypervisor.ts';
import { VmError } from '../vm-error.ts';
import { ARM64_MAX_VCPUS } from './arm64-layout.ts';
import type { GunyahDriver } from './gunyah-driver.ts';
import { GunyahVm, type GunyahDevice, type GunyahVmConfig } from './gunyah-vm.ts';
import { NativeGunyahDriver } from './native-driver.ts';

export const GUNYAH_DEVICE = '/dev/gunyah';

export const GUNYAH_CAPABILITIES: HypervisorCapabilities = Object.freeze({
  /** What the arm64 layout has redistributor room for. */
  maxVcpus: ARM64_MAX_VCPUS,
  /** Labels are u32; the driver sets no limit of its own. */
  memorySlots: 0xffff_ffff,
  ioeventfd: true,
  ioeventfdAnyLength: true,
  irqfd: true,
  /** GH_IRQFD_FLAGS_LEVEL: the hypervisor keeps the doorbell asserted until the guest takes it. */
  irqfdLevel: true,
  /** Regions registered R|X. */
  readonlyMemory: true,
});

export interface GunyahOpenOptions {
  readonly path?: string;
  /** The kernel interface; default the real one (koffi). Tests pass a model of the driver. */
  readonly driver?: GunyahDriver;
}

export class GunyahHypervisor implements Hypervisor, GunyahDevice {
  readonly kind = 'gunyah';
  readonly capabilities = GUNYAH_CAPABILITIES;
  readonly maxVcpus = GUNYAH_CAPABILITIES.maxVcpus;
  private closed = false;

  private constructor(readonly driver: GunyahDriver, readonly fd: number, readonly path: string) {}

  static open(options: GunyahOpenOptions = {}): GunyahHypervisor {
    const path = options.path ?? GUNYAH_DEVICE;
    const driver = options.driver ?? new NativeGunyahDriver();
    try {
      return new GunyahHypervisor(driver, driver.open(path, `open ${path}`), path);
    } catch (e) {
      if (isNativeError(e, 'ENOENT')) {
        throw new VmError('ENODEV', `${path}: no Gunyah on this host (Gunyah runs on Qualcomm arm64 SoCs)`);
      }
      throw e;
    }
  }

  createVm(config: GunyahVmConfig): GunyahVm {
    if (this.closed) throw new VmError('EBADF', 'GunyahHypervisor: closed');
    return GunyahVm.create(this, config);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.driver.close(this.fd, `close ${this.path}`);
  }
}
