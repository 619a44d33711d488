// The model's resource manager: what Gunyah's RM does with a VM's device tree at start, as far
// as a VMM can observe it. It parses /gunyah-vm-config and refuses a config it could not use
// (the driver then fails GH_VM_START with EINVAL and the VM is dead), and it creates the
// resources the driver binds by label: one proxy-scheduled vCPU per cpu node (only with
// `affinity = "proxy"`, without which the host gets no vCPU to run) and one doorbell per
// `vdevice-type = "doorbell"` node, raising the SPI its `interrupts` names.

import { FdtError } from '../../../framework/fdt/fdt-format.ts';
import { parseFdt, type FdtNode } from '../../../framework/fdt/fdt-reader.ts';
import { readNumber } from '../../../framework/fdt/fdt-values.ts';

export interface RmDoorbell {
  readonly label: number;
  readonly spi: number;
  /** DT trigger flags of the doorbell's interrupt (1 edge, 4 level). */
  readonly flags: number;
  readonly path: string;
}

export interface RmVmConfig {
  readonly imageName: string;
  readonly memoryBase: bigint;
  /** vCPU resources the host may run (labels = cpu index). */
  readonly vcpus: readonly number[];
  readonly doorbells: readonly RmDoorbell[];
  /** SPI of each `virtio,mmio` node by its base address (what the guest's drivers will use). */
  readonly virtioDevices: ReadonlyMap<number, number>;
}

/** Why the RM refuses a VM configuration. */
export class RmConfigError extends Error {
  override readonly name = 'RmConfigError';
}

const PAGE = 4096n;

/** Parses and checks the VM's device tree, as the RM does when the VM is configured. */
export function readVmConfig(dtb: Uint8Array): RmVmConfig {
  let root: FdtNode;
  try {
    root = parseFdt(dtb).root;
  } catch (e) {
    if (e instanceof FdtError) throw new RmConfigError(`DTB does not parse: ${e.message}`);
    throw e;
  }
  for (const node of root.children) {
    if (node.string('device_type') === 'memory' && node.name !== 'memory') {
      throw new RmConfigError(`memory node must be named "memory", not "${node.name}"`);
    }
  }
  const config = root.child('gunyah-vm-config');
  if (!config) throw new RmConfigError('no /gunyah-vm-config node');
  const imageName = config.string('image-name');
  if (imageName === null) throw new RmConfigError('missing image name');

  const memory = config.child('memory');
  const addressCells = memory?.u32('#address-cells') ?? 2;
  const baseCells = memory?.cells('base-address') ?? null;
  if (baseCells === null || baseCells.length !== addressCells) throw new RmConfigError('memory/base-address missing or not #address-cells long');
  const memoryBase = readNumber(baseCells, 0, addressCells);
  if (memoryBase % PAGE !== 0n) throw new RmConfigError('base-address invalid alignment');

  const gicPhandle = config.find('interrupts')?.u32('config');
  const gic = gicPhandle === undefined || gicPhandle === null ? undefined : findByPhandle(root, gicPhandle);
  if (!gic || gic.string('compatible') !== 'arm,gic-v3' || !gic.has('interrupt-controller')) {
    throw new RmConfigError('interrupts/config does not point at an arm,gic-v3 interrupt controller');
  }

  const proxy = config.find('vcpus')?.string('affinity') === 'proxy';
  const cpus = (root.child('cpus')?.children ?? []).filter((c) => c.string('device_type') === 'cpu');
  if (cpus.length === 0) throw new RmConfigError('no cpu nodes');
  const vcpus = proxy ? cpus.map((_, i) => i) : [];

  const doorbells: RmDoorbell[] = [];
  for (const node of config.find('vdevices')?.children ?? []) {
    if (node.string('vdevice-type') !== 'doorbell') continue;
    const label = node.u32('label');
    const interrupts = node.cells('interrupts');
    if (label === null) throw new RmConfigError(`${node.path}: doorbell without a label`);
    if (interrupts === null || interrupts.length !== 3 || interrupts[0] !== 0) {
      throw new RmConfigError(`${node.path}: doorbell interrupts must be one SPI specifier <0 spi flags>`);
    }
    doorbells.push({ label, spi: interrupts[1]!, flags: interrupts[2]!, path: node.path });
  }

  const virtioDevices = new Map<number, number>();
  for (const node of root.children) {
    if (node.string('compatible') !== 'virtio,mmio') continue;
    const reg = node.cells('reg');
    const irq = node.cells('interrupts');
    if (reg && reg.length >= 2 && irq && irq.length === 3) virtioDevices.set(Number(readNumber(reg, 0, 2)), irq[1]!);
  }
  return { imageName, memoryBase, vcpus, doorbells, virtioDevices };
}

function findByPhandle(node: FdtNode, phandle: number): FdtNode | undefined {
  if (node.u32('phandle') === phandle) return node;
  for (const child of node.children) {
    const found = findByPhandle(child, phandle);
    if (found) return found;
  }
  return undefined;
}
