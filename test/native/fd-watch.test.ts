// native/fd-watch.ts: readiness callbacks on the main loop for eventfds, sockets and pipes,
// stop() semantics, what keeps the process alive, and the fds koffi would abort the process on.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { openSync, closeSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { NativeError } from '../../native/errors.ts';
import { watchFd, type FdReadiness } from '../../native/fd-watch.ts';
import * as libc from '../../native/libc.ts';
import { socketPair } from '../../native/unix-socket.ts';
import { repoUrl, runScript } from '../support/run-script.ts';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Waits until cond() holds (a busy machine may be slow to run the loop); fails after `ms`. */
async function until(cond: () => boolean, what: string, ms = 3000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

function newEventFd(): number {
  return libc.eventfd(0, libc.EFD_NONBLOCK | libc.EFD_CLOEXEC);
}

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.instance(err, NativeError);
    return (err as NativeError).code;
  }
  return 'no error';
}

/** Resolves with the first readiness event, rejects after `ms`. */
function nextEvent(fd: number, events: Parameters<typeof watchFd>[1], ms = 2000): Promise<FdReadiness> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      watch.stop();
      reject(new Error(`no event on fd ${fd} within ${ms} ms`));
    }, ms);
    const watch = watchFd(fd, events, (ev) => {
      clearTimeout(timer);
      watch.stop();
      resolve(ev);
    });
  });
}

test('fires when an eventfd written from a timer becomes readable', async () => {
  const fd = newEventFd();
  try {
    setTimeout(() => libc.eventfdWrite(fd, 3n), 5);
    const ev = await nextEvent(fd, { readable: true });
    assert.equal(ev, { readable: true, writable: false, hangup: false, error: false });
    assert.is(libc.eventfdRead(fd), 3n);
  } finally {
    libc.close(fd);
  }
});

test('fires when a worker thread writes the eventfd, and the awaiting code resumes at once', async () => {
  const fd = newEventFd();
  const worker = new Worker(
    `const { workerData } = require('node:worker_threads');
     const write = require('koffi').load('libc.so.6').func('intptr_t write(int, void *, size_t)');
     setTimeout(() => write(workerData, new BigUint64Array([7n]), 8), 20);`,
    { eval: true, workerData: fd },
  );
  try {
    // Nothing else is scheduled on this loop: the promise must resolve from the poll callback
    // itself (microtasks queued there run when it returns), not from some later timer.
    const started = Date.now();
    const ev = await nextEvent(fd, { readable: true }, 5000);
    assert.ok(Date.now() - started < 1000, `resumed after ${Date.now() - started} ms`);
    assert.ok(ev.readable);
    assert.is(libc.eventfdRead(fd), 7n);
  } finally {
    await worker.terminate();
    libc.close(fd);
  }
});

test('level-triggered: fires again until the eventfd is read; never after stop()', async () => {
  const fd = newEventFd();
  try {
    let calls = 0;
    const watch = watchFd(fd, { readable: true }, () => { calls++; });
    libc.eventfdWrite(fd);
    await until(() => calls >= 3, 'an unread eventfd to fire repeatedly');
    watch.stop();
    assert.not.ok(watch.active);
    const atStop = calls;
    libc.eventfdWrite(fd);
    await sleep(30);
    assert.is(calls, atStop);
    watch.stop(); // idempotent
  } finally {
    libc.close(fd);
  }
});

test('stop() inside the callback: exactly one call although the fd stays readable', async () => {
  const fd = newEventFd();
  try {
    let calls = 0;
    const watch = watchFd(fd, { readable: true }, () => {
      calls++;
      watch.stop();
      watch.stop();
    });
    libc.eventfdWrite(fd);
    await until(() => calls > 0, 'the first call');
    await sleep(30);
    assert.is(calls, 1);
    // The fd can be watched again straight away.
    assert.ok((await nextEvent(fd, { readable: true })).readable);
  } finally {
    libc.close(fd);
  }
});

test('writable, hang-up and error readiness', async () => {
  const [a, b] = socketPair();
  try {
    assert.equal(await nextEvent(a, { writable: true }), { readable: false, writable: true, hangup: false, error: false });
    setTimeout(() => libc.close(b), 5);
    const ev = await nextEvent(a, { hangup: true });
    assert.ok(ev.hangup);
    assert.not.ok(ev.error);
  } finally {
    libc.close(a);
  }

  const [r, w] = libc.pipe();
  libc.close(r); // a pipe without reader polls as POLLERR for its writer
  try {
    let calls = 0;
    let last: FdReadiness | null = null;
    const watch = watchFd(w, { writable: true }, (ev) => { calls++; last = ev; });
    await until(() => calls > 0, 'the error report');
    await sleep(30);
    assert.is(calls, 1);
    assert.equal(last, { readable: false, writable: false, hangup: false, error: true });
    assert.not.ok(watch.active, 'an error stops the watch');
  } finally {
    libc.close(w);
  }
});

test('an exception in the callback becomes an uncaughtException; the watch keeps working', async () => {
  const fd = newEventFd();
  const seen: unknown[] = [];
  const onUncaught = (err: unknown) => { seen.push(err); };
  process.on('uncaughtException', onUncaught);
  try {
    let calls = 0;
    const watch = watchFd(fd, { readable: true }, () => {
      calls++;
      libc.eventfdRead(fd);
      if (calls === 1) throw new Error('device handler failed');
      watch.stop();
    });
    libc.eventfdWrite(fd);
    await until(() => seen.length > 0, 'the uncaught exception');
    assert.is(seen.length, 1);
    assert.match((seen[0] as Error).message, 'device handler failed');
    libc.eventfdWrite(fd);
    await until(() => calls === 2, 'the second call');
    await sleep(20);
    assert.is(calls, 2);
    assert.is(seen.length, 1);
  } finally {
    process.off('uncaughtException', onUncaught);
    libc.close(fd);
  }
});

test('fds that cannot be watched throw NativeError instead of aborting the process', () => {
  const fd = newEventFd();
  const file = openSync(new URL(import.meta.url), 'r');
  try {
    assert.is(code(() => watchFd(file, { readable: true }, () => {})), 'EPERM');
    assert.is(code(() => watchFd(987654, { readable: true }, () => {})), 'EBADF');
    assert.is(code(() => watchFd(-1, { readable: true }, () => {})), 'EBADF');
    assert.is(code(() => watchFd(fd, {}, () => {})), 'EINVAL');
    const watch = watchFd(fd, { readable: true }, () => {});
    assert.is(code(() => watchFd(fd, { writable: true }, () => {})), 'EEXIST');
    watch.stop();
    watchFd(fd, { readable: true }, () => {}).stop();
  } finally {
    closeSync(file);
    libc.close(fd);
  }
  const closed = newEventFd();
  libc.close(closed);
  assert.is(code(() => watchFd(closed, { readable: true }, () => {})), 'EBADF');
});

const watchScript = (body: string) => `
  const { watchFd } = await import(${JSON.stringify(repoUrl('native/fd-watch.ts'))});
  const libc = await import(${JSON.stringify(repoUrl('native/libc.ts'))});
  const fd = libc.eventfd(0, libc.EFD_NONBLOCK | libc.EFD_CLOEXEC);
  ${body}
  console.log('set up');
`;

test('process lifetime: an active watch keeps it alive; stopped or unref()ed ones do not', async () => {
  // Each script has 1.5 s after its setup to exit on its own.
  const run = (body: string) => runScript(watchScript(body), { timeoutMs: 1500, armOn: 'set up' });
  const [active, stopped, stoppedInCallback, unrefd] = await Promise.all([
    run(`watchFd(fd, { readable: true }, () => {});`),
    run(`watchFd(fd, { readable: true }, () => {}).stop();`),
    run(`const w = watchFd(fd, { readable: true }, () => { w.stop(); console.log('fired'); });
         libc.eventfdWrite(fd);`),
    run(`watchFd(fd, { readable: true }, () => {}).unref();`),
  ]);
  assert.match(active.output, 'set up');
  assert.ok(active.timedOut, 'an active watch keeps the process running');
  for (const [name, r] of Object.entries({ stopped, stoppedInCallback, unrefd })) {
    assert.not.ok(r.timedOut, `${name}: still running 1.5 s after its setup`);
    assert.is(r.code, 0, `${name}: ${r.output}`);
  }
  assert.match(stoppedInCallback.output, 'fired');
});

test.run();
