// native/unix-socket.ts: fd passing both ways over a socketpair (the received fds are new
// numbers for the same kernel objects), truncation, end of stream, and listen/connect/accept.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, rmSync, existsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NativeError } from '../../native/errors.ts';
import * as libc from '../../native/libc.ts';
import {
  SCM_MAX_FD, recvWithFds, sendWithFds, socketPair, unixAccept, unixConnect, unixListen,
} from '../../native/unix-socket.ts';

const PAGE = 4096;

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.instance(err, NativeError);
    return (err as NativeError).code;
  }
  return 'no error';
}

function closeAll(fds: Iterable<number>): void {
  for (const fd of fds) libc.close(fd);
}

function isCloexec(fd: number): boolean {
  return (libc.fcntl(fd, libc.F_GETFD) & libc.FD_CLOEXEC) !== 0;
}

/** Maps a page of each memfd; a write through the first must show through the second. */
function sameMemory(fdA: number, fdB: number): boolean {
  const rw = libc.PROT_READ | libc.PROT_WRITE;
  const a = libc.mmap(PAGE, rw, libc.MAP_SHARED, fdA, 0);
  const b = libc.mmap(PAGE, rw, libc.MAP_SHARED, fdB, 0);
  try {
    const token = (Math.random() * 0xffffffff) >>> 0;
    new DataView(libc.view(a, PAGE)).setUint32(64, token, true);
    return new DataView(libc.view(b, PAGE)).getUint32(64, true) === token;
  } finally {
    libc.munmap(a, PAGE);
    libc.munmap(b, PAGE);
  }
}

/** A signal written to the first eventfd must be read from the second. */
function sameEventFd(fdA: number, fdB: number): boolean {
  libc.eventfdWrite(fdA, 41n);
  return libc.eventfdRead(fdB) === 41n;
}

function passBoth(from: number, to: number): void {
  const memfd = libc.memfdCreate('rxvirt-pass', libc.MFD_CLOEXEC);
  libc.ftruncate(memfd, PAGE);
  const efd = libc.eventfd(0, libc.EFD_NONBLOCK | libc.EFD_CLOEXEC);
  try {
    const payload = new TextEncoder().encode('SET_MEM_TABLE');
    assert.is(sendWithFds(from, payload, [memfd, efd]), payload.length);
    const buf = new Uint8Array(64);
    const got = recvWithFds(to, buf, 8);
    assert.ok(got);
    assert.is(got.bytes, payload.length);
    assert.equal(buf.subarray(0, got.bytes), payload);
    assert.is(got.truncated, false);
    assert.is(got.fds.length, 2);
    const [memfd2, efd2] = got.fds as [number, number];
    try {
      assert.ok(![memfd, efd].includes(memfd2) && ![memfd, efd].includes(efd2), 'new fd numbers');
      assert.ok(isCloexec(memfd2) && isCloexec(efd2));
      assert.ok(sameMemory(memfd2, memfd), 'received memfd maps the same memory');
      assert.ok(sameEventFd(efd2, efd), 'received eventfd is the same counter');
      assert.ok(sameEventFd(efd, efd2));
    } finally {
      closeAll(got.fds);
    }
  } finally {
    closeAll([memfd, efd]);
  }
}

test('a memfd and an eventfd pass from A to B and from B to A', () => {
  const [a, b] = socketPair();
  try {
    passBoth(a, b);
    passBoth(b, a);
  } finally {
    closeAll([a, b]);
  }
});

test('several fds in one message arrive in order; a message without fds has none', () => {
  const [a, b] = socketPair();
  const sent = Array.from({ length: 6 }, () => libc.eventfd(0, libc.EFD_NONBLOCK | libc.EFD_CLOEXEC));
  try {
    sendWithFds(a, Uint8Array.of(1), sent);
    sendWithFds(a, Uint8Array.of(2, 3));
    const buf = new Uint8Array(16);
    const first = recvWithFds(b, buf);
    assert.ok(first);
    try {
      assert.is(first.bytes, 1, 'a message carrying fds is not merged with the next one');
      assert.is(first.fds.length, sent.length);
      first.fds.forEach((fd, i) => {
        libc.eventfdWrite(fd, BigInt(i + 1));
        assert.is(libc.eventfdRead(sent[i]!), BigInt(i + 1), `fd #${i}`);
      });
    } finally {
      closeAll(first.fds);
    }
    assert.equal(recvWithFds(b, buf), { bytes: 2, fds: [], truncated: false });
    assert.equal(Array.from(buf.subarray(0, 2)), [2, 3]);
    assert.is(recvWithFds(b, buf), null, 'nothing waiting: null');
  } finally {
    closeAll([a, b, ...sent]);
  }
});

test('too many fds for maxFds: truncated, and the ones that fit are returned', () => {
  const [a, b] = socketPair();
  const sent = Array.from({ length: 4 }, () => libc.eventfd(0, libc.EFD_NONBLOCK | libc.EFD_CLOEXEC));
  try {
    sendWithFds(a, Uint8Array.of(9), sent);
    const got = recvWithFds(b, new Uint8Array(8), 2);
    assert.ok(got);
    assert.is(got.bytes, 1);
    assert.is(got.truncated, true);
    assert.is(got.fds.length, 2);
    assert.ok(sameEventFd(got.fds[0]!, sent[0]!));
    closeAll(got.fds);

    sendWithFds(a, Uint8Array.of(9), sent.slice(0, 1));
    assert.equal(recvWithFds(b, new Uint8Array(8), 0), { bytes: 1, fds: [], truncated: true });
    assert.is(code(() => recvWithFds(b, new Uint8Array(8), SCM_MAX_FD + 1)), 'EINVAL');
  } finally {
    closeAll([a, b, ...sent]);
  }
});

test('fds need a data byte; bad fds are refused before anything is sent', () => {
  const [a, b] = socketPair();
  const efd = libc.eventfd(0, libc.EFD_CLOEXEC);
  try {
    assert.is(code(() => sendWithFds(a, new Uint8Array(0), [efd])), 'EINVAL');
    assert.is(code(() => sendWithFds(a, Uint8Array.of(1), [Number.NaN])), 'EBADF');
    assert.is(code(() => sendWithFds(a, Uint8Array.of(1), [987654])), 'EBADF'); // the kernel's check
    assert.is(code(() => sendWithFds(a, Uint8Array.of(1), new Array(SCM_MAX_FD + 1).fill(efd))), 'EINVAL');
    assert.is(recvWithFds(b, new Uint8Array(8)), null, 'no partial message went out');
  } finally {
    closeAll([a, b, efd]);
  }
});

test('peer close: buffered bytes first, then bytes 0; sending to it is EPIPE, not SIGPIPE', () => {
  const [a, b] = socketPair();
  try {
    sendWithFds(a, Uint8Array.of(1, 2, 3));
    libc.close(a);
    const buf = new Uint8Array(8);
    assert.is(recvWithFds(b, buf)?.bytes, 3);
    assert.equal(recvWithFds(b, buf), { bytes: 0, fds: [], truncated: false });
    assert.is(code(() => sendWithFds(b, Uint8Array.of(1))), 'EPIPE');
  } finally {
    libc.close(b);
  }
});

test('a full socket buffer gives a short send, then EAGAIN', () => {
  const [a, b] = socketPair();
  try {
    const big = new Uint8Array(8 << 20);
    const sent = sendWithFds(a, big);
    assert.ok(sent > 0 && sent < big.length, `sent ${sent}`);
    assert.is(code(() => sendWithFds(a, big)), 'EAGAIN');
  } finally {
    closeAll([a, b]);
  }
});

test('unixListen / unixConnect / unixAccept on a temporary path', () => {
  const dir = mkdtempSync(join(tmpdir(), 'rxvirt-sock-'));
  const path = join(dir, 'vhost.sock');
  const fds: number[] = [];
  try {
    assert.is(code(() => unixConnect(path)), 'ENOENT');
    const listener = unixListen(path);
    fds.push(listener);
    assert.ok(existsSync(path));
    assert.ok(isCloexec(listener));
    assert.is(unixAccept(listener), null, 'nobody connecting yet');

    const client = unixConnect(path);
    fds.push(client);
    const server = unixAccept(listener);
    assert.ok(server !== null);
    fds.push(server);
    for (const fd of [client, server]) {
      assert.ok(isCloexec(fd));
      assert.is(libc.fcntl(fd, libc.F_GETFL) & libc.O_NONBLOCK, libc.O_NONBLOCK);
    }
    const efd = libc.eventfd(0, libc.EFD_NONBLOCK | libc.EFD_CLOEXEC);
    fds.push(efd);
    sendWithFds(client, Uint8Array.of(7), [efd]);
    const got = recvWithFds(server, new Uint8Array(4));
    assert.ok(got);
    fds.push(...got.fds);
    assert.ok(sameEventFd(got.fds[0]!, efd));

    assert.is(code(() => unixListen(path)), 'EADDRINUSE');
    libc.close(listener);
    fds.splice(fds.indexOf(listener), 1);
    assert.is(code(() => unixConnect(path)), 'ECONNREFUSED', 'a stale socket file refuses');
    const regular = join(dir, 'file');
    writeFileSync(regular, 'not a socket');
    assert.is(code(() => unixListen(regular)), 'EADDRINUSE', 'an existing file is never replaced');
    assert.is(code(() => unixListen(join(dir, 'x'.repeat(120)))), 'ENAMETOOLONG');
    assert.is(code(() => unixConnect('')), 'EINVAL');
  } finally {
    closeAll(fds);
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
