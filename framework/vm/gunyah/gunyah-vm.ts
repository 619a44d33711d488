// A Gunyah virtual machine on the Android-14 UAPI: the VM fd, guest memory (one labelled region
// per range, shared R|W|X or R|X, or lent away with GH_VM_ANDROID_LEND_USER_MEM), vCPUs,
// irqfds labelled as their doorbells in the device tree, ioeventfds, the DTB and firmware
// configuration, GH_VM_START and the run loops. Lent memory stays writable until START (the
// loader fills it) and is refused to devices from then on. It ends exactly once (the first
// outcome wins) and close() releases every fd and mapping it made.

import {
  GH_CREATE_VM, GH_FN_IOEVENTFD, GH_FN_IRQFD, GH_MEM_ALLOW_EXEC, GH_MEM_ALLOW_READ, GH_MEM_ALLOW_WRITE, GH_VM_ADD_FUNCTION,
  GH_VM_ANDROID_LEND_USER_MEM, GH_VM_ANDROID_SET_FW_CONFIG, GH_VM_REMOVE_FUNCTION, GH_VM_SET_DTB_CONFIG,
  GH_VM_SET_USER_MEM_REGION, GH_VM_START, encodeDtbConfig, encodeFnDesc, encodeFwConfig, encodeIoeventfdArg,
  encodeIrqfdArg, encodeUserMemRegion,
} from '../../../native/gunyah.ts';
import type { EventFd } from '../../eventfd.ts';
import { GuestMemory, type GuestRegion } from '../../guest-memory.ts';
import { MmioBus } from '../../mmio-bus.ts';
import type { IoEventMatch, IrqFdBinding, IrqFdOptions, MemoryRegionConfig, Registration, Vm, VmConfig } from '../hypervisor.ts';
import { VmError } from '../vm-error.ts';
import { VmLifecycle } from '../vm-lifecycle.ts';
import { doorbellLabel } from './arm64-layout.ts';
import type { GunyahDriver, GunyahMapping } from './gunyah-driver.ts';
import { GunyahVcpu, type GunyahVcpuHost } from './gunyah-vcpu.ts';
import { IoEventFanout } from './ioevent-fanout.ts';

export interface GunyahRegionConfig extends MemoryRegionConfig {
  /** The guest may read and execute but not write it (flags R|X); devices may not write it either. */
  readonly readOnly?: boolean;
  /** Lent to the guest (GH_VM_ANDROID_LEND_USER_MEM): the host loses access at START. */
  readonly lend?: boolean;
}

export interface GunyahVmConfig extends VmConfig {
  /** Labelled by index (label 0 is the first). The region holding the DTB must also hold the kernel at its start. */
  readonly memory: readonly GunyahRegionConfig[];
}

/** A guest-physical range handed to the resource manager. */
export interface GuestRange {
  readonly address: number;
  readonly size: number;
}

export interface GunyahBootConfig {
  /** The DTB and the free space after it for the resource manager's overlay (GH_VM_SET_DTB_CONFIG). */
  readonly dtb: GuestRange;
  /** Protected-VM firmware (GH_VM_ANDROID_SET_FW_CONFIG); makes the VM an Android pVM. */
  readonly firmware?: GuestRange;
}

/** The hypervisor side a VM needs: the driver and the /dev/gunyah fd. */
export interface GunyahDevice {
  readonly driver: GunyahDriver;
  readonly fd: number;
  readonly maxVcpus: number;
}

/** The one kernel ioeventfd at an address: direct (the caller's eventfd) or a fan-out. */
interface IoEventEntry {
  readonly address: number;
  readonly arg: Uint8Array;
  readonly where: string;
  readonly fanout: IoEventFanout | null;
}

const hex = (n: number) => `0x${n.toString(16)}`;

export class GunyahVm extends VmLifecycle<GunyahVcpu> implements Vm, GunyahVcpuHost {
  readonly mmio = new MmioBus();
  private guestMemory: GuestMemory | null = null;
  private readonly mappings: GunyahMapping[] = [];
  private boot: GunyahBootConfig | null = null;
  /** The kernel ioeventfd of each address. */
  private readonly ioEvents = new Map<number, IoEventEntry>();

  private constructor(private readonly device: GunyahDevice, readonly fd: number, private readonly config: GunyahVmConfig) {
    super('Gunyah VM');
  }

  get driver(): GunyahDriver {
    return this.device.driver;
  }

  /** GH_CREATE_VM, guest memory (mapped, then registered region by region), and the vCPUs. */
  static create(device: GunyahDevice, config: GunyahVmConfig): GunyahVm {
    const vcpus = config.vcpus ?? 1;
    if (!Number.isInteger(vcpus) || vcpus < 0 || vcpus > device.maxVcpus) {
      throw new VmError('EINVAL', `Gunyah VM: ${vcpus} vCPUs (1..${device.maxVcpus})`);
    }
    if (config.memory.length === 0) throw new VmError('EINVAL', 'Gunyah VM: no guest memory');
    const vmFd = device.driver.ioctl(device.fd, GH_CREATE_VM, 0, 'GH_CREATE_VM');
    const vm = new GunyahVm(device, vmFd, config);
    try {
      vm.registerMemory();
      for (let i = 0; i < vcpus; i++) vm.createVcpu();
    } catch (e) {
      vm.releaseResources();
      throw e;
    }
    return vm;
  }

  get memory(): GuestMemory {
    if (!this.guestMemory) throw new VmError('EBADF', 'Gunyah VM: no guest memory');
    return this.guestMemory;
  }

  /** The memory layout the VM was created with (labels are indexes). */
  get regions(): readonly GunyahRegionConfig[] {
    return this.config.memory;
  }

  createVcpu(): GunyahVcpu {
    return this.addVcpu((id) => {
      if (id >= this.device.maxVcpus) throw new VmError('EINVAL', `Gunyah VM: more than ${this.device.maxVcpus} vCPUs`);
      return GunyahVcpu.create(this, this.fd, id);
    });
  }

  /** Where the DTB (and optional pVM firmware) lie; sent to the driver by start(), just before GH_VM_START. */
  setBootConfig(boot: GunyahBootConfig): void {
    this.checkState('created', 'setBootConfig');
    this.boot = boot;
  }

  /**
   * An ioeventfd at `match.address`. Without datamatch it is the kernel's own (one per address;
   * the driver ignores the length then). With datamatch, see ioevent-fanout.ts: one kernel
   * ioeventfd per address signals every eventfd registered there, whatever value was written.
   */
  addIoEventFd(match: IoEventMatch, fd: EventFd): Registration {
    this.checkOpen('addIoEventFd');
    if ((match.space ?? 'mmio') !== 'mmio') throw new VmError('EINVAL', 'Gunyah: ioeventfds are MMIO only (no port I/O on arm64)');
    encodeIoeventfdArg({ addr: match.address, len: match.length, fd: fd.fd, datamatch: match.datamatch }); // validates the shape
    const existing = this.ioEvents.get(match.address);
    if (match.datamatch === undefined || existing?.fanout === null) {
      if (existing) throw new VmError('EEXIST', `Gunyah: an ioeventfd already serves ${hex(match.address)} (the driver keeps one per address)`);
      const entry = this.registerIoEvent(match.address, match.length, fd, null);
      return { remove: () => this.unregisterIoEvent(entry) };
    }
    let entry = existing;
    if (!entry) {
      const fanout = new IoEventFanout(match.address);
      try {
        entry = this.registerIoEvent(match.address, match.length, fanout.source, fanout);
      } catch (e) {
        fanout.close();
        throw e;
      }
    }
    const fanout = entry.fanout!;
    fanout.add(fd);
    let removed = false;
    return {
      remove: () => {
        if (removed) return;
        removed = true;
        if (fanout.delete(fd) === 0) this.unregisterIoEvent(entry);
      },
    };
  }

  addIrqFd(irq: number, fd: EventFd, options: IrqFdOptions): IrqFdBinding {
    this.checkOpen('addIrqFd');
    if (options.resample) throw new VmError('EINVAL', 'Gunyah: level doorbells stay asserted in the hypervisor, there is no resample eventfd');
    const label = doorbellLabel(irq);
    const arg = encodeIrqfdArg({ fd: fd.fd, label, level: options.level });
    const where = `irqfd label ${label}`;
    this.addFunction(GH_FN_IRQFD, arg, `GH_VM_ADD_FUNCTION ${where}`);
    let removed = false;
    return {
      irq,
      irqfd: fd,
      mode: options.level ? 'level' : 'edge',
      resample: null,
      remove: () => {
        if (removed || this.currentState === 'closed') return;
        removed = true;
        this.removeFunction(GH_FN_IRQFD, arg, `GH_VM_REMOVE_FUNCTION ${where}`);
      },
    };
  }

  /**
   * GH_VM_ANDROID_SET_FW_CONFIG (if any), GH_VM_SET_DTB_CONFIG, GH_VM_START, then the vCPUs' run
   * loops. A failed start ends the VM with outcome 'error' (the driver has given up on it too).
   */
  async start(): Promise<void> {
    this.checkStartable();
    if (!this.boot) throw new VmError('EINVAL', 'Gunyah VM: start without a DTB (setBootConfig)');
    const { dtb, firmware } = this.boot;
    try {
      if (firmware) {
        this.driver.ioctl(this.fd, GH_VM_ANDROID_SET_FW_CONFIG, encodeFwConfig({ guestPhysAddr: firmware.address, size: firmware.size }),
          `GH_VM_ANDROID_SET_FW_CONFIG ${hex(firmware.address)}+${hex(firmware.size)}`);
      }
      this.driver.ioctl(this.fd, GH_VM_SET_DTB_CONFIG, encodeDtbConfig({ guestPhysAddr: dtb.address, size: dtb.size }),
        `GH_VM_SET_DTB_CONFIG ${hex(dtb.address)}+${hex(dtb.size)}`);
      this.driver.ioctl(this.fd, GH_VM_START, 0, 'GH_VM_START');
    } catch (e) {
      await this.failStart(e);
    }
    // Lent memory now belongs to the guest alone.
    this.config.memory.forEach((r) => { if (r.lend) this.memory.setAccessible(r.base, false); });
    this.currentState = 'running';
    for (const v of this.vcpus) {
      v.start();
      this.vcpuStarted(v);
    }
  }

  private registerMemory(): void {
    const regions: GuestRegion[] = [];
    this.config.memory.forEach((r, label) => {
      const kind = r.lend ? 'GH_VM_ANDROID_LEND_USER_MEM' : 'GH_VM_SET_USER_MEM_REGION';
      const mapping = this.driver.mmap(-1, r.size, `mmap guest memory label ${label}`);
      this.mappings.push(mapping);
      const flags = GH_MEM_ALLOW_READ | GH_MEM_ALLOW_EXEC | (r.readOnly ? 0 : GH_MEM_ALLOW_WRITE);
      const arg = encodeUserMemRegion({ label, flags, guestPhysAddr: r.base, memorySize: r.size, userspaceAddr: mapping.address });
      this.driver.ioctl(this.fd, r.lend ? GH_VM_ANDROID_LEND_USER_MEM : GH_VM_SET_USER_MEM_REGION, arg, `${kind} label ${label}`);
      regions.push({ base: r.base, size: r.size, bytes: mapping.bytes, hostAddress: mapping.address, label, readOnly: r.readOnly ?? false });
    });
    this.guestMemory = new GuestMemory(regions);
  }

  private addFunction(type: number, arg: Uint8Array, context: string): number {
    return this.driver.ioctl(this.fd, GH_VM_ADD_FUNCTION, encodeFnDesc(type, this.driver.addressOf(arg), arg.length), context);
  }

  private removeFunction(type: number, arg: Uint8Array, context: string): void {
    this.driver.ioctl(this.fd, GH_VM_REMOVE_FUNCTION, encodeFnDesc(type, this.driver.addressOf(arg), arg.length), context);
  }

  private registerIoEvent(address: number, length: IoEventMatch['length'], fd: EventFd, fanout: IoEventFanout | null): IoEventEntry {
    const arg = encodeIoeventfdArg({ addr: address, len: length, fd: fd.fd });
    const where = `ioeventfd ${hex(address)}/${length}`;
    this.addFunction(GH_FN_IOEVENTFD, arg, `GH_VM_ADD_FUNCTION ${where}`);
    const entry: IoEventEntry = { address, arg, where, fanout };
    this.ioEvents.set(address, entry);
    return entry;
  }

  /** GH_VM_REMOVE_FUNCTION matches ioeventfds by address, which is why there is one per address. */
  private unregisterIoEvent(entry: IoEventEntry): void {
    if (this.ioEvents.get(entry.address) !== entry) return;
    this.ioEvents.delete(entry.address);
    try {
      if (this.currentState !== 'closed') this.removeFunction(GH_FN_IOEVENTFD, entry.arg, `GH_VM_REMOVE_FUNCTION ${entry.where}`);
    } finally {
      entry.fanout?.close();
    }
  }

  /** Every fd and mapping, vCPUs first (each holds a reference on the VM), then the VM, then RAM. */
  protected override releaseResources(): void {
    const errors: unknown[] = [];
    const attempt = (f: () => void) => { try { f(); } catch (e) { errors.push(e); } };
    for (const v of this.vcpus) attempt(() => v.close());
    attempt(() => this.driver.close(this.fd, 'close Gunyah VM'));
    if (this.guestMemory) {
      const memory = this.guestMemory;
      for (const r of memory.regions) attempt(() => memory.setAccessible(r.base, false));
    }
    this.mappings.forEach((m, label) => attempt(() => this.driver.munmap(m, `munmap guest memory label ${label}`)));
    this.mappings.length = 0;
    for (const e of this.ioEvents.values()) attempt(() => e.fanout?.close());
    this.ioEvents.clear();
    if (errors.length > 0) throw errors[0];
  }
}
