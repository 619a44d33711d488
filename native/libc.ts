// Typed koffi bindings for the libc calls the VM runtime, transports and devices need:
// fds, vectored positional I/O, ioctl, mmap, eventfd, memfd, threads and signals. Every failure throws NativeError;
// `context` (always the optional last argument) names what the caller was doing.
// Functions are declared once at module load. Pointers are BigInt host addresses.
import koffi from 'koffi';
import { NativeError, throwErrno } from './errors.ts';

const lib = koffi.load('libc.so.6');

// Variadic C functions (open, ioctl, fcntl) are declared as non-variadic aliases: same symbol,
// fixed integer or pointer third argument. On x86_64 and arm64 Linux this is ABI-compatible
// for integer and pointer arguments, and faster. No ssize_t/off_t in koffi: intptr_t/int64_t.
const c = {
  open: lib.func('open', 'int', ['const char *', 'int', 'uint32_t']),
  close: lib.func('int close(int)'),
  read: lib.func('intptr_t read(int, void *, size_t)'),
  write: lib.func('intptr_t write(int, void *, size_t)'),
  preadv2: lib.func('intptr_t preadv2(int, void *, int, int64_t, int)'),
  pwritev2: lib.func('intptr_t pwritev2(int, void *, int, int64_t, int)'),
  ioctlInt: lib.func('ioctl', 'int', ['int', 'unsigned long', 'unsigned long']),
  ioctlPtr: lib.func('ioctl', 'int', ['int', 'unsigned long', 'void *']),
  fcntl: lib.func('fcntl', 'int', ['int', 'int', 'int']),
  pipe2: lib.func('int pipe2(void *, int)'),
  mmap: lib.func('void *mmap(void *, size_t, int, int, int, int64_t)'),
  munmap: lib.func('int munmap(void *, size_t)'),
  madvise: lib.func('int madvise(void *, size_t, int)'),
  eventfd: lib.func('int eventfd(unsigned int, int)'),
  memfdCreate: lib.func('int memfd_create(const char *, unsigned int)'),
  ftruncate: lib.func('int ftruncate(int, int64_t)'),
  fallocate: lib.func('int fallocate(int, int, int64_t, int64_t)'),
  posixFadvise: lib.func('int posix_fadvise(int, int64_t, int64_t, int)'),
  gettid: lib.func('int gettid(void)'),
  tgkill: lib.func('int tgkill(int, int, int)'),
};

// ---- constants (Linux; values identical on x86_64 and arm64 unless noted) ----
const arm64 = process.arch === 'arm64';

export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_NOCTTY = 0o400;
export const O_TRUNC = 0o1000;
export const O_APPEND = 0o2000;
export const O_NONBLOCK = 0o4000;
export const O_DSYNC = 0o10000;
export const O_DIRECT = arm64 ? 0o200000 : 0o40000;
export const O_DIRECTORY = arm64 ? 0o40000 : 0o200000;
export const O_CLOEXEC = 0o2000000;
export const O_SYNC = 0o4010000;

export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const PROT_EXEC = 4;

export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MAP_POPULATE = 0x8000;
export const MAP_HUGETLB = 0x40000;
export const MAP_FIXED_NOREPLACE = 0x100000;
/** What mmap returns on failure: (void *)-1. */
export const MAP_FAILED = 0xffff_ffff_ffff_ffffn;

export const MADV_DONTNEED = 4;
export const MADV_REMOVE = 9;
export const MADV_DONTFORK = 10;
export const MADV_HUGEPAGE = 14;
export const MADV_NOHUGEPAGE = 15;

export const EFD_SEMAPHORE = 1;
export const EFD_NONBLOCK = O_NONBLOCK;
export const EFD_CLOEXEC = O_CLOEXEC;

export const MFD_CLOEXEC = 1;
export const MFD_ALLOW_SEALING = 2;
export const MFD_HUGETLB = 4;

export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

/** preadv2/pwritev2 flags. RWF_NOWAIT: fail with EAGAIN instead of blocking (page-cache miss, lock, allocation). */
export const RWF_HIPRI = 0x01;
export const RWF_DSYNC = 0x02;
export const RWF_SYNC = 0x04;
export const RWF_NOWAIT = 0x08;

/** Linux IOV_MAX (UIO_MAXIOV): the most buffers one readv/writev-family call takes. */
export const IOV_MAX = 1024;

export const POSIX_FADV_WILLNEED = 3;
/** Drops the range's clean page-cache pages (dirty ones stay until written back). */
export const POSIX_FADV_DONTNEED = 4;

export const F_GETFD = 1;
export const F_SETFD = 2;
export const F_GETFL = 3;
export const F_SETFL = 4;
export const F_DUPFD_CLOEXEC = 1030;
export const F_ADD_SEALS = 1033;
export const F_GET_SEALS = 1034;
export const FD_CLOEXEC = 1;
export const F_SEAL_SEAL = 1;
export const F_SEAL_SHRINK = 2;
export const F_SEAL_GROW = 4;
export const F_SEAL_WRITE = 8;

export const SIGINT = 2;
export const SIGKILL = 9;
export const SIGUSR1 = 10;
export const SIGUSR2 = 12;
export const SIGPIPE = 13;
export const SIGTERM = 15;
export const SIGCHLD = 17;

const EAGAIN = koffi.os.errno.EAGAIN; // == EWOULDBLOCK on Linux
const EINTR = koffi.os.errno.EINTR;

/** After a failed call: returns null if errno is `expected`, else throws NativeError. */
function failUnless(expected: number, call: string, context?: string): null {
  const errno = koffi.errno();
  if (errno !== expected) throw new NativeError(errno, call, context);
  return null;
}

// ---- file descriptors ----

/** open(2). `mode` only matters with O_CREAT (umask applies). Context defaults to `open <path>`. */
export function open(path: string, flags: number, mode = 0o666, context?: string): number {
  const fd: number = c.open(path, flags, mode);
  if (fd < 0) throwErrno('open', context ?? `open ${path}`);
  return fd;
}

/** close(2). EINTR counts as closed: Linux releases the fd before it can be interrupted. */
export function close(fd: number, context?: string): void {
  if (c.close(fd) < 0) failUnless(EINTR, 'close', context);
}

/** read(2) of up to buf.byteLength bytes; returns the count (0 = end of file). EAGAIN throws: see readNonBlocking. */
export function read(fd: number, buf: Uint8Array, context?: string): number {
  const n: number = c.read(fd, buf, buf.byteLength);
  if (n < 0) throwErrno('read', context);
  return n;
}

/** read(2) on a non-blocking fd: null when nothing is ready (EAGAIN). */
export function readNonBlocking(fd: number, buf: Uint8Array, context?: string): number | null {
  const n: number = c.read(fd, buf, buf.byteLength);
  if (n < 0) return failUnless(EAGAIN, 'read', context);
  return n;
}

/** write(2) of `buf`; returns the count actually written, which may be short. */
export function write(fd: number, buf: Uint8Array, context?: string): number {
  const n: number = c.write(fd, buf, buf.byteLength);
  if (n < 0) throwErrno('write', context);
  return n;
}

// ---- vectored positional I/O ----

/**
 * A reusable `struct iovec[capacity]` (64-bit: base pointer, size_t length) that points at JS
 * memory: views over ArrayBuffers, SharedArrayBuffers or koffi views of mapped memory. Filling
 * it allocates nothing once each backing buffer's address is known (one BigInt per buffer, ever).
 * addressOf's limits apply: every view set here must stay reachable and undetached until the
 * call that uses the array has returned. Set entries [0, count) before each call.
 */
export class IovecArray {
  /** Two little-endian uint64 per entry, as 32-bit halves: no BigInt on the fill path. */
  private readonly words: Uint32Array;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > IOV_MAX) {
      throw new RangeError(`IovecArray: capacity ${capacity} is outside 1..${IOV_MAX}`);
    }
    if (process.arch !== 'x64' && process.arch !== 'arm64') throw new Error(`IovecArray: no iovec layout for ${process.arch}`);
    this.words = new Uint32Array(capacity * 4);
  }

  /** Entry `i` covers every byte of `view`. Returns its byteLength. */
  set(i: number, view: ArrayBufferView): number {
    if (i >= this.capacity) throw new RangeError(`IovecArray: entry ${i} of ${this.capacity}`);
    const addr = bufferAddress(view.buffer) + view.byteOffset; // < 2^47: exact as a number
    const len = view.byteLength;
    const w = this.words, k = i * 4;
    w[k] = addr % 0x1_0000_0000;
    w[k + 1] = Math.floor(addr / 0x1_0000_0000);
    w[k + 2] = len % 0x1_0000_0000;
    w[k + 3] = Math.floor(len / 0x1_0000_0000);
    return len;
  }

  /** The array itself, passed in place to native code. */
  get raw(): Uint32Array {
    return this.words;
  }
}

const bufferAddresses = new WeakMap<ArrayBufferLike, number>();

/** Host address of a backing buffer as a number, asked of koffi once per buffer (backing stores never move). */
function bufferAddress(buffer: ArrayBufferLike): number {
  let addr = bufferAddresses.get(buffer);
  if (addr === undefined) {
    addr = Number(addressOf(buffer));
    bufferAddresses.set(buffer, addr);
  }
  return addr;
}

/**
 * preadv2(2): fills entries [0, count) of `iov` from file `offset`; returns the bytes read (short
 * at end of file, or when RWF_NOWAIT could serve only part). null means EAGAIN: with RWF_NOWAIT
 * the data is not in the page cache. Any other failure throws NativeError; a file system or kernel
 * without RWF_NOWAIT support reports EOPNOTSUPP (older kernels: EINVAL).
 */
export function preadv2(fd: number, iov: IovecArray, count: number, offset: number, flags: number, context?: string): number | null {
  if (count > iov.capacity) throw new RangeError(`preadv2: ${count} entries of ${iov.capacity}`);
  const n: number = c.preadv2(fd, iov.raw, count, offset, flags);
  if (n < 0) return failUnless(EAGAIN, 'preadv2', context);
  return n;
}

/** pwritev2(2): stores entries [0, count) of `iov` at file `offset`; like preadv2 (null = EAGAIN, short counts possible). */
export function pwritev2(fd: number, iov: IovecArray, count: number, offset: number, flags: number, context?: string): number | null {
  if (count > iov.capacity) throw new RangeError(`pwritev2: ${count} entries of ${iov.capacity}`);
  const n: number = c.pwritev2(fd, iov.raw, count, offset, flags);
  if (n < 0) return failUnless(EAGAIN, 'pwritev2', context);
  return n;
}

/** fcntl(2) with an integer (or absent: pass 0) argument; returns its result. */
export function fcntl(fd: number, cmd: number, arg = 0, context?: string): number {
  const r: number = c.fcntl(fd, cmd, arg);
  if (r < 0) throwErrno('fcntl', context);
  return r;
}

/** Sets or clears O_NONBLOCK on the open file description (shared by every dup of it). */
export function setNonBlocking(fd: number, nonBlocking: boolean, context?: string): void {
  const flags = fcntl(fd, F_GETFL, 0, context);
  const next = nonBlocking ? flags | O_NONBLOCK : flags & ~O_NONBLOCK;
  if (next !== flags) fcntl(fd, F_SETFL, next, context);
}

/** A new close-on-exec fd number for the same open file description. */
export function dup(fd: number, context?: string): number {
  const r: number = c.fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (r < 0) throwErrno('fcntl', context ?? 'dup');
  return r;
}

/** pipe2(2): [readEnd, writeEnd]. flags: O_CLOEXEC, O_NONBLOCK. */
export function pipe(flags = O_CLOEXEC, context?: string): [number, number] {
  const fds = new Int32Array(2);
  if (c.pipe2(fds, flags) < 0) throwErrno('pipe2', context);
  return [fds[0]!, fds[1]!];
}

// ---- ioctl ----

/** ioctl(2) whose third argument is an integer (or absent: pass 0). Returns the ioctl's result. */
export function ioctl(fd: number, request: number, arg: number | bigint, context?: string): number {
  const r: number = c.ioctlInt(fd, request, arg);
  if (r < 0) throwErrno('ioctl', context);
  return r;
}

/**
 * ioctl(2) whose third argument is a pointer: JS memory (passed in place, the kernel reads and
 * writes it directly; a view's byteOffset is honoured), a raw host address, or null.
 */
export function ioctlPtr(
  fd: number,
  request: number,
  arg: ArrayBufferView | ArrayBuffer | bigint | null,
  context?: string,
): number {
  const r: number = c.ioctlPtr(fd, request, arg);
  if (r < 0) throwErrno('ioctl', context);
  return r;
}

// ---- memory ----

/** mmap(2) at an address of the kernel's choosing. Returns the host address. */
export function mmap(length: number, prot: number, flags: number, fd: number, offset: number, context?: string): bigint {
  return mmapAt(0n, length, prot, flags, fd, offset, context);
}

/** mmap(2) with an address hint (or exact address with MAP_FIXED / MAP_FIXED_NOREPLACE). */
export function mmapAt(
  addr: bigint,
  length: number,
  prot: number,
  flags: number,
  fd: number,
  offset: number,
  context?: string,
): bigint {
  const p: bigint = c.mmap(addr, length, prot, flags, fd, offset);
  if (p === MAP_FAILED) throwErrno('mmap', context);
  return p;
}

export function munmap(addr: bigint, length: number, context?: string): void {
  if (c.munmap(addr, length) < 0) throwErrno('munmap', context);
}

export function madvise(addr: bigint, length: number, advice: number, context?: string): void {
  if (c.madvise(addr, length, advice) < 0) throwErrno('madvise', context);
}

/**
 * Zero-copy ArrayBuffer over native memory at `addr` (no bounds or lifetime check: the caller
 * guarantees the mapping outlives the view; touching it after munmap kills the process).
 * Not a SharedArrayBuffer: to share with a worker, send the address and call view() there.
 */
export function view(addr: bigint, length: number): ArrayBuffer {
  return koffi.view(addr, length);
}

/**
 * Host address of JS memory (a view's byteOffset included), e.g. to register a SharedArrayBuffer
 * as guest RAM or to fill a pointer field of a struct. Limits: the address stays valid only
 * while the buffer is reachable from JS and not detached or transferred (postMessage transfer,
 * ArrayBuffer.prototype.transfer); keep a reference for as long as native code may use it.
 * Backing stores never move once materialized (asking for the address materializes small
 * on-heap typed arrays). Alignment is whatever V8 gave: page-align inside the buffer yourself.
 */
export function addressOf(buf: ArrayBufferView | ArrayBuffer | SharedArrayBuffer): bigint {
  if (typeof SharedArrayBuffer !== 'undefined' && buf instanceof SharedArrayBuffer) {
    return koffi.address(new Uint8Array(buf)); // koffi takes a view of a SAB, not the SAB itself
  }
  return koffi.address(buf);
}

// ---- eventfd / memfd ----

// One 8-byte counter buffer per thread (each worker loads its own copy of this module).
const counter = new BigUint64Array(1);

export function eventfd(initval: number, flags: number, context?: string): number {
  const fd: number = c.eventfd(initval, flags);
  if (fd < 0) throwErrno('eventfd', context);
  return fd;
}

/**
 * Adds `value` to the eventfd counter. EAGAIN (counter would overflow on a non-blocking fd)
 * means it is already signalled, so it is not an error. Allocation-free: safe for irqfd paths.
 */
export function eventfdWrite(fd: number, value: bigint = 1n, context?: string): void {
  counter[0] = value;
  if (c.write(fd, counter, 8) < 0) failUnless(EAGAIN, 'write', context ?? 'eventfd write');
}

/** Reads and resets the counter (or takes 1 with EFD_SEMAPHORE). null when zero on a non-blocking fd. */
export function eventfdRead(fd: number, context?: string): bigint | null {
  if (c.read(fd, counter, 8) < 0) return failUnless(EAGAIN, 'read', context ?? 'eventfd read');
  return counter[0]!;
}

/** Like eventfdRead but returns only whether the counter was non-zero: no BigInt, for hot paths. */
export function eventfdDrain(fd: number, context?: string): boolean {
  if (c.read(fd, counter, 8) < 0) return failUnless(EAGAIN, 'read', context ?? 'eventfd read') ?? false;
  return true;
}

export function memfdCreate(name: string, flags: number, context?: string): number {
  const fd: number = c.memfdCreate(name, flags);
  if (fd < 0) throwErrno('memfd_create', context);
  return fd;
}

export function ftruncate(fd: number, size: number, context?: string): void {
  if (c.ftruncate(fd, size) < 0) throwErrno('ftruncate', context);
}

export function fallocate(fd: number, mode: number, offset: number, length: number, context?: string): void {
  if (c.fallocate(fd, mode, offset, length) < 0) throwErrno('fallocate', context);
}

/** posix_fadvise(2). It returns the error number instead of setting errno. length 0 = to end of file. */
export function fadvise(fd: number, offset: number, length: number, advice: number, context?: string): void {
  const err: number = c.posixFadvise(fd, offset, length, advice);
  if (err !== 0) throw new NativeError(err, 'posix_fadvise', context);
}

// ---- threads and signals ----

/** Kernel thread id of the calling thread (main thread or worker). */
export function gettid(): number {
  return c.gettid();
}

export function tgkill(tgid: number, tid: number, sig: number, context?: string): void {
  if (c.tgkill(tgid, tid, sig) < 0) throwErrno('tgkill', context);
}
