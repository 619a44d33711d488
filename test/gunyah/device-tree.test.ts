// The arm64 Gunyah guest device tree: what Linux and the resource manager read from it, checked
// by parsing the blob back, and dtc's verdict on it.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { parseFdt, type FdtNode } from '../../framework/fdt/fdt-reader.ts';
import { readNumber } from '../../framework/fdt/fdt-values.ts';
import {
  ARM64_RAM_BASE, FIRST_DEVICE_SPI, VIRTIO_MMIO_WINDOW, doorbellLabel, virtioMmioSlots,
} from '../../framework/vm/gunyah/arm64-layout.ts';
import { buildGunyahDeviceTree } from '../../framework/vm/gunyah/device-tree.ts';
import { VmError } from '../../framework/vm/vm-error.ts';
import { decompile, dtcAvailable, warningChecks } from './support/dtc.ts';

const RAM = 256 << 20;

function tree(options: { vcpus?: number; devices?: number; level?: boolean; initrd?: boolean; memory?: { base: number; size: number }[] } = {}) {
  const memory = options.memory ?? [{ base: ARM64_RAM_BASE, size: RAM }];
  const devices = virtioMmioSlots(memory[0]!.base + memory[0]!.size, options.devices ?? 3, options.level ?? true);
  const blob = buildGunyahDeviceTree({
    memory,
    vcpus: options.vcpus ?? 2,
    cmdline: 'console=hvc0 root=/dev/vda rw',
    initrd: options.initrd === false ? undefined : { start: 0x8f00_0000, end: 0x8f12_3000 },
    devices,
  });
  return { blob, root: parseFdt(blob).root, devices };
}

const u64s = (node: FdtNode, prop: string): bigint[] => {
  const cells = node.cells(prop)!;
  return Array.from({ length: cells.length / 2 }, (_, i) => readNumber(cells, 2 * i, 2));
};

test('/memory is named exactly "memory" and lists every RAM range; /chosen has bootargs and the initrd', () => {
  const memory = [{ base: ARM64_RAM_BASE, size: RAM }, { base: 0x1_0000_0000, size: 64 << 20 }];
  const { root } = tree({ memory });
  assert.ok(root.child('memory'), '/memory');
  assert.not.ok(root.children.some((c) => c.name.startsWith('memory@')), 'no memory@X node');
  assert.is(root.find('memory')!.string('device_type'), 'memory');
  assert.equal(u64s(root.find('memory')!, 'reg'), [BigInt(ARM64_RAM_BASE), BigInt(RAM), 0x1_0000_0000n, BigInt(64 << 20)]);
  const chosen = root.find('chosen')!;
  assert.is(chosen.string('bootargs'), 'console=hvc0 root=/dev/vda rw');
  assert.equal(u64s(chosen, 'linux,initrd-start'), [0x8f00_0000n]);
  assert.equal(u64s(chosen, 'linux,initrd-end'), [0x8f12_3000n]);
  assert.not.ok(tree({ initrd: false }).root.find('chosen')!.has('linux,initrd-start'));
});

test('one cpu node per vCPU with PSCI over hvc; a GICv3 that the root and the VM config point at', () => {
  const { root } = tree({ vcpus: 4 });
  const cpus = root.find('cpus')!.children;
  assert.equal(cpus.map((c) => c.name), ['cpu@0', 'cpu@1', 'cpu@2', 'cpu@3']);
  assert.equal(cpus.map((c) => c.u32('reg')), [0, 1, 2, 3]);
  assert.ok(cpus.every((c) => c.string('enable-method') === 'psci'));
  assert.is(root.find('psci')!.string('method'), 'hvc');
  const gic = root.children.find((c) => c.string('compatible') === 'arm,gic-v3')!;
  assert.ok(gic.has('interrupt-controller'));
  assert.is(gic.u32('#interrupt-cells'), 3);
  const phandle = gic.u32('phandle')!;
  assert.is(root.u32('interrupt-parent'), phandle);
  assert.is(root.find('gunyah-vm-config/interrupts')!.u32('config'), phandle);
  const [distBase, distSize, redistBase, redistSize] = u64s(gic, 'reg');
  assert.is(redistBase! + redistSize!, distBase, 'redistributors sit right below the distributor');
  assert.is(redistSize, 4n * 0x2_0000n, 'one 128 KiB redistributor per vCPU');
  assert.is(distSize, 0x1_0000n);
  const timer = root.find('timer')!;
  assert.is(timer.string('compatible'), 'arm,armv8-timer');
  assert.equal(timer.cells('interrupts')!.filter((_, i) => i % 3 === 1), [13, 14, 11, 10]);
});

test('each virtio-mmio device has a doorbell whose label is its irqfd label and whose interrupt is its own', () => {
  for (const level of [true, false]) {
    const { root, devices } = tree({ devices: 3, level });
    const virtio = root.children.filter((c) => c.string('compatible') === 'virtio,mmio');
    const bells = root.find('gunyah-vm-config/vdevices')!.children;
    assert.is(virtio.length, 3);
    assert.is(bells.length, 3);
    devices.forEach((d, i) => {
      const node = virtio[i]!;
      assert.is(node.name, `virtio_mmio@${d.base.toString(16)}`);
      assert.equal(u64s(node, 'reg'), [BigInt(d.base), BigInt(VIRTIO_MMIO_WINDOW)]);
      assert.ok(node.has('dma-coherent'));
      const interrupts = node.cells('interrupts')!;
      assert.equal(interrupts, [0, d.spi, level ? 4 : 1]);
      const bell = bells.find((b) => b.u32('label') === doorbellLabel(d.spi))!;
      assert.ok(bell, `doorbell for SPI ${d.spi}`);
      assert.is(bell.string('vdevice-type'), 'doorbell');
      assert.equal(bell.cells('interrupts'), interrupts);
      assert.is(bell.string('generate'), `/hypervisor/${bell.name}`);
      assert.ok(bell.has('peer-default') && bell.has('source-can-clear'));
    });
    assert.equal(devices.map((d) => d.spi), [FIRST_DEVICE_SPI, FIRST_DEVICE_SPI + 1, FIRST_DEVICE_SPI + 2]);
  }
});

test('/gunyah-vm-config: memory base of the first region, proxy vCPUs, vdevices generated under /hypervisor', () => {
  const { root } = tree();
  const config = root.find('gunyah-vm-config')!;
  assert.is(config.string('os-type'), 'linux');
  assert.ok(config.string('image-name'));
  const memory = config.child('memory')!;
  assert.is(memory.u32('#address-cells'), 2);
  assert.equal(u64s(memory, 'base-address'), [BigInt(ARM64_RAM_BASE)]);
  assert.is(config.find('vcpus')!.string('affinity'), 'proxy');
  assert.is(config.find('vdevices')!.string('generate'), '/hypervisor');
});

test('the device windows lie above RAM, 2 MiB aligned, one 0x200 window each, none overlapping', () => {
  const slots = virtioMmioSlots(ARM64_RAM_BASE + RAM + 4096, 4);
  assert.is(slots[0]!.base % (2 << 20), 0);
  assert.ok(slots[0]!.base >= ARM64_RAM_BASE + RAM + 4096);
  slots.slice(1).forEach((s, i) => assert.is(s.base, slots[i]!.base + VIRTIO_MMIO_WINDOW));
});

test('bad specs are refused: two devices on one SPI, vCPU counts the layout has no room for', () => {
  const devices = virtioMmioSlots(ARM64_RAM_BASE + RAM, 2);
  assert.throws(() => buildGunyahDeviceTree({
    memory: [{ base: ARM64_RAM_BASE, size: RAM }], vcpus: 1, cmdline: '', devices: [devices[0]!, { ...devices[1]!, spi: devices[0]!.spi }],
  }), (e: unknown) => e instanceof VmError && /SPI 16 used by two devices/.test(e.message));
  for (const vcpus of [0, 9]) {
    assert.throws(() => buildGunyahDeviceTree({ memory: [{ base: ARM64_RAM_BASE, size: RAM }], vcpus, cmdline: '', devices: [] }),
      (e: unknown) => e instanceof VmError && e.code === 'EINVAL');
  }
});

test('dtc accepts the tree; its only warnings are the two the Gunyah bindings impose', () => {
  if (!dtcAvailable()) {
    console.log('SKIP: dtc not installed (Debian package device-tree-compiler)');
    return;
  }
  for (const options of [{}, { vcpus: 8, devices: 12, level: false }, { vcpus: 1, devices: 0, initrd: false }]) {
    const { blob } = tree(options);
    const r = decompile(blob);
    assert.is(r.status, 0, r.messages.join('\n'));
    // label = <N> (the doorbell binding) and /memory without a unit address (the RM's rule).
    const unexpected = warningChecks(r.messages).filter((c) => c !== 'label_is_string' && c !== 'unit_address_vs_reg');
    assert.equal(unexpected, [], r.messages.join('\n'));
    assert.match(r.dts, /memory \{\n\t\tdevice_type = "memory";/);
    assert.match(r.dts, /affinity = "proxy";/);
  }
});

test.run();
