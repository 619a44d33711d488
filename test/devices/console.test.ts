import { createServer, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Subject } from 'rxjs';
import { ConsoleDevice, VIRTIO_CONSOLE_F_SIZE } from '../../devices/console.ts';
import { appendFileStream, connectUnixSocket, writableOutput, type ByteStream } from '../../framework/io/byte-stream.ts';
import { hasFeature } from '../../framework/virtio/constants.ts';
import { DeviceHarness } from '../support/device-harness.ts';

const RX = 0, TX = 1;
const enc = (s: string) => new TextEncoder().encode(s);
const dec = (b: Uint8Array) => new TextDecoder().decode(b);

/** A host side held in memory: push input, read output, optionally hold output back. */
function memoryHost() {
  const input = new Subject<Uint8Array>();
  const output: Uint8Array[] = [];
  const pauses: boolean[] = [];
  let gate: { promise: Promise<void>; open: () => void } | null = null;
  const stream: ByteStream = {
    input$: input,
    output(bytes) {
      output.push(bytes);
      return gate?.promise;
    },
    pauseInput: (paused) => pauses.push(paused),
    close() {},
  };
  return {
    stream, input, output, pauses,
    text: () => output.map(dec).join(''),
    hold() {
      let open!: () => void;
      const promise = new Promise<void>((r) => (open = r));
      gate = { promise, open: () => { gate = null; open(); } };
    },
    release: () => gate?.open(),
  };
}

function readConfigU16(h: DeviceHarness, offset: number): number {
  const b = new Uint8Array(2);
  h.device.config.read(offset, b);
  return b[0]! | (b[1]! << 8);
}

test('guest output: every readable byte of each chain reaches the host in order, used len 0', async () => {
  const host = memoryHost();
  const h = new DeviceHarness(new ConsoleDevice(host.stream));
  h.queues[TX]!.addChain([{ data: enc('hel') }, { data: enc('lo ') }]);
  h.queues[TX]!.addChain([{ data: enc('world') }]);
  h.kick(TX);
  const used = await h.waitUsed(TX, 2);
  assert.equal(used.map((u) => u.len), [0, 0]);
  assert.is(host.text(), 'hello world');
});

test('host input before the guest posts buffers: nothing lost, order kept, split across small buffers', async () => {
  const host = memoryHost();
  const h = new DeviceHarness(new ConsoleDevice(host.stream));
  host.input.next(enc('abcd'));
  host.input.next(enc('efghij'));
  await h.settle();
  assert.is(h.pendingUsed(RX), 0, 'no buffers, no completions');
  assert.is(h.device.pendingInput, 10);
  for (let i = 0; i < 3; i++) h.queues[RX]!.addChain([{ writableLen: 3 }]);
  h.kick(RX);
  const first = await h.waitUsed(RX, 3);
  assert.equal(first.map((u) => dec(u.written)), ['abc', 'def', 'ghi']);
  assert.equal(first.map((u) => u.len), [3, 3, 3]);
  assert.is(h.device.pendingInput, 1);
  h.queues[RX]!.addChain([{ writableLen: 2 }, { writableLen: 8 }]);
  h.kick(RX);
  const [last] = await h.waitUsed(RX, 1);
  assert.is(last!.len, 1);
  assert.is(dec(last!.written), 'j');
  assert.is(h.device.pendingInput, 0);
});

test('buffers posted first are filled as soon as host bytes arrive, and only then', async () => {
  const host = memoryHost();
  const h = new DeviceHarness(new ConsoleDevice(host.stream));
  h.queues[RX]!.addChain([{ writableLen: 64 }]);
  h.queues[RX]!.addChain([{ writableLen: 64 }]);
  h.kick(RX);
  await h.settle();
  assert.is(h.pendingUsed(RX), 0, 'empty buffers are kept, not returned');
  host.input.next(enc('ls -l\n'));
  const [used] = await h.waitUsed(RX, 1);
  assert.is(dec(used!.written), 'ls -l\n');
  host.input.next(enc('x'));
  const [next] = await h.waitUsed(RX, 1);
  assert.is(dec(next!.written), 'x');
});

test('a saturated host stops guest output being consumed until it drains', async () => {
  const host = memoryHost();
  const h = new DeviceHarness(new ConsoleDevice(host.stream));
  host.hold();
  for (const s of ['one ', 'two ', 'three']) h.queues[TX]!.addChain([{ data: enc(s) }]);
  h.kick(TX);
  await h.settle();
  assert.is(host.text(), 'one ', 'one chunk out, then it waits');
  assert.is(h.pendingUsed(TX), 0, 'the chain being sent is not returned yet');
  host.release();
  const used = await h.waitUsed(TX, 3);
  assert.is(used.length, 3);
  assert.is(host.text(), 'one two three');
});

test('a flood of host input pauses the host and resumes it once the guest drained it', async () => {
  const host = memoryHost();
  const h = new DeviceHarness(new ConsoleDevice(host.stream));
  const chunk = new Uint8Array(16 * 1024).fill(0x61);
  for (let i = 0; i < 6; i++) host.input.next(chunk);
  assert.equal(host.pauses, [true], 'paused past the high-water mark');
  let got = 0;
  while (got < 6 * chunk.length) {
    for (let i = 0; i < 8; i++) h.queues[RX]!.addChain([{ writableLen: 4096 }]);
    h.kick(RX);
    for (const u of await h.waitUsed(RX, 8)) got += u.len;
  }
  assert.is(got, 6 * chunk.length);
  assert.equal(host.pauses, [true, false]);
});

test('host bytes waiting across a device reset are delivered to the next driver, in order', async () => {
  const host = memoryHost();
  const h = new DeviceHarness(new ConsoleDevice(host.stream));
  host.input.next(enc('before reset, '));
  h.submit(RX, [{ writableLen: 7 }]);
  assert.is(dec((await h.waitUsed(RX, 1))[0]!.written), 'before ');
  await h.restart();
  host.input.next(enc('after'));
  h.submit(RX, [{ writableLen: 64 }]);
  const [used] = await h.waitUsed(RX, 1);
  assert.is(dec(used!.written), 'reset, after');
  h.submit(TX, [{ data: enc('still talking') }]);
  await h.waitUsed(TX, 1);
  assert.is(host.text(), 'still talking');
});

test('resize updates cols/rows, bumps the generation and raises a config interrupt', async () => {
  const host = memoryHost();
  const device = new ConsoleDevice(host.stream, { cols: 100, rows: 30 });
  const h = new DeviceHarness(device);
  assert.ok(hasFeature(h.state.driverFeatures, VIRTIO_CONSOLE_F_SIZE));
  assert.equal([readConfigU16(h, 0), readConfigU16(h, 2)], [100, 30]);
  const generation = device.config.generation;
  device.resize(132, 43);
  assert.equal([readConfigU16(h, 0), readConfigU16(h, 2)], [132, 43]);
  assert.is.not(device.config.generation, generation);
  assert.is(h.configInterrupts, 1);
  device.resize(132, 43);
  assert.is(h.configInterrupts, 1, 'same size: no interrupt');
});

test('the host size$ drives resize', async () => {
  const host = memoryHost();
  const size$ = new Subject<{ cols: number; rows: number }>();
  const device = new ConsoleDevice({ ...host.stream, size$ });
  const h = new DeviceHarness(device);
  size$.next({ cols: 90, rows: 40 });
  assert.equal([readConfigU16(h, 0), readConfigU16(h, 2)], [90, 40]);
  assert.is(h.configInterrupts, 1);
});

test('emergency write: a driver write of emerg_wr sends one byte to the host', async () => {
  const host = memoryHost();
  const h = new DeviceHarness(new ConsoleDevice(host.stream));
  h.device.config.write(8, Uint8Array.of(0x21, 0, 0, 0));
  h.device.config.write(0, Uint8Array.of(1, 2, 3, 4));
  assert.is(host.text(), '!');
  assert.is(readConfigU16(h, 0), 80, 'cols is not driver-writable');
});

test('emergency writes while the host is saturated are dropped, as on a serial line, and flow again once it drains', async () => {
  const host = memoryHost();
  const h = new DeviceHarness(new ConsoleDevice(host.stream));
  host.hold();
  for (let i = 0; i < 1000; i++) h.device.config.write(8, Uint8Array.of(0x41, 0, 0, 0));
  assert.is(host.text(), 'A', 'one byte out, then the host said wait');
  h.submit(TX, [{ data: enc('queued') }]);
  await h.settle();
  assert.is(host.text(), 'A', 'guest output waits for the same host');
  host.release();
  await h.waitUsed(TX, 1);
  h.device.config.write(8, Uint8Array.of(0x42, 0, 0, 0));
  assert.is(host.text(), 'AqueuedB');
});

test('a stalled host stream holds a bounded amount of emergency output, whatever the guest writes', async () => {
  const stalled = new Writable({ highWaterMark: 1024, write() {} }); // a peer that stopped reading
  const h = new DeviceHarness(new ConsoleDevice({ input$: new Subject(), output: writableOutput(stalled), close() {} }));
  for (let i = 0; i < 20000; i++) h.device.config.write(8, Uint8Array.of(0x41, 0, 0, 0));
  assert.ok(stalled.writableLength <= 1025, `${stalled.writableLength} bytes buffered`);
  assert.ok(stalled.listenerCount('drain') <= 1, `${stalled.listenerCount('drain')} drain listeners`);
  await h.settle();
});

test('a draining stop (vhost-user GET_VRING_BASE) waits for a saturated host and returns the chain being sent', async () => {
  const host = memoryHost();
  const h = new DeviceHarness(new ConsoleDevice(host.stream));
  const tx = h.queues[TX]!;
  host.hold();
  const head = tx.addChain([{ data: enc('hello') }]);
  h.kick(TX);
  await h.settle();
  let stopped = false;
  const stop = h.state.stopQueue(TX, { drain: true }).then((r) => { stopped = true; return r; });
  await h.settle();
  assert.not.ok(stopped, 'GET_VRING_BASE is answered only once the host took the bytes');
  host.release();
  const position = await stop;
  assert.is(position!.nextAvail, 1);
  assert.equal(tx.takeUsed().map((u) => [u.id, u.len]), [[head, 0]], 'the chain is back in the used ring');
  // the front-end resumes the ring where it stopped and output goes on
  assert.ok(h.state.startQueue(TX, { nextAvail: 1, nextUsed: tx.usedIdx() }));
  tx.addChain([{ data: enc(' world') }]);
  h.kick(TX);
  while (tx.usedIdx() !== 2) await h.settle(1);
  assert.is(host.text(), 'hello world');
});

test('unix socket host: bytes flow both ways through a real socket', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'rxvirt-console-'));
  const path = join(dir, 'console.sock');
  let peer!: Socket;
  const received: Buffer[] = [];
  const server = createServer((s) => {
    peer = s;
    s.on('data', (d) => received.push(d));
  });
  await new Promise<void>((r) => server.listen(path, r));
  try {
    const stream = await connectUnixSocket(path);
    const h = new DeviceHarness(new ConsoleDevice(stream));
    while (!peer) await h.settle(1);
    peer.write('from host');
    h.queues[RX]!.addChain([{ writableLen: 64 }]);
    h.kick(RX);
    const [used] = await h.waitUsed(RX, 1);
    assert.is(dec(used!.written), 'from host');
    h.submit(TX, [{ data: enc('from guest') }]);
    await h.waitUsed(TX, 1);
    while (Buffer.concat(received).length < 10) await h.settle(1);
    assert.is(Buffer.concat(received).toString(), 'from guest');
    h.device.close();
  } finally {
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('connecting to a missing socket fails with ENOENT', async () => {
  const err = await connectUnixSocket('/nonexistent/rxvirt.sock').then(() => null, (e) => e);
  assert.is(err?.code, 'ENOENT');
});

test('file host: guest output is appended to the file', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'rxvirt-console-'));
  const path = join(dir, 'out.log');
  try {
    const stream = appendFileStream(path);
    stream.output(enc('earlier\n'));
    const h = new DeviceHarness(new ConsoleDevice(stream));
    h.submit(TX, [{ data: enc('boot ') }, { data: enc('ok\n') }]);
    await h.waitUsed(TX, 1);
    h.device.close();
    const deadline = Date.now() + 5000; // the write stream flushes asynchronously; a loaded machine is slow
    while (Date.now() < deadline && readFileSync(path, 'utf8').length < 16) await h.settle(2);
    assert.is(readFileSync(path, 'utf8'), 'earlier\nboot ok\n');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
