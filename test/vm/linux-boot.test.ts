// The x86 Linux boot protocol on KVM, through the composition API, with a tiny stand-in
// "kernel": a 64-bit ELF (and the same ELF inside a gzip bzImage) assembled at test time that
// reports what the 64-bit entry gave it (rsi = boot_params, its magic, loader id, command line,
// e820 count, initramfs, segment selectors) over MMIO and then triple-faults. Also the kvm_pvm
// quirk module's pure parts: instruction bytes of an emulation failure and the CPUID filter.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { RngDevice } from '../../devices/rng.ts';
import { BP } from '../../framework/vm/boot/boot-params.ts';
import { CMDLINE_ADDRESS, ZERO_PAGE_ADDRESS } from '../../framework/vm/boot/x86-layout.ts';
import { classifyInstruction, dropParavirtLeaves, emulationFailureBytes } from '../../framework/vm/kvm/pvm-quirks.ts';
import { createMachine } from '../../framework/vm/machine.ts';
import { BOOT_CS, BOOT_DS } from '../../framework/vm/x86/entry-state.ts';
import { VirtioMmioTransport } from '../../transports/virtio-mmio/mmio-transport.ts';
import { assembleKernel, gzipBzImage } from '../support/stand-in-kernel.ts';
import { kvmSkipReason, TestWindow, withTimeout } from './tiny-vm.ts';

const skip = kvmSkipReason();
if (skip) console.log(`SKIP: ${skip}`);
const kvmTest = skip ? test.skip : test;

const WINDOW = 0xd800_0000;
const DONE = 0x40;

const KERNEL_SOURCE = `
  movabs $${WINDOW}, %rdi
  mov %rsi, 0x00(%rdi)
  mov ${BP.header}(%rsi), %eax
  mov %eax, 0x08(%rdi)
  movzbl ${BP.typeOfLoader}(%rsi), %eax
  mov %eax, 0x0c(%rdi)
  mov ${BP.cmdLinePtr}(%rsi), %eax
  mov %eax, 0x10(%rdi)
  mov (%rax), %rdx
  mov %rdx, 0x18(%rdi)
  movzbl ${BP.e820Entries}(%rsi), %eax
  mov %eax, 0x20(%rdi)
  mov ${BP.ramdiskImage}(%rsi), %eax
  mov %eax, 0x24(%rdi)
  mov (%rax), %rdx
  mov %rdx, 0x38(%rdi)
  mov ${BP.ramdiskSize}(%rsi), %eax
  mov %eax, 0x28(%rdi)
  mov %cs, %eax
  mov %eax, 0x2c(%rdi)
  mov %ss, %eax
  mov %eax, 0x30(%rdi)
  movl $1, ${DONE}(%rdi)
  ud2
`;

const u64 = (s: string) => Buffer.from(s.padEnd(8, '\0').slice(0, 8)).readBigUInt64LE();

for (const format of ['vmlinux ELF', 'gzip bzImage'] as const) {
  kvmTest(`64-bit boot protocol (${format}): rsi = boot_params with our loader fields, command line and initramfs; CS/SS are __BOOT_CS/__BOOT_DS`, async () => {
    const elf = assembleKernel(KERNEL_SOURCE);
    const kernel = format === 'vmlinux ELF' ? elf : gzipBzImage(elf);
    const initrd = Buffer.from('070701-stand-in-initramfs');
    const window = new TestWindow();
    const machine = await createMachine({ memory: '64M', transport: VirtioMmioTransport });
    try {
      const rng = machine.attach(new RngDevice(), 'rng');
      machine.vm.mmio.register(WINDOW, 0x100, window, 'report window');
      await machine.boot({ kernel, initrd, cmdline: 'rxvirt.test=1' });
      await withTimeout(window.nextWrite(DONE), 20_000, 'the stand-in kernel to report');
      const at = (offset: number) => window.writes(offset)[0];
      assert.is(at(0x00), BigInt(ZERO_PAGE_ADDRESS), 'rsi');
      assert.is(at(0x08), 0x53726448n, '"HdrS"');
      assert.is(at(0x0c), 0xffn, 'type_of_loader');
      assert.is(at(0x10), BigInt(CMDLINE_ADDRESS), 'cmd_line_ptr');
      assert.is(at(0x18), u64(machine.cmdline), 'the command line is where cmd_line_ptr says');
      assert.ok(machine.cmdline.startsWith(`console=ttyS0 virtio_mmio.device=512@0x${rng.base.toString(16)}:${rng.irq}`), machine.cmdline);
      assert.ok(machine.cmdline.endsWith(' rxvirt.test=1'), 'user words last');
      assert.is(at(0x20), 3n, 'e820 entries');
      assert.is(at(0x28), BigInt(initrd.length), 'ramdisk_size');
      assert.is(at(0x38), u64(initrd.toString()), 'the initramfs is where ramdisk_image says');
      assert.is(Number(at(0x24)) % 4096, 0, 'initramfs page aligned');
      assert.is(at(0x2c), BigInt(BOOT_CS));
      assert.is(at(0x30), BigInt(BOOT_DS));
      const outcome = await withTimeout(machine.exited, 20_000, 'the triple fault');
      assert.is(outcome.kind, 'reset', 'ud2 without an IDT is a triple fault');
    } finally {
      await machine.close();
    }
  });
}

test('kvm_pvm: the instruction bytes of an emulation failure, and which of them are completed', () => {
  // kvm_run.emulation_failure: flags (bit 0: bytes present), then insn_size and 15 bytes.
  const words = (bytes: number[]) => {
    const raw = new Uint8Array(16);
    raw[0] = bytes.length;
    raw.set(bytes, 1);
    const v = new DataView(raw.buffer);
    return [1n, v.getBigUint64(0, true), v.getBigUint64(8, true), 0n];
  };
  assert.equal([...emulationFailureBytes(words([0x0f, 0x01, 0xca]))!], [0x0f, 0x01, 0xca]);
  assert.is(emulationFailureBytes([0n, 0n, 0n]), null, 'no bytes without the flag');
  const kinds = [[0xcc], [0x9b], [0x0f, 0x0b], [0x0f, 0x01, 0xca], [0x0f, 0x01, 0xcb], [0x0f, 0xae, 0x2f], [0x90]]
    .map((b) => classifyInstruction(emulationFailureBytes(words(b))!));
  assert.equal(kinds, ['int3', 'fwait', 'ud2', 'clac', 'stac', null, null]);
});

test('kvm_pvm: the CPUID table loses exactly the KVM paravirt leaves', () => {
  const leaf = (f: number) => ({ function: f, index: 0, flags: 0, eax: 1, ebx: 2, ecx: 3, edx: 4 });
  const kept = dropParavirtLeaves([0, 1, 7, 0x3fffffff, 0x40000000, 0x40000001, 0x4000ffff, 0x40010000, 0x80000001].map(leaf));
  assert.equal(kept.map((e) => e.function), [0, 1, 7, 0x3fffffff, 0x40010000, 0x80000001]);
});

test.run();
