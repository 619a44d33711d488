// The 16550 UART model as a guest driver sees it through its eight ports: divisor latch,
// line and modem status, interrupt identification and priorities, interrupt edges, FIFO
// control, loopback (what Linux's probe checks), and host input that is never dropped.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Uart16550 } from '../../framework/vm/x86/uart-16550.ts';
import { chooseSeed, Prng } from '../support/prng.ts';

const THR = 0, RBR = 0, DLL = 0, IER = 1, DLM = 1, IIR = 2, FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7;

function uart() {
  let interrupts = 0;
  const out: number[] = [];
  const u = new Uart16550({ interrupt: () => { interrupts++; } });
  u.output$.subscribe((b) => out.push(...b));
  const inb = (port: number) => { const d = new Uint8Array(1); u.read(port, d); return d[0]!; };
  const outb = (port: number, value: number) => u.write(port, Uint8Array.of(value));
  return { u, inb, outb, out, interrupts: () => interrupts };
}

test('transmit: THR bytes come out in order; LSR always shows THR and shifter empty', () => {
  const { inb, outb, out } = uart();
  for (const c of Buffer.from('ok\n')) outb(THR, c);
  assert.is(Buffer.from(out).toString(), 'ok\n');
  assert.is(inb(LSR) & 0x60, 0x60);
});

test('divisor latch: with LCR.DLAB ports 0/1 are DLL/DLM, and THR/IER are untouched', () => {
  const { inb, outb, out } = uart();
  outb(IER, 0x05);
  outb(LCR, 0x83);
  outb(DLL, 0x01);
  outb(DLM, 0x02);
  assert.equal([inb(DLL), inb(DLM)], [0x01, 0x02]);
  assert.equal(out, [], 'a DLL write is not a transmitted byte');
  outb(LCR, 0x03);
  assert.is(inb(IER), 0x05);
  outb(LCR, 0x83);
  assert.equal([inb(DLL), inb(DLM)], [0x01, 0x02], 'the latch keeps its value');
});

test('receive: host bytes wait in order, LSR.DR while any remain, nothing dropped', () => {
  const { u, inb } = uart();
  const rng = new Prng(chooseSeed());
  const data = rng.bytes(100_000);
  for (let i = 0; i < data.length; i += 777) u.receive(data.subarray(i, i + 777));
  const got = new Uint8Array(data.length);
  for (let i = 0; i < data.length; i++) {
    assert.ok(inb(LSR) & 0x01, 'data ready');
    got[i] = inb(RBR);
  }
  assert.equal(got, data);
  assert.is(inb(LSR) & 0x01, 0);
  assert.is(u.pendingInput, 0);
});

test('IIR: no interrupt until enabled; RX data outranks THR empty; reading IIR acknowledges THR empty', () => {
  const { u, inb, outb } = uart();
  u.receive(Uint8Array.of(0x41));
  assert.is(inb(IIR) & 0x0f, 0x01, 'nothing enabled');
  outb(IER, 0x03);
  assert.is(inb(IIR) & 0x0f, 0x04, 'received data first');
  assert.is(inb(RBR), 0x41);
  assert.is(inb(IIR) & 0x0f, 0x02, 'then THR empty');
  assert.is(inb(IIR) & 0x0f, 0x01, 'acknowledged by the IIR read');
  outb(THR, 0x42);
  assert.is(inb(IIR) & 0x0f, 0x02, 'each transmitted byte empties THR again');
});

test('interrupt edges: one per rising edge of the line, none while a condition is already pending', () => {
  const { u, inb, outb, interrupts } = uart();
  outb(IER, 0x01);
  assert.is(interrupts(), 0);
  u.receive(Uint8Array.of(1, 2));
  assert.is(interrupts(), 1);
  u.receive(Uint8Array.of(3));
  assert.is(interrupts(), 1, 'line already high');
  inb(RBR); inb(RBR); inb(RBR);
  u.receive(Uint8Array.of(4));
  assert.is(interrupts(), 2, 'drained, then new data: a new edge');
  inb(RBR);
  outb(IER, 0x03);
  assert.is(interrupts(), 3, 'enabling THRI with THR empty raises it');
  outb(THR, 0x20);
  assert.is(interrupts(), 3, 'still pending from before: no edge');
  inb(IIR);
  outb(THR, 0x20);
  assert.is(interrupts(), 4);
});

test('FCR: FIFO mode shows in IIR bits 7:6; clearing the RX FIFO drops at most the 16 bytes it holds', () => {
  const { u, inb, outb } = uart();
  outb(FCR, 0x01);
  assert.is(inb(IIR) & 0xc0, 0xc0);
  u.receive(new Uint8Array(20).map((_, i) => i));
  outb(FCR, 0x03);
  assert.is(u.pendingInput, 4);
  assert.is(inb(RBR), 16, 'the host-side bytes behind the FIFO survive');
  outb(FCR, 0x00);
  assert.is(inb(IIR) & 0xc0, 0);
});

test('loopback: MCR outputs appear as MSR inputs (the 0x90 Linux probes for) and THR loops to RBR', () => {
  const { inb, outb, out } = uart();
  outb(MCR, 0x1a); // LOOP | OUT2 | RTS
  assert.is(inb(MSR) & 0xf0, 0x90);
  outb(MCR, 0x1f);
  assert.is(inb(MSR) & 0xf0, 0xf0);
  outb(THR, 0x5a);
  assert.equal(out, [], 'looped back, not transmitted');
  assert.is(inb(RBR), 0x5a);
  outb(MCR, 0x0b);
  assert.is(inb(MSR) & 0xf0, 0xb0, 'outside loopback the peer is connected: DCD, DSR, CTS');
});

test('scratch register holds what was written; wider accesses read the register then zeros', () => {
  const { u, inb, outb } = uart();
  outb(SCR, 0xa5);
  assert.is(inb(SCR), 0xa5);
  const wide = new Uint8Array(2).fill(0xee);
  u.read(SCR, wide);
  assert.equal([...wide], [0xa5, 0]);
});

test.run();
