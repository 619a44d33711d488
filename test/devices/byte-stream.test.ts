import { spawn } from 'node:child_process';
import { PassThrough, Writable } from 'node:stream';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { readableInput, writableOutput } from '../../framework/io/byte-stream.ts';

const enc = (s: string) => new TextEncoder().encode(s);

test('readableInput: chunks in order, completion at end, unsubscribe pauses the stream', async () => {
  const stream = new PassThrough();
  const got: string[] = [];
  let completed = false;
  const sub = readableInput(stream).subscribe({ next: (b) => got.push(Buffer.from(b).toString()), complete: () => (completed = true) });
  stream.write('ab');
  stream.write('cd');
  await new Promise((r) => setImmediate(r));
  assert.equal(got, ['ab', 'cd']);
  sub.unsubscribe();
  assert.ok(stream.isPaused(), 'no reader, no flow');
  const again = readableInput(stream).subscribe({ next: (b) => got.push(Buffer.from(b).toString()), complete: () => (completed = true) });
  stream.end('ef');
  await new Promise((r) => setImmediate(r));
  assert.equal(got, ['ab', 'cd', 'ef']);
  assert.ok(completed);
  again.unsubscribe();
});

test('writableOutput: a promise while the stream is saturated, settled by drain', async () => {
  const chunks: string[] = [];
  let finish: (() => void) | null = null;
  const slow = new Writable({
    highWaterMark: 4,
    write(chunk, _enc, cb) {
      chunks.push(String(chunk));
      finish = cb;
    },
  });
  const output = writableOutput(slow);
  const first = output(enc('12345678'));
  assert.ok(first instanceof Promise, 'above the high-water mark');
  let settled = false;
  void first!.then(() => (settled = true));
  await new Promise((r) => setImmediate(r));
  assert.not.ok(settled);
  finish!();
  await new Promise((r) => setImmediate(r));
  assert.ok(settled, 'drain settles it');
  assert.equal(chunks, ['12345678']);
});

test('writableOutput: one wait per saturation period; its listeners are gone once it settles', async () => {
  const callbacks: (() => void)[] = [];
  const slow = new Writable({ highWaterMark: 4, write(_chunk, _enc, cb) { callbacks.push(cb); } });
  const output = writableOutput(slow);
  const listeners = () => ['drain', 'close', 'error', 'finish'].map((e) => slow.listenerCount(e));
  const idle = listeners();
  const waits = Array.from({ length: 50 }, () => output(enc('12345678')));
  assert.ok(waits[0] instanceof Promise);
  assert.ok(waits.every((w) => w === waits[0]), 'callers that ignore the wait share it');
  const during = listeners();
  for (let i = 0; i < during.length; i++) assert.ok(during[i]! - idle[i]! <= 1, `at most one listener per event: ${during} vs ${idle}`);
  while (callbacks.length > 0) callbacks.shift()!(); // the host reads everything
  await waits[0];
  assert.equal(listeners(), idle, 'nothing left behind');
  const next = output(enc('12345678'));
  assert.ok(next instanceof Promise && next !== waits[0], 'a new saturation, a new wait');
});

test('writableOutput: a dead stream settles pending waits and drops later bytes without throwing', async () => {
  const stuck = new Writable({ highWaterMark: 1, write() {} });
  const output = writableOutput(stuck);
  const wait = output(enc('xx'));
  assert.ok(wait instanceof Promise);
  stuck.destroy(new Error('EPIPE'));
  await wait; // would hang if only 'drain' were awaited
  assert.is(output(enc('later')), undefined);
});

test('stdioStream: a child process echoes its stdin through the factory', async () => {
  const script = `
    import { stdioStream } from './framework/io/byte-stream.ts';
    const s = stdioStream();
    s.input$.subscribe({ next: (b) => s.output(b), complete: () => s.close() });
  `;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: new URL('../..', import.meta.url), stdio: ['pipe', 'pipe', 'inherit'],
  });
  const out: Buffer[] = [];
  child.stdout.on('data', (d) => out.push(d));
  child.stdin.end('hello console\n');
  const code = await new Promise((r) => child.on('close', r));
  assert.is(code, 0);
  assert.is(Buffer.concat(out).toString(), 'hello console\n');
});

test.run();
