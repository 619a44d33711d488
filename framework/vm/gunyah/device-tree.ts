// The device tree an arm64 Linux guest of Gunyah boots with: /memory (named exactly `memory`:
// the resource manager refuses `memory@X`), /chosen, the cpus with PSCI, a GICv3, the
// architected timer, one `virtio,mmio` node per device, and /gunyah-vm-config, which the
// resource manager reads: the memory base, the GIC to use, proxy-scheduled vCPUs (what makes
// GH_VCPU_RUN work) and one doorbell per device interrupt, labelled as its irqfd is.

import { FdtWriter } from '../../fdt/fdt-writer.ts';
import { VmError } from '../vm-error.ts';
import { doorbellLabel, gicLayout, type VirtioMmioSlot } from './arm64-layout.ts';

/** GIC interrupt specifier: type cell, then flags (include/dt-bindings/interrupt-controller). */
export const GIC_FDT_IRQ_TYPE_SPI = 0;
export const GIC_FDT_IRQ_TYPE_PPI = 1;
export const IRQ_TYPE_EDGE_RISING = 1;
export const IRQ_TYPE_LEVEL_HIGH = 4;
export const IRQ_TYPE_LEVEL_LOW = 8;

/** PPIs of the architected timer: secure physical, non-secure physical, virtual, hypervisor. */
const TIMER_PPIS = [13, 14, 11, 10];
const GIC_PHANDLE = 1;

export interface GunyahDeviceTreeSpec {
  /** Guest RAM ranges; the first holds the kernel and DTB and is the VM's memory base. */
  readonly memory: readonly { readonly base: number; readonly size: number }[];
  readonly vcpus: number;
  readonly cmdline: string;
  /** Guest-physical [start, end) of the initramfs. */
  readonly initrd?: { readonly start: number; readonly end: number };
  readonly devices: readonly VirtioMmioSlot[];
  /** /gunyah-vm-config image-name. Default 'rxvirt'. */
  readonly imageName?: string;
}

export function buildGunyahDeviceTree(spec: GunyahDeviceTreeSpec): Uint8Array {
  if (spec.memory.length === 0) throw new VmError('EINVAL', 'device tree: no memory');
  const gic = gicLayout(spec.vcpus);
  const spis = new Set<number>();
  for (const d of spec.devices) {
    if (spis.has(d.spi)) throw new VmError('EINVAL', `device tree: SPI ${d.spi} used by two devices`);
    spis.add(d.spi);
  }
  const w = new FdtWriter();
  w.beginNode('');
  w.propertyString('compatible', 'linux,dummy-virt');
  w.propertyU32('#address-cells', 2);
  w.propertyU32('#size-cells', 2);
  w.propertyU32('interrupt-parent', GIC_PHANDLE);

  w.beginNode('chosen');
  w.propertyString('bootargs', spec.cmdline);
  if (spec.initrd) {
    w.propertyU64('linux,initrd-start', spec.initrd.start);
    w.propertyU64('linux,initrd-end', spec.initrd.end);
  }
  w.endNode();

  w.beginNode('memory');
  w.propertyString('device_type', 'memory');
  w.propertyU64('reg', ...spec.memory.flatMap((m) => [m.base, m.size]));
  w.endNode();

  w.beginNode('cpus');
  w.propertyU32('#address-cells', 1);
  w.propertyU32('#size-cells', 0);
  for (let i = 0; i < spec.vcpus; i++) {
    w.beginNode(`cpu@${i.toString(16)}`);
    w.propertyString('device_type', 'cpu');
    w.propertyString('compatible', 'arm,armv8');
    w.propertyString('enable-method', 'psci');
    w.propertyU32('reg', i);
    w.endNode();
  }
  w.endNode();

  w.beginNode('psci');
  w.propertyString('compatible', 'arm,psci-0.2');
  w.propertyString('method', 'hvc');
  w.endNode();

  w.beginNode(`intc@${gic.distBase.toString(16)}`);
  w.propertyString('compatible', 'arm,gic-v3');
  w.propertyU32('#interrupt-cells', 3);
  w.propertyU32('#address-cells', 2);
  w.propertyU32('#size-cells', 2);
  w.propertyEmpty('interrupt-controller');
  w.propertyU64('reg', gic.distBase, gic.distSize, gic.redistBase, gic.redistSize);
  w.propertyU32('phandle', GIC_PHANDLE);
  w.endNode();

  w.beginNode('timer');
  w.propertyString('compatible', 'arm,armv8-timer');
  w.propertyEmpty('always-on');
  w.propertyU32('interrupts', ...TIMER_PPIS.flatMap((ppi) => [GIC_FDT_IRQ_TYPE_PPI, ppi, IRQ_TYPE_LEVEL_LOW]));
  w.endNode();

  for (const d of spec.devices) {
    w.beginNode(`virtio_mmio@${d.base.toString(16)}`);
    w.propertyString('compatible', 'virtio,mmio');
    w.propertyU64('reg', d.base, d.size);
    w.propertyU32('interrupts', GIC_FDT_IRQ_TYPE_SPI, d.spi, irqFlags(d));
    w.propertyEmpty('dma-coherent');
    w.endNode();
  }

  w.beginNode('gunyah-vm-config');
  w.propertyString('image-name', spec.imageName ?? 'rxvirt');
  w.propertyString('os-type', 'linux');
  w.beginNode('memory');
  w.propertyU32('#address-cells', 2);
  w.propertyU32('#size-cells', 2);
  w.propertyU64('base-address', spec.memory[0]!.base);
  w.endNode();
  w.beginNode('interrupts');
  w.propertyU32('config', GIC_PHANDLE);
  w.endNode();
  w.beginNode('vcpus');
  w.propertyString('affinity', 'proxy');
  w.endNode();
  w.beginNode('vdevices');
  w.propertyString('generate', '/hypervisor');
  for (const d of spec.devices) {
    const label = doorbellLabel(d.spi);
    w.beginNode(`bell-${label.toString(16)}`);
    w.propertyString('vdevice-type', 'doorbell');
    w.propertyString('generate', `/hypervisor/bell-${label.toString(16)}`);
    w.propertyU32('label', label);
    w.propertyEmpty('peer-default');
    w.propertyEmpty('source-can-clear');
    w.propertyU32('interrupts', GIC_FDT_IRQ_TYPE_SPI, d.spi, irqFlags(d));
    w.endNode();
  }
  w.endNode(); // vdevices
  w.endNode(); // gunyah-vm-config

  w.endNode(); // root
  return w.finish();
}

function irqFlags(d: VirtioMmioSlot): number {
  return d.level ? IRQ_TYPE_LEVEL_HIGH : IRQ_TYPE_EDGE_RISING;
}
