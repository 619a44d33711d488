// Readiness of any pollable fd (eventfd, socket, pipe, epoll fd) on the MAIN libuv loop, with no
// thread per fd. The one place that touches koffi.node.poll, which koffi 3.x leaves undocumented
// and mistyped. What it really does (koffi src/uv.cc, libuv 1.4x, measured on Node 20):
// - the callback receives (status, { readable, writable, disconnect }); status < 0 is a libuv
//   error (POLLERR is reported as UV_EBADF with no events) after which libuv has stopped the handle;
// - uv_poll_init puts the fd's open file description in O_NONBLOCK mode;
// - an fd libuv cannot poll (closed, regular file, directory) aborts the whole process inside
//   koffi's constructor, so we run libuv's own check (epoll_ctl ADD/DEL) first and throw instead;
// - an exception escaping the callback is swallowed and wedges the handle, so we catch it and
//   rethrow it from a microtask (it becomes an ordinary uncaughtException);
// - microtasks and nextTicks queued in the callback run right after it returns;
// - the JS handle object is collectable while active (GC would silently end the watch), so every
//   active watch is pinned in `active` until stop();
// - libuv supports one poll handle per fd per loop: a second watchFd on a watched fd is EEXIST.
// Stop a watch before closing its fd: epoll forgets closed fds, libuv does not.
import koffi from 'koffi';
import { getSystemErrorMap } from 'node:util';
import { NativeError, errnoNumber, throwErrno } from './errors.ts';

export interface FdEvents {
  readable?: boolean;
  writable?: boolean;
  /** Peer shut down its writing side (EPOLLRDHUP): sockets only. */
  hangup?: boolean;
}

export interface FdReadiness {
  readable: boolean;
  writable: boolean;
  hangup: boolean;
  /** Poll error (e.g. POLLERR on a pipe whose reader is gone). The watch has already stopped. */
  error: boolean;
}

export interface FdWatch {
  readonly fd: number;
  /** False once stopped (by stop() or after an error). */
  readonly active: boolean;
  /** Idempotent; safe inside the callback; afterwards the callback never runs again. */
  stop(): void;
  /** An active watch keeps the process alive (default); unref() lets the process exit anyway. */
  unref(): FdWatch;
  ref(): FdWatch;
}

// ---- koffi.node.poll, as it really is ----
interface UvPollEvents { readable: boolean; writable: boolean; disconnect: boolean }
interface UvPollHandle { close(): void; ref(): void; unref(): void }
type UvPoll = (fd: number, opts: UvPollEvents, cb: (status: number, events: UvPollEvents) => void) => UvPollHandle;
const uvPoll = (koffi.node as unknown as { poll: UvPoll }).poll;

// ---- the check libuv's uv_poll_init makes, done where a failure is only an exception ----
const lib = koffi.load('libc.so.6');
const epollCreate1 = lib.func('int epoll_create1(int)');
const epollCtl = lib.func('int epoll_ctl(int, int, int, void *)');
const EPOLL_CLOEXEC = 0o2000000;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLLIN = 1;
// struct epoll_event: 12 bytes packed on x86_64, 16 on arm64; only `events` (offset 0) matters here.
const probeEvent = new Uint32Array([EPOLLIN, 0, 0, 0]);
let probeEpollFd = -1;

function assertPollable(fd: number): void {
  if (probeEpollFd < 0) {
    probeEpollFd = epollCreate1(EPOLL_CLOEXEC);
    if (probeEpollFd < 0) throwErrno('epoll_create1', 'watchFd');
  }
  if (epollCtl(probeEpollFd, EPOLL_CTL_ADD, fd, probeEvent) < 0) throwErrno('epoll_ctl', `watchFd ${fd}`);
  if (epollCtl(probeEpollFd, EPOLL_CTL_DEL, fd, probeEvent) < 0) throwErrno('epoll_ctl', `watchFd ${fd}`);
}

/** koffi reports libuv failures as "Failed to ... UV poll: <uv_strerror text>"; recover the errno. */
function uvFailure(err: unknown, fd: number): unknown {
  const text = err instanceof Error ? err.message : '';
  for (const [negErrno, [, message]] of getSystemErrorMap()) {
    if (text.endsWith(`: ${message}`)) return new NativeError(-negErrno, 'uv_poll_start', `watchFd ${fd}`);
  }
  return err;
}

const active = new Map<number, Watch>();

class Watch implements FdWatch {
  private handle: UvPollHandle | null = null;

  constructor(
    readonly fd: number,
    events: FdEvents,
    private readonly onReady: (ev: FdReadiness) => void,
  ) {
    const opts = { readable: !!events.readable, writable: !!events.writable, disconnect: !!events.hangup };
    try {
      this.handle = uvPoll(fd, opts, (status, ev) => this.dispatch(status, ev));
    } catch (err) {
      throw uvFailure(err, fd);
    }
    active.set(fd, this);
  }

  get active(): boolean {
    return this.handle !== null;
  }

  stop(): void {
    const handle = this.handle;
    if (handle === null) return;
    this.handle = null;
    if (active.get(this.fd) === this) active.delete(this.fd);
    handle.close(); // uv_poll_stop + uv_close: the loop no longer counts it
  }

  unref(): FdWatch {
    this.handle?.unref();
    return this;
  }

  ref(): FdWatch {
    this.handle?.ref();
    return this;
  }

  private dispatch(status: number, ev: UvPollEvents): void {
    if (this.handle === null) return;
    const error = status < 0;
    if (error) this.stop(); // libuv has already stopped polling it
    const readiness: FdReadiness = { readable: ev.readable, writable: ev.writable, hangup: ev.disconnect, error };
    try {
      this.onReady(readiness);
    } catch (err) {
      queueMicrotask(() => {
        throw err;
      });
    }
  }
}

/**
 * Calls onReady on the main loop whenever `fd` is ready for one of `events` (level-triggered:
 * again and again until the condition is consumed, e.g. the eventfd read). Throws NativeError:
 * EBADF (not an open fd), EPERM (not pollable: regular file, directory), EEXIST (already
 * watched), EINVAL (no event asked for). Side effect: the fd becomes O_NONBLOCK.
 */
export function watchFd(fd: number, events: FdEvents, onReady: (ev: FdReadiness) => void): FdWatch {
  if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) throw new NativeError(errnoNumber('EBADF'), 'watchFd', `watchFd ${fd}`);
  if (!events.readable && !events.writable && !events.hangup) {
    throw new NativeError(errnoNumber('EINVAL'), 'watchFd', `watchFd ${fd}: no event requested`);
  }
  if (active.has(fd)) throw new NativeError(errnoNumber('EEXIST'), 'watchFd', `watchFd ${fd}: already watched`);
  assertPollable(fd);
  return new Watch(fd, events, onReady);
}
