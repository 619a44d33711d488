// native/signals.ts: a kick interrupts another thread's blocking syscall with EINTR, and the
// handler that makes this safe neither kills nor keeps alive the process.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { Worker } from 'node:worker_threads';
import { errnoNumber } from '../../native/errors.ts';
import { installKickHandler, kickThread } from '../../native/signals.ts';
import { repoUrl, runScript } from '../support/run-script.ts';

test('a kick makes a worker\'s blocking poll() fail with EINTR', async () => {
  installKickHandler();
  // The worker blocks in poll(NULL, 0, 10 s), as a vCPU thread blocks in KVM_RUN.
  const worker = new Worker(
    `const { parentPort } = require('node:worker_threads');
     const koffi = require('koffi');
     const libc = koffi.load('libc.so.6');
     const gettid = libc.func('int gettid(void)');
     const poll = libc.func('int poll(void *, unsigned long, int)');
     parentPort.postMessage({ tid: gettid() });
     const started = Date.now();
     const r = poll(null, 0, 10000);
     parentPort.postMessage({ r, errno: koffi.errno(), ms: Date.now() - started });`,
    { eval: true },
  );
  try {
    const result = await new Promise<{ r: number; errno: number; ms: number }>((resolve, reject) => {
      let kicker: NodeJS.Timeout | undefined;
      worker.on('error', reject);
      worker.on('message', (m: { tid?: number; r?: number; errno: number; ms: number }) => {
        if (m.tid !== undefined) {
          const tid = m.tid;
          // The worker may not be inside poll() yet: kick until it reports back.
          kicker = setInterval(() => kickThread(tid), 20);
          kickThread(tid);
        } else {
          clearInterval(kicker);
          resolve(m as { r: number; errno: number; ms: number });
        }
      });
    });
    assert.is(result.r, -1);
    assert.is(result.errno, errnoNumber('EINTR'));
    assert.ok(result.ms < 5000, `poll returned after ${result.ms} ms`);
  } finally {
    await worker.terminate();
  }
});

test('without the handler a kick kills the process; with it the process lives and still exits', async () => {
  const script = (install: boolean) => `
    const { installKickHandler, kickThread } = await import(${JSON.stringify(repoUrl('native/signals.ts'))});
    const { gettid } = await import(${JSON.stringify(repoUrl('native/libc.ts'))});
    if (${install}) installKickHandler();
    console.log('kicking');
    kickThread(gettid());
    setTimeout(() => console.log('survived'), 50);
  `;
  const [bare, handled] = await Promise.all([runScript(script(false), { armOn: 'kicking' }), runScript(script(true), { armOn: 'kicking' })]);
  assert.is(bare.signal, 'SIGUSR2', bare.output);
  assert.not.ok(handled.timedOut, 'the handler must not keep the process alive');
  assert.is(handled.code, 0, handled.output);
  assert.match(handled.output, 'survived');
});

test.run();
