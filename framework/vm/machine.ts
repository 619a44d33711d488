// The composition API: a Machine is a VM with guest RAM, vCPUs and the platform's devices,
// virtio devices attached to it, a Linux kernel booted on it, and one outcome.
//
//   const vm = await createMachine({ memory: '256M', cpus: 1, transport: VirtioMmioTransport });
//   vm.attach(new RngDevice());
//   await vm.boot({ kernel: 'vmlinux', initrd: 'initramfs.cpio', cmdline: 'quiet' });
//   const outcome = await vm.exited;
//   await vm.close();
//
// The hypervisor is picked here ('auto': /dev/gunyah, else /dev/kvm); what differs between
// them (RAM layout, where device windows and interrupts go, how the kernel is loaded) lives
// in a MachinePlatform (boot/kvm-x86-platform.ts, boot/gunyah-arm64-platform.ts). Devices are
// reached through a transport class given by the caller (the virtio-mmio transport lives above
// the framework layer); queue notifications arrive on ioeventfds and interrupts leave through
// irqfds, so a running guest never exits to us for either.

import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { EMPTY, type Observable, type Subscription } from 'rxjs';
import { EventFdDoorbell, type Doorbell } from '../doorbell.ts';
import { EventFd } from '../eventfd.ts';
import type { GuestMemory } from '../guest-memory.ts';
import type { MmioHandler } from '../mmio-bus.ts';
import type { VirtioDevice } from '../virtio/device.ts';
import { createGunyahArm64Platform, type GunyahPlatformOptions } from './boot/gunyah-arm64-platform.ts';
import { createKvmX86Platform, type KvmPlatformOptions } from './boot/kvm-x86-platform.ts';
import type { MachinePlatform } from './boot/machine-platform.ts';
import type { Registration, Vm, VmOutcome } from './hypervisor.ts';
import { GUNYAH_DEVICE } from './gunyah/gunyah-hypervisor.ts';
import { KVM_DEVICE } from './kvm/kvm-hypervisor.ts';
import { VmError } from './vm-error.ts';

export type HypervisorChoice = 'auto' | 'kvm' | 'gunyah';

/** What a transport must offer the machine: a register window and its queue notifications. */
export interface MachineTransport extends MmioHandler {
  readonly size: number;
  notifyRegistrations(): readonly { readonly queueIndex: number; readonly address: number; readonly length: 4; readonly datamatch: number }[];
  notify(queueIndex: number): void;
  /** The device's virtio state; reset on close so queue handlers stop and in-flight work settles. */
  readonly state?: { reset(): Promise<void> };
}

/** A transport class such as VirtioMmioTransport. */
export type MachineTransportClass = new (device: VirtioDevice, options: {
  base: number;
  irq: number;
  memory: () => GuestMemory | null;
  doorbell: Doorbell;
}) => MachineTransport;

export interface MachineOptions {
  /** Guest RAM: bytes or a size like '256M', '1G'. Default 256 MiB. */
  readonly memory?: number | string;
  /** vCPUs. Default 1. */
  readonly cpus?: number;
  /** Default 'auto'. */
  readonly hypervisor?: HypervisorChoice;
  /** How devices are exposed (VirtioMmioTransport). */
  readonly transport: MachineTransportClass;
  /** Host bytes for the platform's serial console (x86 COM1). */
  readonly serialInput$?: Observable<Uint8Array>;
  /** Device nodes to probe and open (tests). */
  readonly devicePaths?: { readonly kvm?: string; readonly gunyah?: string };
  /** Gunyah only: the driver (tests pass a model of it). */
  readonly gunyah?: Omit<GunyahPlatformOptions, 'memory' | 'cpus' | 'path'>;
  /** KVM only: force the kvm_pvm work-arounds on (true) or off (false); default: when the host has kvm_pvm. */
  readonly kvmPvmQuirks?: boolean;
}

export interface BootOptions {
  /** Kernel file path or bytes: x86 vmlinux ELF or bzImage; arm64 Image. */
  readonly kernel: string | Uint8Array;
  readonly initrd?: string | Uint8Array;
  /** Appended to the command line the machine composes (console, devices, work-arounds). */
  readonly cmdline?: string;
}

/** A device on the machine: where the guest finds it. */
export interface AttachedDevice {
  readonly device: VirtioDevice;
  readonly name: string;
  readonly transport: MachineTransport;
  readonly base: number;
  readonly irq: number;
  /** Queue notifications received, per queue. */
  readonly notifications: readonly number[];
}

export class Machine {
  private readonly attached: (AttachedDevice & { release(): void })[] = [];
  private booted = false;
  private closing: Promise<void> | null = null;
  /** The command line of the last boot. */
  cmdline = '';

  constructor(private readonly platform: MachinePlatform, private readonly transportClass: MachineTransportClass) {}

  /** 'kvm' or 'gunyah'. */
  get hypervisor(): string {
    return this.platform.kind;
  }

  get vm(): Vm {
    return this.platform.vm;
  }

  /** Bytes the guest writes to the platform's serial console (x86 COM1; empty elsewhere). */
  get serial$(): Observable<Uint8Array> {
    return this.platform.serial$ ?? EMPTY;
  }

  /** Settles once with how the VM ended; never rejects. */
  get exited(): Promise<VmOutcome> {
    return this.platform.vm.outcome;
  }

  get devices(): readonly AttachedDevice[] {
    return this.attached;
  }

  /** Adds a device (before boot): it gets the next register window and interrupt. */
  attach(device: VirtioDevice, name = `virtio-${device.type}-${this.attached.length}`): AttachedDevice {
    if (this.booted) throw new VmError('EBUSY', `attach ${name}: the machine has already booted`);
    if (this.closing) throw new VmError('EBADF', `attach ${name}: the machine is closed`);
    const vm = this.platform.vm;
    const slot = this.platform.deviceSlot(this.attached.length);
    const irqfd = EventFd.create();
    const cleanup: (() => void)[] = [() => irqfd.close()];
    const release = () => {
      for (const f of cleanup.splice(0).reverse()) f();
    };
    try {
      const binding = vm.addIrqFd(slot.irq, irqfd, { level: slot.level });
      cleanup.push(() => binding.remove());
      const doorbell = new EventFdDoorbell(binding.irqfd, binding.mode, binding.resample);
      cleanup.push(() => doorbell.close());
      const transport = new this.transportClass(device, { base: slot.base, irq: slot.irq, memory: () => vm.memory, doorbell });
      if (transport.size > slot.size) throw new VmError('EINVAL', `attach ${name}: a ${transport.size}-byte register window does not fit the ${slot.size}-byte slot`);
      vm.mmio.register(slot.base, transport.size, transport, name);
      cleanup.push(() => vm.mmio.unregister(slot.base));
      const notifications: number[] = [];
      for (const n of transport.notifyRegistrations()) {
        const fd = EventFd.create();
        cleanup.push(() => fd.close());
        notifications[n.queueIndex] = 0;
        const registration: Registration = vm.addIoEventFd({ address: n.address, length: n.length, datamatch: n.datamatch }, fd);
        cleanup.push(() => registration.remove());
        const sub: Subscription = fd.events().subscribe(() => {
          notifications[n.queueIndex]!++;
          transport.notify(n.queueIndex);
        });
        cleanup.push(() => sub.unsubscribe());
      }
      const entry = { device, name, transport, base: slot.base, irq: slot.irq, notifications, release };
      this.attached.push(entry);
      return entry;
    } catch (e) {
      release();
      throw e;
    }
  }

  /** Loads the kernel, initramfs and command line, and starts the vCPUs. Once per machine. */
  async boot(options: BootOptions): Promise<void> {
    if (this.booted) throw new VmError('EBUSY', 'boot: the machine has already booted');
    if (this.closing) throw new VmError('EBADF', 'boot: the machine is closed');
    const [kernel, initrd] = await Promise.all([load(options.kernel), options.initrd === undefined ? undefined : load(options.initrd)]);
    this.booted = true;
    this.cmdline = this.platform.load({ kernel, initrd, cmdline: options.cmdline ?? '', devices: this.attached });
    await this.platform.vm.start();
  }

  /** Ends the VM (outcome 'stopped' unless it had already ended). */
  stop(): Promise<VmOutcome> {
    return this.platform.vm.stop();
  }

  /**
   * Stops the VM, resets the devices (their queue handlers stop, in-flight requests settle while
   * guest memory is still mapped) and releases everything the machine made; the device objects
   * themselves (open files, host streams) stay the caller's. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.platform.vm.stop();
      await Promise.all(this.attached.map((d) => d.transport.state?.reset().catch(() => {})));
      for (const d of this.attached.splice(0).reverse()) d.release();
      await this.platform.close();
    })();
    return this.closing;
  }
}

async function load(source: string | Uint8Array): Promise<Uint8Array> {
  return typeof source === 'string' ? new Uint8Array(await readFile(source)) : source;
}

const SIZE_UNITS: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30 };

/** Bytes from 256M, 1G, 4096... */
export function parseMemorySize(size: number | string): number {
  if (typeof size === 'number') return size;
  const m = /^(\d+)\s*([KMG]?)(i?B)?$/i.exec(size.trim());
  if (!m) throw new VmError('EINVAL', `memory size '${size}' is not a size like 256M or 1G`);
  return Number(m[1]) * SIZE_UNITS[m[2]!.toUpperCase()]!;
}

/** Which hypervisor `choice` means on this host; throws VmError ENODEV when there is none. */
export function resolveHypervisor(choice: HypervisorChoice, paths: { kvm?: string; gunyah?: string } = {}): 'kvm' | 'gunyah' {
  const kvm = paths.kvm ?? KVM_DEVICE;
  const gunyah = paths.gunyah ?? GUNYAH_DEVICE;
  if (choice === 'kvm' || choice === 'gunyah') return choice;
  if (existsSync(gunyah)) return 'gunyah';
  if (existsSync(kvm)) return 'kvm';
  throw new VmError('ENODEV', `no hypervisor on this host: neither ${gunyah} nor ${kvm} exists`);
}

/** A machine on the chosen hypervisor, with RAM and vCPUs, ready for devices and boot. */
export async function createMachine(options: MachineOptions): Promise<Machine> {
  const memory = parseMemorySize(options.memory ?? '256M');
  const cpus = options.cpus ?? 1;
  if (!Number.isInteger(cpus) || cpus < 1) throw new VmError('EINVAL', `cpus: ${cpus} is not a positive whole number`);
  const kind = resolveHypervisor(options.hypervisor ?? 'auto', options.devicePaths);
  const platform = kind === 'gunyah'
    ? createGunyahArm64Platform({ memory, cpus, path: options.devicePaths?.gunyah, ...options.gunyah })
    : createKvmX86Platform({
        memory, cpus, path: options.devicePaths?.kvm, serialInput$: options.serialInput$, pvmQuirks: options.kvmPvmQuirks,
      } satisfies KvmPlatformOptions);
  return new Machine(platform, options.transport);
}
