// AF_UNIX stream sockets with fd passing (SCM_RIGHTS), which Node's net cannot do and
// vhost-user needs. Every socket made here is non-blocking and close-on-exec; every
// received fd is close-on-exec. Failures throw NativeError.
import koffi from 'koffi';
import { NativeError, errnoNumber, throwErrno } from './errors.ts';

const lib = koffi.load('libc.so.6');
const c = {
  socket: lib.func('int socket(int, int, int)'),
  socketpair: lib.func('int socketpair(int, int, int, void *)'),
  bind: lib.func('int bind(int, void *, uint32_t)'),
  listen: lib.func('int listen(int, int)'),
  accept4: lib.func('int accept4(int, void *, void *, int)'),
  connect: lib.func('int connect(int, void *, uint32_t)'),
  sendmsg: lib.func('intptr_t sendmsg(int, void *, int)'),
  recvmsg: lib.func('intptr_t recvmsg(int, void *, int)'),
  close: lib.func('int close(int)'),
};

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_TRUNC = 0x20;
const MSG_CTRUNC = 0x08;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;
/** Most fds the kernel accepts in one SCM_RIGHTS message (include/net/scm.h). */
export const SCM_MAX_FD = 253;

const EAGAIN = errnoNumber('EAGAIN');
const EINVAL = errnoNumber('EINVAL');
const EBADF = errnoNumber('EBADF');

// ---- struct layouts: LP64 Linux (identical on x86_64 and arm64) ----
// struct sockaddr_un { sa_family_t sun_family (u16); char sun_path[108]; }            110 bytes
// struct msghdr { void *msg_name; socklen_t msg_namelen; /*pad*/ struct iovec *msg_iov;
//                 size_t msg_iovlen; void *msg_control; size_t msg_controllen; int msg_flags; } 56 bytes
// struct iovec { void *iov_base; size_t iov_len; }                                      16 bytes
// struct cmsghdr { size_t cmsg_len; int cmsg_level; int cmsg_type; /* data */ }          16 bytes
// CMSG_ALIGN(n) = (n + 7) & ~7; CMSG_LEN(n) = 16 + n; CMSG_SPACE(n) = 16 + CMSG_ALIGN(n)
const SUN_PATH_OFFSET = 2;
const SUN_PATH_MAX = 108; // including the terminating NUL
const SOCKADDR_UN_SIZE = SUN_PATH_OFFSET + SUN_PATH_MAX;
const MSG_IOV = 16;
const MSG_IOVLEN = 24;
const MSG_CONTROL = 32;
const MSG_CONTROLLEN = 40;
const MSG_FLAGS = 48;
const MSGHDR_SIZE = 56;
const IOVEC_SIZE = 16;
const CMSG_HDR = 16;
const cmsgAlign = (n: number): number => (n + 7) & ~7;
const cmsgSpace = (n: number): number => CMSG_HDR + cmsgAlign(n);

// One scratch block per thread: msghdr, its single iovec, and control room for SCM_MAX_FD fds.
// Its address is stable (off-heap ArrayBuffer kept alive by this module).
const IOV_AT = 64;
const CONTROL_AT = IOV_AT + IOVEC_SIZE;
const CONTROL_MAX = cmsgSpace(4 * SCM_MAX_FD);
const scratch = new ArrayBuffer(CONTROL_AT + CONTROL_MAX);
const scratchView = new DataView(scratch);
const scratchAddr: bigint = koffi.address(scratch);
const controlAddr = scratchAddr + BigInt(CONTROL_AT);
scratchView.setBigUint64(MSG_IOV, scratchAddr + BigInt(IOV_AT), true);
scratchView.setBigUint64(MSG_IOVLEN, 1n, true);

function sockaddrUn(path: string, call: string): Uint8Array {
  const addr = new Uint8Array(SOCKADDR_UN_SIZE);
  const { written, read } = new TextEncoder().encodeInto(path, addr.subarray(SUN_PATH_OFFSET, SOCKADDR_UN_SIZE - 1));
  if (read !== path.length) throw new NativeError(errnoNumber('ENAMETOOLONG'), call, `${call} ${path}`);
  if (written === 0 || path.includes('\0')) throw new NativeError(EINVAL, call, `${call} ${JSON.stringify(path)}`);
  new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
  return addr;
}

function newSocket(call: string): number {
  const fd: number = c.socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throwErrno('socket', call);
  return fd;
}

/** Closes `fd` and throws NativeError for the errno of the call that just failed. */
function failClosing(fd: number, call: string, context: string): never {
  const errno = koffi.errno();
  c.close(fd);
  throw new NativeError(errno, call, context);
}

/**
 * A listening socket bound at `path` (non-blocking, close-on-exec). Never unlinks anything:
 * an existing path is EADDRINUSE. A path over 107 bytes is ENAMETOOLONG.
 */
export function unixListen(path: string, backlog = 16): number {
  const addr = sockaddrUn(path, 'bind');
  const fd = newSocket(`unixListen ${path}`);
  if (c.bind(fd, addr, SOCKADDR_UN_SIZE) < 0) failClosing(fd, 'bind', `unixListen ${path}`);
  if (c.listen(fd, backlog) < 0) failClosing(fd, 'listen', `unixListen ${path}`);
  return fd;
}

/** The next pending connection (non-blocking, close-on-exec), or null if none is waiting. */
export function unixAccept(listenFd: number): number | null {
  const fd: number = c.accept4(listenFd, null, null, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) {
    const errno = koffi.errno();
    if (errno === EAGAIN) return null;
    throw new NativeError(errno, 'accept4', `unixAccept ${listenFd}`);
  }
  return fd;
}

/**
 * A connected socket (non-blocking, close-on-exec). AF_UNIX connects complete at once:
 * ECONNREFUSED (nobody listening), ENOENT (no such path), EAGAIN (listener's backlog full).
 */
export function unixConnect(path: string): number {
  const addr = sockaddrUn(path, 'connect');
  const fd = newSocket(`unixConnect ${path}`);
  if (c.connect(fd, addr, SOCKADDR_UN_SIZE) < 0) failClosing(fd, 'connect', `unixConnect ${path}`);
  return fd;
}

/** Two connected AF_UNIX stream sockets, non-blocking and close-on-exec. */
export function socketPair(): [number, number] {
  const fds = new Int32Array(2);
  if (c.socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) < 0) throwErrno('socketpair');
  return [fds[0]!, fds[1]!];
}

/**
 * sendmsg(2) of `data` with `fds` attached (SCM_RIGHTS), MSG_NOSIGNAL (a closed peer is EPIPE,
 * not SIGPIPE). Returns the bytes sent: may be short when the socket buffer is nearly full, and
 * the fds travel with the first byte. fds need at least one data byte (a stream socket silently
 * drops a zero-length message's fds): EINVAL. At most SCM_MAX_FD fds. EAGAIN throws.
 */
export function sendWithFds(fd: number, data: Uint8Array, fds: readonly number[] = []): number {
  const n = fds.length;
  if (n > 0) {
    if (data.byteLength === 0) throw new NativeError(EINVAL, 'sendmsg', `sendWithFds ${fd}: fds need at least one data byte`);
    if (n > SCM_MAX_FD) throw new NativeError(EINVAL, 'sendmsg', `sendWithFds ${fd}: ${n} fds (at most ${SCM_MAX_FD})`);
    scratchView.setBigUint64(CONTROL_AT, BigInt(CMSG_HDR + 4 * n), true);
    scratchView.setInt32(CONTROL_AT + 8, SOL_SOCKET, true);
    scratchView.setInt32(CONTROL_AT + 12, SCM_RIGHTS, true);
    for (let i = 0; i < n; i++) {
      const f = fds[i]!;
      if (!Number.isInteger(f) || f < 0 || f > 0x7fffffff) throw new NativeError(EBADF, 'sendmsg', `sendWithFds ${fd}: fd ${f}`);
      scratchView.setInt32(CONTROL_AT + CMSG_HDR + 4 * i, f, true);
    }
    scratchView.setBigUint64(MSG_CONTROL, controlAddr, true);
    scratchView.setBigUint64(MSG_CONTROLLEN, BigInt(cmsgSpace(4 * n)), true);
  } else {
    scratchView.setBigUint64(MSG_CONTROL, 0n, true);
    scratchView.setBigUint64(MSG_CONTROLLEN, 0n, true);
  }
  setIov(data);
  scratchView.setInt32(MSG_FLAGS, 0, true);
  const sent: number = c.sendmsg(fd, scratch, MSG_NOSIGNAL);
  if (sent < 0) throwErrno('sendmsg', `sendWithFds ${fd}`);
  return sent;
}

export interface Received {
  /** Bytes read into buf; 0 means the peer closed the connection. */
  bytes: number;
  /** Fds received (close-on-exec), in order. The caller owns them and must close them. */
  fds: number[];
  /** The kernel cut data or fds (MSG_TRUNC / MSG_CTRUNC): treat as a protocol error. */
  truncated: boolean;
}

/**
 * recvmsg(2) into `buf`, accepting up to `maxFds` fds (default and limit SCM_MAX_FD). Never
 * blocks (MSG_DONTWAIT): null when nothing is waiting. Fds beyond maxFds are closed by the
 * kernel and flagged as truncated; those that did fit are still returned so they can be closed.
 */
export function recvWithFds(fd: number, buf: Uint8Array, maxFds = SCM_MAX_FD): Received | null {
  if (!Number.isInteger(maxFds) || maxFds < 0 || maxFds > SCM_MAX_FD) {
    throw new NativeError(EINVAL, 'recvmsg', `recvWithFds ${fd}: maxFds ${maxFds}`);
  }
  const room = maxFds > 0 ? cmsgSpace(4 * maxFds) : 0;
  scratchView.setBigUint64(MSG_CONTROL, room > 0 ? controlAddr : 0n, true);
  scratchView.setBigUint64(MSG_CONTROLLEN, BigInt(room), true);
  setIov(buf);
  scratchView.setInt32(MSG_FLAGS, 0, true);
  const bytes: number = c.recvmsg(fd, scratch, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  if (bytes < 0) {
    const errno = koffi.errno();
    if (errno === EAGAIN) return null;
    throw new NativeError(errno, 'recvmsg', `recvWithFds ${fd}`);
  }
  const flags = scratchView.getInt32(MSG_FLAGS, true);
  const fds = room > 0 ? parseRights(Math.min(Number(scratchView.getBigUint64(MSG_CONTROLLEN, true)), room)) : [];
  return { bytes, fds, truncated: (flags & (MSG_TRUNC | MSG_CTRUNC)) !== 0 };
}

function setIov(data: Uint8Array): void {
  // An empty view may have no backing store to point at; the kernel never touches it then.
  scratchView.setBigUint64(IOV_AT, data.byteLength > 0 ? koffi.address(data) : 0n, true);
  scratchView.setBigUint64(IOV_AT + 8, BigInt(data.byteLength), true);
}

/** Every fd in the SCM_RIGHTS messages among the first `length` control bytes. */
function parseRights(length: number): number[] {
  const fds: number[] = [];
  let at = 0;
  while (at + CMSG_HDR <= length) {
    const cmsgLen = Number(scratchView.getBigUint64(CONTROL_AT + at, true));
    if (cmsgLen < CMSG_HDR || at + cmsgLen > length) break;
    const level = scratchView.getInt32(CONTROL_AT + at + 8, true);
    const type = scratchView.getInt32(CONTROL_AT + at + 12, true);
    if (level === SOL_SOCKET && type === SCM_RIGHTS) {
      const count = (cmsgLen - CMSG_HDR) >> 2;
      for (let i = 0; i < count; i++) fds.push(scratchView.getInt32(CONTROL_AT + at + CMSG_HDR + 4 * i, true));
    }
    at += cmsgAlign(cmsgLen);
  }
  return fds;
}
