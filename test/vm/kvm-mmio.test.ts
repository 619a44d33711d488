// MMIO exits through the KVM runtime: guest reads are answered by the MmioBus on the main
// thread and the values land in guest registers (the guest transforms them and writes them
// back); 1/2/4/8-byte widths, real and long mode.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { chooseSeed, Prng } from '../support/prng.ts';
import { kvmSkipReason, MMIO_BASE, MMIO_SEG, TestWindow, tinyVm } from './tiny-vm.ts';

const skip = kvmSkipReason();
if (skip) console.log(`SKIP: ${skip}`);
const kvmTest = skip ? test.skip : test;

kvmTest('real mode: 4/2/1-byte reads come back through guest registers as 4/2/1-byte writes', async () => {
  const rng = new Prng(chooseSeed());
  const answers = new Map<number, bigint>([[0x00, BigInt(rng.u32())], [0x08, BigInt(rng.u32() & 0xffff)], [0x0c, BigInt(rng.u32() & 0xff)]]);
  const window = new TestWindow((offset) => answers.get(offset) ?? 0n);
  const { vm } = tinyVm('mmio-roundtrip', { bits: 16, symbols: { MMIO_SEG } });
  try {
    vm.mmio.register(MMIO_BASE, 0x100, window, 'test window');
    await vm.start();
    await window.nextWrite(0x0f);
    assert.equal(window.writes(0x04), [(answers.get(0x00)! + 0x01010101n) & 0xffff_ffffn]);
    assert.equal(window.writes(0x0a), [~answers.get(0x08)! & 0xffffn]);
    assert.equal(window.writes(0x0d), [(answers.get(0x0c)! + 1n) & 0xffn]);
    const widths = window.accesses.map((a) => `${a.isWrite ? 'w' : 'r'}${a.offset.toString(16)}/${a.width}`);
    assert.equal(widths, ['r0/4', 'w4/4', 'r8/2', 'wa/2', 'rc/1', 'wd/1', 'wf/1']);
    assert.is(vm.vcpus[0]!.stats().mmio, 7);
  } finally {
    await vm.close();
  }
});

kvmTest('long mode: an 8-byte read and write round-trip through a 64-bit register', async () => {
  const rng = new Prng(chooseSeed());
  const value = (BigInt(rng.u32()) << 32n) | BigInt(rng.u32());
  const key = (BigInt(rng.u32()) << 32n) | BigInt(rng.u32());
  const base = 0xd000_0000;
  const window = new TestWindow((offset) => (offset === 0 ? value : 0n));
  const { vm } = tinyVm('mmio-roundtrip64', { bits: 64, symbols: { MMIO_BASE: base, KEY: key } });
  try {
    vm.mmio.register(base, 0x100, window, 'test window');
    await vm.start();
    await window.nextWrite(0x0f);
    const [read] = window.accesses;
    assert.equal([read!.offset, read!.width, read!.isWrite], [0, 8, false]);
    assert.equal(window.writes(0x08), [value ^ key]);
  } finally {
    await vm.close();
  }
});

kvmTest('an access nobody claims reads as zero and does not stop the guest', async () => {
  const { vm } = tinyVm('mmio-roundtrip', { bits: 16, symbols: { MMIO_SEG } });
  const window = new TestWindow();
  try {
    // Only the done byte is claimed: everything before it hits no device.
    vm.mmio.register(MMIO_BASE + 0x0f, 1, window, 'done byte');
    await vm.start();
    await window.nextWrite(0);
    assert.is(vm.mmio.unclaimed, 6);
  } finally {
    await vm.close();
  }
});

test.run();
