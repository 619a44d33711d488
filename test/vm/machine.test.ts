// The composition API beyond one boot: which hypervisor 'auto' picks (and the one-line error
// when there is none), the same Machine on Gunyah (through the model of the Android-14 driver:
// its devices reach the resource manager's view of our device tree), device slots and misuse.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { ConsoleDevice } from '../../devices/console.ts';
import { RngDevice } from '../../devices/rng.ts';
import { VIRTIO_IRQS, VIRTIO_MMIO_BASE, VIRTIO_MMIO_STRIDE } from '../../framework/vm/boot/x86-layout.ts';
import { ARM64_RAM_BASE, FIRST_DEVICE_SPI } from '../../framework/vm/gunyah/arm64-layout.ts';
import { createMachine, parseMemorySize, resolveHypervisor } from '../../framework/vm/machine.ts';
import { VmError } from '../../framework/vm/vm-error.ts';
import { VirtioMmioTransport } from '../../transports/virtio-mmio/mmio-transport.ts';
import { fakeKernel, memoryConsoleHost } from '../gunyah/support/fixture.ts';
import { GunyahModel } from '../gunyah/model/gunyah-model.ts';
import { kvmSkipReason } from './tiny-vm.ts';

const kvmSkip = kvmSkipReason();
const kvmTest = kvmSkip ? test.skip : test;

function withPaths(names: ('kvm' | 'gunyah')[], body: (paths: { kvm: string; gunyah: string }) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'rxvirt-hv-'));
  try {
    const paths = { kvm: join(dir, 'kvm'), gunyah: join(dir, 'gunyah') };
    for (const n of names) writeFileSync(paths[n], '');
    body(paths);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test("'auto' prefers /dev/gunyah, falls back to /dev/kvm, and names both when neither exists", () => {
  withPaths(['kvm', 'gunyah'], (p) => assert.is(resolveHypervisor('auto', p), 'gunyah'));
  withPaths(['kvm'], (p) => assert.is(resolveHypervisor('auto', p), 'kvm'));
  withPaths(['gunyah'], (p) => assert.is(resolveHypervisor('kvm', p), 'kvm', 'an explicit choice is not second-guessed'));
  withPaths([], (p) => {
    try {
      resolveHypervisor('auto', p);
      assert.unreachable();
    } catch (e) {
      assert.instance(e, VmError);
      assert.is((e as VmError).code, 'ENODEV');
      assert.match((e as Error).message, new RegExp(`neither ${p.gunyah} nor ${p.kvm} exists`));
    }
  });
});

test('memory sizes: bytes or K/M/G suffixes; anything else is EINVAL', () => {
  assert.is(parseMemorySize('256M'), 256 * 2 ** 20);
  assert.is(parseMemorySize('1G'), 2 ** 30);
  assert.is(parseMemorySize(8192), 8192);
  assert.throws(() => parseMemorySize('lots'), (e: unknown) => e instanceof VmError && e.code === 'EINVAL');
});

test('the same Machine on Gunyah: devices get SPI slots above RAM that the resource manager finds in our device tree', async () => {
  const model = new GunyahModel();
  const machine = await createMachine({ hypervisor: 'gunyah', memory: '16M', transport: VirtioMmioTransport, gunyah: { driver: model } });
  const host = memoryConsoleHost();
  const consoleDevice = new ConsoleDevice(host.stream);
  try {
    assert.is(machine.hypervisor, 'gunyah');
    const rng = machine.attach(new RngDevice(), 'rng');
    const con = machine.attach(consoleDevice, 'console');
    assert.equal([rng.irq, con.irq], [FIRST_DEVICE_SPI, FIRST_DEVICE_SPI + 1]);
    assert.ok(rng.base >= ARM64_RAM_BASE + 16 * 2 ** 20 && con.base > rng.base);
    await machine.boot({ kernel: fakeKernel(), cmdline: 'console=hvc0' });
    const config = model.vms[0]!.config!;
    assert.equal([...config.virtioDevices.entries()].sort(), [[rng.base, rng.irq], [con.base, con.irq]]);
    assert.equal(model.vms[0]!.boot, { entry: BigInt(ARM64_RAM_BASE), x0: model.vms[0]!.boot!.x0 });
    assert.is(machine.cmdline, 'console=hvc0');
    assert.is(machine.vm.state, 'running');
  } finally {
    await machine.close();
    consoleDevice.close();
  }
  assert.is(machine.vm.state, 'closed');
  assert.is(model.openFds, 0, 'every fd the machine opened was closed');
});

kvmTest('x86 slots: one 4 KiB window and ISA line per device, until the lines run out; no attach after boot', async () => {
  const machine = await createMachine({ hypervisor: 'kvm', memory: '32M', transport: VirtioMmioTransport });
  try {
    const devices = VIRTIO_IRQS.map((_, i) => machine.attach(new RngDevice(), `rng${i}`));
    assert.equal(devices.map((d) => [d.base, d.irq]), VIRTIO_IRQS.map((irq, i) => [VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_STRIDE, irq]));
    assert.throws(() => machine.attach(new RngDevice()), (e: unknown) => e instanceof VmError && e.code === 'ENOSPC');
  } finally {
    await machine.close();
  }
  assert.throws(() => machine.attach(new RngDevice()), (e: unknown) => e instanceof VmError && e.code === 'EBADF');
});

kvmTest('boot refuses a second boot and attach after boot; a bad kernel fails boot without starting vCPUs', async () => {
  const machine = await createMachine({ hypervisor: 'kvm', memory: '32M', transport: VirtioMmioTransport });
  try {
    try {
      await machine.boot({ kernel: new Uint8Array(4096) });
      assert.unreachable();
    } catch (e) {
      assert.match((e as Error).message, /neither an ELF kernel \(vmlinux\) nor a bzImage/);
    }
    assert.is(machine.vm.state, 'created');
    const again = await machine.boot({ kernel: new Uint8Array(4096) }).then(() => null, (e: unknown) => e);
    assert.ok(again instanceof VmError && again.code === 'EBUSY', 'one boot per machine, even a failed one');
    assert.throws(() => machine.attach(new RngDevice()), (e: unknown) => e instanceof VmError && e.code === 'EBUSY');
  } finally {
    await machine.close();
  }
});

test.run();
