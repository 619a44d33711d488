// x86_64 on KVM as a Machine sees it: RAM split around the 32-bit MMIO hole, COM1 as the boot
// console (console=ttyS0), virtio-mmio windows from 0xd0000000 on free ISA interrupt lines
// (edge irqfds), Linux loaded by x86-linux.ts, and the kvm_pvm work-arounds switched on when
// the host's KVM is kvm_pvm (their command-line words go after the device entries).

import type { Observable } from 'rxjs';
import { KvmHypervisor } from '../kvm/kvm-hypervisor.ts';
import type { KvmVm } from '../kvm/kvm-vm.ts';
import { createPvmQuirks, pvmQuirks, type PvmQuirks } from '../kvm/pvm-quirks.ts';
import { VmError } from '../vm-error.ts';
import { composeCmdline } from './cmdline.ts';
import { createOwnedVm, type DeviceSlot, type MachinePlatform, type PlatformBoot } from './machine-platform.ts';
import { loadX86Linux, parseX86Kernel, type X86LinuxLayout } from './x86-linux.ts';
import { PAGE_SIZE, VIRTIO_IRQS, VIRTIO_MMIO_BASE, VIRTIO_MMIO_STRIDE, x86RamRegions } from './x86-layout.ts';

export interface KvmPlatformOptions {
  readonly memory: number;
  readonly cpus: number;
  /** /dev/kvm by default. */
  readonly path?: string | undefined;
  readonly serialInput$?: Observable<Uint8Array> | undefined;
  /** Force the kvm_pvm work-arounds on or off; default: when /sys/module/kvm_pvm exists. */
  readonly pvmQuirks?: boolean | undefined;
}

/** The kernel words x86 guests get before the devices and the user's words. */
export const X86_PLATFORM_CMDLINE: readonly string[] = Object.freeze(['console=ttyS0']);

export interface KvmX86Platform extends MachinePlatform {
  readonly kind: 'kvm';
  readonly vm: KvmVm;
  /** The kvm_pvm work-arounds in use, or null. */
  readonly quirks: PvmQuirks | null;
  /** Where the last load put things. */
  readonly layout: X86LinuxLayout | null;
}

export function createKvmX86Platform(options: KvmPlatformOptions): KvmX86Platform {
  if (!Number.isSafeInteger(options.memory) || options.memory <= 0 || options.memory % PAGE_SIZE !== 0) {
    throw new VmError('EINVAL', `memory: ${options.memory} bytes is not a positive multiple of 4 KiB`);
  }
  const quirks = options.pvmQuirks === undefined ? pvmQuirks() : options.pvmQuirks ? createPvmQuirks() : null;
  const hv = KvmHypervisor.open(options.path);
  const { vm, close } = createOwnedVm(hv, () => hv.createVm({
    memory: x86RamRegions(options.memory),
    vcpus: options.cpus,
    ...(options.serialInput$ ? { serialInput$: options.serialInput$ } : {}),
    ...(quirks ? { cpuid: quirks.cpuid, interceptExit: quirks.interceptExit } : {}),
  }));
  let layout: X86LinuxLayout | null = null;
  return {
    kind: 'kvm',
    vm,
    quirks,
    get layout() {
      return layout;
    },
    serial$: vm.uart.output$,
    deviceSlot(index: number): DeviceSlot {
      const irq = VIRTIO_IRQS[index];
      if (irq === undefined) throw new VmError('ENOSPC', `x86 machine: at most ${VIRTIO_IRQS.length} virtio devices (one free ISA interrupt each)`);
      return { base: VIRTIO_MMIO_BASE + index * VIRTIO_MMIO_STRIDE, size: VIRTIO_MMIO_STRIDE, irq, level: false };
    },
    load(boot: PlatformBoot): string {
      const kernel = parseX86Kernel(boot.kernel);
      const cmdline = composeCmdline({
        platform: X86_PLATFORM_CMDLINE,
        devices: boot.devices.map((d) => `virtio_mmio.device=${d.transport.size}@0x${d.base.toString(16)}:${d.irq}`),
        quirks: quirks?.cmdline,
        user: boot.cmdline,
      }, kernel.cmdlineLimit);
      layout = loadX86Linux(vm.memory, vm.vcpus[0]!, { kernel, initrd: boot.initrd, cmdline, cpus: vm.vcpus.length });
      return cmdline;
    },
    close,
  };
}
