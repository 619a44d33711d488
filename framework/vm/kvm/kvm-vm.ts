// An x86_64 KVM virtual machine: the VM fd with KVM's in-kernel PIC/IOAPIC/LAPIC and PIT, guest
// RAM, vCPUs with their threads, ioeventfds and irqfds, the MMIO and port buses, COM1 and the
// i8042 reset line. It ends exactly once (the first outcome wins: a guest exit, a device such
// as the i8042, the host's stop, or a host failure) and close() releases every fd, mapping and
// thread it made.

import * as libc from '../../../native/libc.ts';
import * as kvm from '../../../native/kvm.ts';
import { EventFd } from '../../eventfd.ts';
import type { GuestMemory } from '../../guest-memory.ts';
import { MmioBus } from '../../mmio-bus.ts';
import type { IoEventMatch, IrqFdBinding, IrqFdOptions, Registration, VmConfig } from '../hypervisor.ts';
import { VmError } from '../vm-error.ts';
import { VmLifecycle } from '../vm-lifecycle.ts';
import { attachPcLegacyDevices, type PcLegacyDevices, type PcLegacyOptions, type PortIoVm } from '../x86/pc-legacy.ts';
import { PortBus } from '../x86/port-bus.ts';
import type { Uart16550 } from '../x86/uart-16550.ts';
import { KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS, mapGuestRam, type KvmGuestRam } from './kvm-guest-ram.ts';
import type { KvmHypervisor } from './kvm-hypervisor.ts';
import { KvmVcpu, type ExitInterceptor, type ExitPolling, type KvmVcpuHost } from './kvm-vcpu.ts';
import { reserveVcpuThreads } from './vcpu-thread-pool.ts';

export interface KvmVmConfig extends VmConfig, PcLegacyOptions {
  /**
   * Adjusts the CPUID table of each vCPU. It receives KVM_GET_SUPPORTED_CPUID with the APIC id
   * filled in (leaves 1, 0xb, 0x1f) and returns the table to set.
   */
  cpuid?: (entries: kvm.KvmCpuidEntry2[], vcpuId: number) => kvm.KvmCpuidEntry2[];
  /** Polling of MMIO/port exits handed to the main thread (see ExitPolling). */
  exitPolling?: ExitPolling;
  /**
   * Sees every exit that would end a vCPU's run (emulation failures, shutdowns...) before it
   * does, on the main thread with the vCPU's registers accessible; returning true resumes the
   * vCPU. For hosts whose KVM needs the VMM to complete instructions (see pvm-quirks.ts).
   */
  interceptExit?: ExitInterceptor;
}

export class KvmVm extends VmLifecycle<KvmVcpu> implements PortIoVm, KvmVcpuHost {
  readonly mmio = new MmioBus();
  readonly ports = new PortBus();
  private readonly ownedEventFds = new Set<EventFd>();
  private legacy: PcLegacyDevices | null = null;
  private ram: KvmGuestRam | null = null;
  readonly exitPolling: ExitPolling;
  readonly interceptExit?: ExitInterceptor;

  private constructor(private readonly hv: KvmHypervisor, readonly fd: number, private readonly config: KvmVmConfig) {
    super('KVM VM');
    this.exitPolling = config.exitPolling ?? {};
    if (config.interceptExit) this.interceptExit = config.interceptExit;
  }

  /** KVM_CREATE_VM and the x86 platform: TSS and identity map, irqchip, PIT, RAM, vCPUs, COM1, i8042. */
  static create(hv: KvmHypervisor, config: KvmVmConfig): KvmVm {
    const vcpus = config.vcpus ?? 1;
    if (!Number.isInteger(vcpus) || vcpus < 0 || vcpus > hv.capabilities.maxVcpus) {
      throw new VmError('EINVAL', `KVM VM: ${vcpus} vCPUs (this host allows ${hv.capabilities.maxVcpus})`);
    }
    const fd = libc.ioctl(hv.fd, kvm.KVM_CREATE_VM, 0, 'KVM_CREATE_VM');
    const vm = new KvmVm(hv, fd, config);
    try {
      libc.ioctl(fd, kvm.KVM_SET_TSS_ADDR, KVM_TSS_ADDRESS, 'KVM_SET_TSS_ADDR');
      const identity = new BigUint64Array([BigInt(KVM_IDENTITY_MAP_ADDRESS)]);
      libc.ioctlPtr(fd, kvm.KVM_SET_IDENTITY_MAP_ADDR, identity, 'KVM_SET_IDENTITY_MAP_ADDR');
      libc.ioctl(fd, kvm.KVM_CREATE_IRQCHIP, 0, 'KVM_CREATE_IRQCHIP');
      libc.ioctlPtr(fd, kvm.KVM_CREATE_PIT2, kvm.encodeKvmPitConfig({ flags: kvm.KVM_PIT_SPEAKER_DUMMY }), 'KVM_CREATE_PIT2');
      reserveVcpuThreads(vcpus); // they boot while the caller sets the VM up
      vm.ram = mapGuestRam(fd, config.memory, hv.capabilities.memorySlots);
      for (let i = 0; i < vcpus; i++) vm.createVcpu();
      vm.legacy = attachPcLegacyDevices(vm, config);
    } catch (e) {
      vm.releaseResources();
      throw e;
    }
    return vm;
  }

  get memory(): GuestMemory {
    if (!this.ram) throw new VmError('EBADF', 'KVM VM: no guest RAM');
    return this.ram.memory;
  }

  /** COM1. */
  get uart(): Uart16550 {
    return this.legacy!.uart;
  }

  createVcpu(): KvmVcpu {
    return this.addVcpu((id) => KvmVcpu.create(this.fd, id, this.hv.vcpuMmapSize, this.cpuidFor(id), this));
  }

  addIoEventFd(match: IoEventMatch, fd: EventFd): Registration {
    this.checkOpen('addIoEventFd');
    if (!this.hv.capabilities.ioeventfd) throw new VmError('ENOTSUP', 'KVM: no ioeventfd support');
    if (match.length === 0 && !this.hv.capabilities.ioeventfdAnyLength) throw new VmError('ENOTSUP', 'KVM: no any-length ioeventfds');
    const arg: kvm.KvmIoeventfd = { addr: match.address, len: match.length, fd: fd.fd, datamatch: match.datamatch, pio: match.space === 'pio' };
    const where = `KVM_IOEVENTFD ${match.space ?? 'mmio'} 0x${match.address.toString(16)}/${match.length}`;
    libc.ioctlPtr(this.fd, kvm.KVM_IOEVENTFD, kvm.encodeKvmIoeventfd(arg), where);
    let removed = false;
    return {
      remove: () => {
        if (removed || this.currentState === 'closed') return;
        removed = true;
        libc.ioctlPtr(this.fd, kvm.KVM_IOEVENTFD, kvm.encodeKvmIoeventfd({ ...arg, deassign: true }), `${where} deassign`);
      },
    };
  }

  addIrqFd(irq: number, fd: EventFd, options: IrqFdOptions): IrqFdBinding {
    this.checkOpen('addIrqFd');
    if (!this.hv.capabilities.irqfd) throw new VmError('ENOTSUP', 'KVM: no irqfd support');
    if (options.level && !this.hv.capabilities.irqfdResample) throw new VmError('ENOTSUP', 'KVM: no level irqfds (KVM_CAP_IRQFD_RESAMPLE)');
    let resample: EventFd | null = null;
    let ownsResample = false;
    if (options.level) {
      resample = options.resample ?? EventFd.create();
      ownsResample = options.resample === undefined;
      if (ownsResample) this.ownedEventFds.add(resample);
    }
    const where = `KVM_IRQFD gsi ${irq}`;
    try {
      libc.ioctlPtr(this.fd, kvm.KVM_IRQFD, kvm.encodeKvmIrqfd({ fd: fd.fd, gsi: irq, resamplefd: resample?.fd }), where);
    } catch (e) {
      if (ownsResample) this.closeOwned(resample!);
      throw e;
    }
    let removed = false;
    return {
      irq,
      irqfd: fd,
      mode: options.level ? 'level' : 'edge',
      resample,
      remove: () => {
        if (removed || this.currentState === 'closed') return;
        removed = true;
        libc.ioctlPtr(this.fd, kvm.KVM_IRQFD, kvm.encodeKvmIrqfd({ fd: fd.fd, gsi: irq, deassign: true }), `${where} deassign`);
        if (ownsResample) this.closeOwned(resample!);
      },
    };
  }

  async start(): Promise<void> {
    this.checkStartable();
    this.currentState = 'running';
    try {
      await Promise.all(this.vcpus.map(async (v) => {
        await v.start();
        this.vcpuStarted(v);
      }));
    } catch (e) {
      await this.failStart(e);
    }
  }

  private cpuidFor(vcpuId: number): kvm.KvmCpuidEntry2[] {
    const entries = this.hv.supportedCpuid.map((e) => {
      const entry = { ...e };
      if (entry.function === 1) entry.ebx = ((entry.ebx & 0x00ff_ffff) | (vcpuId << 24)) >>> 0;
      if (entry.function === 0xb || entry.function === 0x1f) entry.edx = vcpuId;
      return entry;
    });
    return this.config.cpuid ? this.config.cpuid(entries, vcpuId) : entries;
  }

  private closeOwned(fd: EventFd): void {
    this.ownedEventFds.delete(fd);
    fd.close();
  }

  /** Every fd and mapping, in dependency order; the vCPU threads have ended. */
  protected override releaseResources(): void {
    const errors: unknown[] = [];
    const attempt = (f: () => void) => { try { f(); } catch (e) { errors.push(e); } };
    if (this.legacy) attempt(() => this.legacy!.close());
    for (const fd of this.ownedEventFds) attempt(() => fd.close());
    this.ownedEventFds.clear();
    for (const v of this.vcpus) attempt(() => v.close());
    attempt(() => libc.close(this.fd, 'close KVM VM'));
    if (this.ram) attempt(() => this.ram!.release());
    if (errors.length > 0) throw errors[0];
  }
}
