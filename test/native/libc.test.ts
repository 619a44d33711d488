// native/errors.ts and native/libc.ts against the real kernel: typed failures, fds, ioctl
// forms, eventfd semantics, shared mappings of a memfd, JS-memory addresses, threads.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { constants as osConstants } from 'node:os';
import { Worker } from 'node:worker_threads';
import { NativeError, errnoName, errnoNumber, isNativeError } from '../../native/errors.ts';
import * as libc from '../../native/libc.ts';

// Generic ioctls on any fd (asm-generic/ioctls.h, same on x86_64 and arm64).
const FIONREAD = 0x541b;
const FIONCLEX = 0x5450;
const FIOCLEX = 0x5451;
const PAGE = 4096;

function nativeError(fn: () => unknown): NativeError {
  try {
    fn();
  } catch (err) {
    assert.instance(err, NativeError);
    return err as NativeError;
  }
  throw new Error('expected a NativeError, nothing was thrown');
}

test('errno names and numbers agree with Node\'s own table', () => {
  const table = osConstants.errno as Record<string, number>;
  assert.ok(Object.keys(table).length > 50);
  for (const [name, errno] of Object.entries(table)) {
    assert.is(errnoNumber(name), errno, name);
    assert.is(table[errnoName(errno)], errno, `errnoName(${errno}) = ${errnoName(errno)}`);
  }
  assert.is(errnoName(table.EWOULDBLOCK!), 'EAGAIN');
  assert.is(errnoName(100000), 'E100000');
  assert.throws(() => errnoNumber('ENOTANERRNO'), RangeError);
});

test('close(-1) and closing a closed fd are EBADF; the message is "context: code"', () => {
  let e = nativeError(() => libc.close(-1));
  assert.is(e.code, 'EBADF');
  assert.is(e.errno, osConstants.errno.EBADF);
  assert.is(e.call, 'close');
  assert.is(e.message, 'close: EBADF');
  assert.ok(isNativeError(e, 'EBADF'));
  assert.not.ok(isNativeError(e, 'EINVAL'));

  const fd = libc.eventfd(0, libc.EFD_CLOEXEC);
  libc.close(fd, 'first close');
  e = nativeError(() => libc.close(fd, 'closing a closed eventfd'));
  assert.is(e.code, 'EBADF');
  assert.is(e.context, 'closing a closed eventfd');
  assert.is(e.message, 'closing a closed eventfd: EBADF');
});

test('an ioctl /dev/null does not know is ENOTTY, in both argument forms', () => {
  const fd = libc.open('/dev/null', libc.O_RDWR | libc.O_CLOEXEC);
  try {
    let e = nativeError(() => libc.ioctl(fd, 0xc0084000, 0, 'GH_VM_SET_USER_MEM_REGION label 0'));
    assert.is(e.code, 'ENOTTY');
    assert.is(e.call, 'ioctl');
    assert.is(e.message, 'GH_VM_SET_USER_MEM_REGION label 0: ENOTTY');
    e = nativeError(() => libc.ioctlPtr(fd, 0xc0084000, new Uint8Array(8)));
    assert.is(e.code, 'ENOTTY');
  } finally {
    libc.close(fd);
  }
});

test('mmap of a bad fd is EBADF; open of a missing path is ENOENT naming the path', () => {
  const e = nativeError(() => libc.mmap(PAGE, libc.PROT_READ, libc.MAP_SHARED, 987654, 0, 'map guest RAM'));
  assert.is(e.code, 'EBADF');
  assert.is(e.call, 'mmap');
  assert.is(e.message, 'map guest RAM: EBADF');

  const missing = `/nonexistent-${process.pid}/file`;
  const o = nativeError(() => libc.open(missing, libc.O_RDONLY));
  assert.is(o.code, 'ENOENT');
  assert.is(o.message, `open ${missing}: ENOENT`);
  assert.is(nativeError(() => libc.open(missing, libc.O_RDONLY, 0, 'disk image')).message, 'disk image: ENOENT');
});

test('read/write over a pipe honour a view\'s byteOffset; readNonBlocking is null when empty', () => {
  const [r, w] = libc.pipe(libc.O_CLOEXEC | libc.O_NONBLOCK);
  try {
    assert.is(libc.readNonBlocking(r, new Uint8Array(4)), null);
    const big = Uint8Array.from({ length: 32 }, (_, i) => i);
    assert.is(libc.write(w, big.subarray(10, 15)), 5);
    const into = new Uint8Array(16).fill(0xee);
    assert.is(libc.read(r, into.subarray(3, 11)), 5);
    assert.equal(Array.from(into.subarray(0, 10)), [0xee, 0xee, 0xee, 10, 11, 12, 13, 14, 0xee, 0xee]);
    assert.is(nativeError(() => libc.read(r, into)).code, 'EAGAIN');
    libc.close(w);
    assert.is(libc.read(r, into), 0); // writer gone: end of file
  } finally {
    libc.close(r);
  }
});

test('ioctlPtr writes into JS memory or through a raw address; ioctl passes integers', () => {
  const [r, w] = libc.pipe();
  try {
    libc.write(w, new Uint8Array(7));
    const count = new Int32Array(4);
    libc.ioctlPtr(r, FIONREAD, count.subarray(2, 3));
    assert.equal(Array.from(count), [0, 0, 7, 0]);
    const buf = new ArrayBuffer(16);
    libc.ioctlPtr(r, FIONREAD, libc.addressOf(buf) + 8n);
    assert.is(new Int32Array(buf)[2], 7);
    assert.is(nativeError(() => libc.ioctlPtr(r, FIONREAD, null)).code, 'EFAULT');

    assert.is(libc.fcntl(r, libc.F_GETFD) & libc.FD_CLOEXEC, libc.FD_CLOEXEC);
    libc.ioctl(r, FIONCLEX, 0);
    assert.is(libc.fcntl(r, libc.F_GETFD) & libc.FD_CLOEXEC, 0);
    libc.ioctl(r, FIOCLEX, 0n);
    assert.is(libc.fcntl(r, libc.F_GETFD) & libc.FD_CLOEXEC, libc.FD_CLOEXEC);
  } finally {
    libc.close(r);
    libc.close(w);
  }
});

test('setNonBlocking and dup act on the same open file description', () => {
  const [r, w] = libc.pipe(libc.O_CLOEXEC);
  const r2 = libc.dup(r);
  try {
    assert.is.not(r2, r);
    assert.is(libc.fcntl(r2, libc.F_GETFL) & libc.O_NONBLOCK, 0);
    libc.setNonBlocking(r, true);
    assert.is(libc.fcntl(r2, libc.F_GETFL) & libc.O_NONBLOCK, libc.O_NONBLOCK);
    assert.is(libc.readNonBlocking(r2, new Uint8Array(1)), null);
    libc.write(w, Uint8Array.of(42));
    const got = new Uint8Array(1);
    assert.is(libc.read(r2, got), 1);
    assert.is(got[0], 42);
    libc.setNonBlocking(r, false);
    assert.is(libc.fcntl(r2, libc.F_GETFL) & libc.O_NONBLOCK, 0);
  } finally {
    for (const fd of [r, r2, w]) libc.close(fd);
  }
});

test('eventfd: writes add up, a read takes all, an empty non-blocking read is null', () => {
  const fd = libc.eventfd(0, libc.EFD_NONBLOCK | libc.EFD_CLOEXEC);
  try {
    assert.is(libc.eventfdRead(fd), null);
    assert.is(libc.eventfdDrain(fd), false);
    libc.eventfdWrite(fd);
    libc.eventfdWrite(fd, 2n);
    libc.eventfdWrite(fd, 5n);
    assert.is(libc.eventfdRead(fd), 8n);
    assert.is(libc.eventfdRead(fd), null);
    libc.eventfdWrite(fd, 3n);
    assert.is(libc.eventfdDrain(fd), true);
    assert.is(libc.eventfdRead(fd), null);
  } finally {
    libc.close(fd);
  }
});

test('eventfd: a write that would overflow counts as already signalled; 2^64-1 is EINVAL', () => {
  const fd = libc.eventfd(0, libc.EFD_NONBLOCK | libc.EFD_CLOEXEC);
  try {
    const max = 0xffff_ffff_ffff_fffen; // the largest counter value
    libc.eventfdWrite(fd, max);
    libc.eventfdWrite(fd); // would overflow: EAGAIN, not an error
    assert.is(libc.eventfdRead(fd), max);
    assert.is(nativeError(() => libc.eventfdWrite(fd, 0xffff_ffff_ffff_ffffn, 'irqfd')).code, 'EINVAL');
  } finally {
    libc.close(fd);
  }
});

test('eventfd: EFD_SEMAPHORE reads take one at a time', () => {
  const fd = libc.eventfd(2, libc.EFD_SEMAPHORE | libc.EFD_NONBLOCK | libc.EFD_CLOEXEC);
  try {
    assert.is(libc.eventfdRead(fd), 1n);
    assert.is(libc.eventfdRead(fd), 1n);
    assert.is(libc.eventfdRead(fd), null);
  } finally {
    libc.close(fd);
  }
});

test('anonymous mmap: view() reads and writes it; munmap', () => {
  const len = 4 * PAGE;
  const addr = libc.mmap(len, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS, -1, 0);
  assert.is(addr % BigInt(PAGE), 0n);
  const whole = new Uint8Array(libc.view(addr, len));
  assert.is(whole.length, len);
  assert.ok(whole.every((b) => b === 0));
  whole[PAGE + 5] = 0x5a;
  const tail = new Uint8Array(libc.view(addr + BigInt(PAGE), PAGE));
  assert.is(tail[5], 0x5a);
  libc.madvise(addr, len, libc.MADV_DONTNEED); // private anonymous: pages come back zeroed
  assert.is(whole[PAGE + 5], 0);
  libc.munmap(addr, len);
  assert.is(nativeError(() => libc.munmap(addr + 1n, PAGE)).code, 'EINVAL');
});

test('memfd: a write through one mapping is read through a second mapping and through the fd', () => {
  const len = 2 * PAGE;
  const fd = libc.memfdCreate('rxvirt-test', libc.MFD_CLOEXEC | libc.MFD_ALLOW_SEALING);
  try {
    libc.ftruncate(fd, len);
    const rw = libc.PROT_READ | libc.PROT_WRITE;
    const a = libc.mmap(len, rw, libc.MAP_SHARED, fd, 0);
    const b = libc.mmap(PAGE, libc.PROT_READ, libc.MAP_SHARED, fd, PAGE); // second page only
    assert.is.not(a, b);
    const va = new Uint8Array(libc.view(a, len));
    const vb = new Uint8Array(libc.view(b, PAGE));
    const message = new TextEncoder().encode('through the other mapping');
    va.set(message, PAGE + 100);
    assert.equal(vb.subarray(100, 100 + message.length), message);
    const viaFd = new Uint8Array(PAGE + 100 + message.length);
    assert.is(libc.read(fd, viaFd), viaFd.length);
    assert.equal(viaFd.subarray(PAGE + 100), message);

    libc.fallocate(fd, libc.FALLOC_FL_PUNCH_HOLE | libc.FALLOC_FL_KEEP_SIZE, PAGE, PAGE);
    assert.ok(vb.every((x) => x === 0), 'punched page reads as zeroes in every mapping');

    libc.fcntl(fd, libc.F_ADD_SEALS, libc.F_SEAL_SHRINK);
    assert.is(nativeError(() => libc.ftruncate(fd, PAGE)).code, 'EPERM');
    libc.munmap(a, len);
    libc.munmap(b, PAGE);
  } finally {
    libc.close(fd);
  }
});

test('addressOf gives the host address of ArrayBuffers, views and SharedArrayBuffers', () => {
  for (const buffer of [new ArrayBuffer(256), new SharedArrayBuffer(256)]) {
    const bytes = new Uint8Array(buffer);
    const alias = new Uint8Array(libc.view(libc.addressOf(buffer), 256));
    alias[17] = 0x77;
    assert.is(bytes[17], 0x77);
    const sub = bytes.subarray(40, 48);
    assert.is(libc.addressOf(sub), libc.addressOf(buffer) + 40n);
    new Uint8Array(libc.view(libc.addressOf(sub), 8))[0] = 0x99;
    assert.is(bytes[40], 0x99);
  }
  const small = new Uint32Array(2); // small typed arrays start on the JS heap
  new Uint32Array(libc.view(libc.addressOf(small), 8))[1] = 0xabcdef;
  assert.is(small[1], 0xabcdef);
});

test('gettid: the main thread is the process; a worker is another thread, signal 0 reaches it', async () => {
  assert.is(libc.gettid(), process.pid);
  const worker = new Worker(
    `const { parentPort } = require('node:worker_threads');
     const gettid = require('koffi').load('libc.so.6').func('int gettid(void)');
     parentPort.postMessage(gettid());
     parentPort.once('message', () => process.exit(0));`,
    { eval: true },
  );
  try {
    const tid = await new Promise<number>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    assert.is.not(tid, process.pid);
    assert.ok(tid > 0);
    libc.tgkill(process.pid, tid, 0); // existence check, delivers nothing
    worker.postMessage('exit');
    await new Promise((resolve) => worker.once('exit', resolve));
    assert.is(nativeError(() => libc.tgkill(process.pid, tid, 0, 'kick vCPU 0')).code, 'ESRCH');
  } finally {
    await worker.terminate();
  }
});

test.run();
