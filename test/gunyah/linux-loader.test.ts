// Loading an arm64 Linux guest into a Gunyah VM: the Image header is checked (Gunyah enters
// whatever sits at the start of the region), the kernel goes at the start of the region that
// holds the DTB, the initramfs right below the 2 MiB DTB area, and the tree describes both.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { parseFdt } from '../../framework/fdt/fdt-reader.ts';
import { readNumber } from '../../framework/fdt/fdt-values.ts';
import { ARM64_RAM_BASE, DTB_REGION_SIZE, virtioMmioSlots } from '../../framework/vm/gunyah/arm64-layout.ts';
import { parseArm64Image } from '../../framework/vm/gunyah/arm64-image.ts';
import { GunyahHypervisor } from '../../framework/vm/gunyah/gunyah-hypervisor.ts';
import { loadLinux } from '../../framework/vm/gunyah/linux-loader.ts';
import { VmError } from '../../framework/vm/vm-error.ts';
import { GunyahModel } from './model/gunyah-model.ts';
import { fakeKernel } from './support/fixture.ts';

const MIB = 1 << 20;
const isVmError = (code: string, message: RegExp) => (e: unknown) => e instanceof VmError && e.code === code && message.test(e.message);

function vm(size = 16 * MIB) {
  const hv = GunyahHypervisor.open({ driver: new GunyahModel() });
  return { hv, vm: hv.createVm({ memory: [{ base: ARM64_RAM_BASE, size }], vcpus: 2 }) };
}

test('the Image header: magic, endianness, text_offset and image_size are checked', () => {
  assert.throws(() => parseArm64Image(new Uint8Array(63)), isVmError('ENOEXEC', /shorter than the 64-byte header/));
  const noMagic = fakeKernel();
  noMagic[56] = 0;
  assert.throws(() => parseArm64Image(noMagic), isVmError('ENOEXEC', /not an arm64 Linux Image/));
  const bigEndian = fakeKernel();
  new DataView(bigEndian.buffer).setBigUint64(24, 1n, true);
  assert.throws(() => parseArm64Image(bigEndian), isVmError('ENOEXEC', /big-endian/));
  assert.equal(parseArm64Image(fakeKernel(100, 8 * MIB)), { textOffset: 0, effectiveSize: 8 * MIB }, 'image_size covers BSS');
  assert.equal(parseArm64Image(fakeKernel(100, 0)), { textOffset: 0, effectiveSize: 164 }, 'image_size 0: the file size');
});

test('kernel at the region start, initramfs page-aligned right below the DTB area, DTB at the top 2 MiB', async () => {
  const { hv, vm: v } = vm();
  const kernel = fakeKernel(10_000);
  const initrd = new Uint8Array(12_345).fill(0xa5);
  const slots = virtioMmioSlots(ARM64_RAM_BASE + 16 * MIB, 2);
  const layout = loadLinux(v, { kernel, initrd, cmdline: 'console=hvc0', devices: slots });
  const end = ARM64_RAM_BASE + 16 * MIB;
  assert.equal(layout.kernel, { address: ARM64_RAM_BASE, size: kernel.length });
  assert.equal(layout.dtb, { address: end - DTB_REGION_SIZE, size: DTB_REGION_SIZE });
  assert.is(layout.initrd!.address % 4096, 0);
  assert.ok(layout.initrd!.address + initrd.length <= layout.dtb.address);
  assert.ok(layout.dtb.address - layout.initrd!.address < initrd.length + 4096, 'right below the DTB area');
  assert.equal(v.memory.slice(ARM64_RAM_BASE, kernel.length), kernel);
  assert.equal(v.memory.slice(layout.initrd!.address, initrd.length), initrd);
  const blob = v.memory.slice(layout.dtb.address, layout.deviceTree.length);
  assert.equal(blob, layout.deviceTree);
  assert.ok(v.memory.slice(layout.dtb.address + blob.length, 4096).every((b) => b === 0), 'free space after the blob is zeroed');
  const root = parseFdt(v.memory.slice(layout.dtb.address, DTB_REGION_SIZE)).root;
  const chosen = root.find('chosen')!;
  assert.is(readNumber(chosen.cells('linux,initrd-start')!, 0, 2), BigInt(layout.initrd!.address));
  assert.is(readNumber(chosen.cells('linux,initrd-end')!, 0, 2), BigInt(layout.initrd!.address + initrd.length));
  assert.is(root.find('cpus')!.children.length, 2, 'one cpu node per vCPU of the VM');
  await v.close();
  hv.close();
});

test('refused: text_offset other than 0, a kernel (with BSS) and initramfs that do not fit below the DTB area', async () => {
  const { hv, vm: v } = vm(8 * MIB);
  const old = fakeKernel();
  new DataView(old.buffer).setBigUint64(8, 0x80000n, true);
  assert.throws(() => loadLinux(v, { kernel: old, cmdline: '', devices: [] }), isVmError('ENOEXEC', /text_offset 0x80000/));
  assert.throws(() => loadLinux(v, { kernel: fakeKernel(100, 6 * MIB + 1), cmdline: '', devices: [] }), isVmError('ENOMEM', /do not fit in 8388608 bytes/));
  assert.throws(() => loadLinux(v, { kernel: fakeKernel(100, 5 * MIB), initrd: new Uint8Array(MIB + 1), cmdline: '', devices: [] }),
    isVmError('ENOMEM', /initramfs/));
  loadLinux(v, { kernel: fakeKernel(100, 5 * MIB), initrd: new Uint8Array(MIB - 4096), cmdline: '', devices: [] });
  await v.close();
  hv.close();
});

test.run();
