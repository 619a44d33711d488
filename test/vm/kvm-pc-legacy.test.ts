// The legacy PC devices of a KVM VM, driven by real guest code: COM1 output polled and
// interrupt-driven (THR-empty interrupts on IRQ 4), host input echoed by the guest's receive
// interrupt handler, unclaimed ports answered inside the vCPU thread, and the i8042 reset.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Subject } from 'rxjs';
import { chooseSeed, Prng } from '../support/prng.ts';
import { kvmSkipReason, MMIO_BASE, MMIO_SEG, TestWindow, tinyVm, withTimeout } from './tiny-vm.ts';

const skip = kvmSkipReason();
if (skip) console.log(`SKIP: ${skip}`);
const kvmTest = skip ? test.skip : test;

const text = (chunks: Uint8Array[]) => Buffer.concat(chunks).toString('latin1');

async function until(condition: () => boolean, what: string, ms = 5000): Promise<void> {
  await withTimeout((async () => { while (!condition()) await new Promise((r) => setTimeout(r, 2)); })(), ms, what);
}

kvmTest('COM1: polled and interrupt-driven output, then host input echoed by the RX interrupt handler', async () => {
  const input = new Subject<Uint8Array>();
  const { vm, image } = tinyVm('uart', { bits: 16 }, { serialInput$: input });
  const out: Uint8Array[] = [];
  vm.uart.output$.subscribe((b) => out.push(b));
  try {
    await vm.start();
    await until(() => text(out) === 'hello, polled\nhello, irq\n', 'the two greetings');
    const tx = vm.vcpus[0]!.stats().io;
    const rng = new Prng(chooseSeed());
    const word = Array.from({ length: 8 }, () => String.fromCharCode(rng.int(0x61, 0x7a))).join('');
    input.next(Buffer.from(word, 'latin1'));
    await until(() => text(out).endsWith(word), `the echo of ${word}`);
    assert.is(text(out), `hello, polled\nhello, irq\n${word}`);
    assert.ok(vm.vcpus[0]!.stats().io > tx, 'the echo went through port exits');
    assert.ok(image.symbols.isr! > image.origin, 'the interrupt handler is part of the image');
  } finally {
    await vm.close();
  }
});

kvmTest('i8042 0xfe ends the VM with outcome reset; unclaimed ports are ignored inside the vCPU thread', async () => {
  const delays = new Prng(chooseSeed()).int(10, 300);
  const window = new TestWindow();
  const { vm } = tinyVm('reset', { bits: 16, symbols: { MMIO_SEG, DELAYS: delays } });
  try {
    vm.mmio.register(MMIO_BASE, 0x100, window, 'test window');
    await vm.start();
    const outcome = await withTimeout(vm.outcome, 5000, 'the reset');
    assert.equal(outcome, { kind: 'reset', reason: 'i8042 reset' });
    assert.equal(window.writes(0), [0xffn], 'an unclaimed port reads as a floating bus');
    const stats = vm.vcpus[0]!.stats();
    assert.is(stats.ioIgnored, delays + 1, 'port 0x80 writes and the 0x92 read never left the vCPU thread');
    assert.is(stats.io, 1, 'only the i8042 command reached the main thread');
    assert.is(vm.state, 'ended');
  } finally {
    await vm.close();
  }
});

test.run();
