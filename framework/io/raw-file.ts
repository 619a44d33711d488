// Positional file I/O for disk images: reads and writes move bytes directly between the
// file and guest-memory views (no intermediate copy), fdatasync, and deallocation through
// fallocate (punch hole, zero range) with a plain zero-write fallback where the file system
// has neither. A read or write is first tried inline with preadv2/pwritev2(RWF_NOWAIT):
// a page-cache hit costs a few microseconds on the calling thread instead of a round trip
// through libuv's thread pool. What the kernel cannot do without blocking (EAGAIN, or the
// rest of a short transfer) goes to the pool (preadv/pwritev); a file whose file system
// refuses RWF_NOWAIT for a direction (EOPNOTSUPP, EINVAL) stops trying it. `BlockFile` is
// what the block device needs from its backing store, so tests can inject failing ones.

import { closeSync, fdatasync, fstatSync, openSync, readv, writev } from 'node:fs';
import { NativeError, isNativeError } from '../../native/errors.ts';
import {
  FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, IOV_MAX, IovecArray, RWF_NOWAIT, fallocate, preadv2,
  pwritev2,
} from '../../native/libc.ts';

/** A backing store addressed in bytes. Views are zero-copy guest memory; failures reject with an errno-coded error. */
export interface BlockFile {
  readonly path: string;
  /** Size in bytes, fixed at open. */
  readonly size: number;
  readonly readOnly: boolean;
  /** The file system's preferred I/O size (st_blksize). */
  readonly ioSize: number;
  /** Fill every byte of `views`, in order, from `position`. */
  read(views: readonly Uint8Array[], position: number): Promise<void>;
  /** Store every byte of `views`, in order, at `position`. */
  write(views: readonly Uint8Array[], position: number): Promise<void>;
  /** Make completed writes durable (fdatasync). */
  sync(): Promise<void>;
  /** Advisory: deallocate the range if the file system can (contents afterwards unspecified). */
  discard(position: number, length: number): Promise<void>;
  /** The range reads back as zeroes afterwards; `mayUnmap` lets it be deallocated. */
  writeZeroes(position: number, length: number, mayUnmap: boolean): Promise<void>;
  /** Idempotent. */
  close(): void;
}

/** A file that cannot serve as an image (wrong type, bad size). */
export class RawFileError extends Error {
  override readonly name = 'RawFileError';
  constructor(readonly code: string, readonly path: string, message: string) {
    super(`${path}: ${message}`);
  }
}

/**
 * The non-blocking vectored calls RawFile tries inline; libc's by default. Tests inject
 * EAGAIN, short counts and refusals here. Contract as native/libc.ts: bytes moved, null on
 * EAGAIN, NativeError otherwise.
 */
export interface VectorIo {
  preadv2: typeof preadv2;
  pwritev2: typeof pwritev2;
}

export interface RawFileOptions {
  readOnly?: boolean;
  /** Default true. false: every read and write goes through the thread pool (the old path, for comparison). */
  inline?: boolean;
  /** Largest request tried inline (default INLINE_MAX_BYTES); larger ones go to the thread pool. */
  inlineMaxBytes?: number;
  /** Default: libc. */
  io?: VectorIo;
}

/** Requests by how they completed: wholly inline, or (wholly or their rest) on the thread pool. */
export interface RawFileStats {
  inline: number;
  pooled: number;
}

const LIBC_IO: VectorIo = { preadv2, pwritev2 };
/** Largest request tried inline; larger ones go to the thread pool. */
export const INLINE_MAX_BYTES = 64 * 1024;

/** One iovec array for every inline call of this thread: the calls are synchronous, so it is never shared. */
const iov = new IovecArray(IOV_MAX);
const DONE: Promise<void> = Promise.resolve();
/** Chunk of the zero-write fallback (allocated on first use). */
const ZERO_CHUNK_SIZE = 1 << 20;
let zeroChunk: Uint8Array | null = null;

type IoCallback = (err: NodeJS.ErrnoException | null, bytes: number) => void;

export class RawFile implements BlockFile {
  private fd: number;
  private canPunchHole = true;
  private canZeroRange = true;
  /** Cleared for good when the file system refuses RWF_NOWAIT in that direction. */
  private inlineReads: boolean;
  private inlineWrites: boolean;
  private readonly inlineMaxBytes: number;
  readonly stats: RawFileStats = { inline: 0, pooled: 0 };

  private constructor(
    fd: number,
    readonly path: string,
    readonly size: number,
    readonly readOnly: boolean,
    readonly ioSize: number,
    inline: boolean,
    private readonly io: VectorIo,
    inlineMaxBytes: number,
  ) {
    this.fd = fd;
    this.inlineReads = inline;
    this.inlineWrites = inline && !readOnly;
    this.inlineMaxBytes = inlineMaxBytes;
  }

  /** Open a regular file read-write ('r+') or read-only ('r'); throws the fs error (ENOENT, EACCES...) or RawFileError. */
  static open(path: string, options: RawFileOptions = {}): RawFile {
    const readOnly = options.readOnly ?? false;
    const fd = openSync(path, readOnly ? 'r' : 'r+');
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw new RawFileError('EINVAL', path, 'not a regular file');
      const ioSize = st.blksize > 0 ? st.blksize : 4096;
      return new RawFile(fd, path, st.size, readOnly, ioSize, options.inline ?? true, options.io ?? LIBC_IO, options.inlineMaxBytes ?? INLINE_MAX_BYTES);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  read(views: readonly Uint8Array[], position: number): Promise<void> {
    return this.transfer(views, position, false);
  }

  write(views: readonly Uint8Array[], position: number): Promise<void> {
    return this.transfer(views, position, true);
  }

  sync(): Promise<void> {
    return new Promise((resolve, reject) => fdatasync(this.fd, (err) => (err ? reject(err) : resolve())));
  }

  async discard(position: number, length: number): Promise<void> {
    if (length === 0 || !this.canPunchHole) return;
    try {
      fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, position, length, this.path);
    } catch (err) {
      if (!isUnsupported(err)) throw err;
      this.canPunchHole = false; // discard is advisory: nothing to do here
    }
  }

  async writeZeroes(position: number, length: number, mayUnmap: boolean): Promise<void> {
    if (length === 0) return;
    if (mayUnmap && this.canPunchHole) {
      try {
        fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, position, length, this.path);
        return;
      } catch (err) {
        if (!isUnsupported(err)) throw err;
        this.canPunchHole = false;
      }
    }
    if (this.canZeroRange) {
      try {
        fallocate(this.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, position, length, this.path);
        return;
      } catch (err) {
        if (!isUnsupported(err)) throw err;
        this.canZeroRange = false;
      }
    }
    zeroChunk ??= new Uint8Array(ZERO_CHUNK_SIZE);
    for (let done = 0; done < length; ) {
      const n = Math.min(ZERO_CHUNK_SIZE, length - done);
      await this.transfer([zeroChunk.subarray(0, n)], position + done, true);
      done += n;
    }
  }

  close(): void {
    if (this.fd < 0) return;
    const fd = this.fd;
    this.fd = -1;
    closeSync(fd);
  }

  /** Inline what the kernel can do without blocking, the rest on the thread pool. Settles once every byte moved. */
  private transfer(views: readonly Uint8Array[], position: number, toFile: boolean): Promise<void> {
    let left = 0;
    for (let i = 0; i < views.length; i++) left += views[i]!.byteLength;
    if (left === 0) return DONE;
    // Small requests inline: a pool round trip costs 35-60 us here, far more than copying 4 KiB.
    // Large ones stay on the pool, whose threads copy in parallel without stalling the event loop.
    if (left <= this.inlineMaxBytes && (toFile ? this.inlineWrites : this.inlineReads)) {
      let moved: number;
      try {
        moved = this.transferInline(views, position, toFile);
      } catch (err) {
        return Promise.reject(err);
      }
      if (moved === left) {
        this.stats.inline++;
        return DONE;
      }
      if (moved > 0) {
        views = skipBytes(views, moved);
        position += moved;
        left -= moved;
      }
    }
    this.stats.pooled++;
    return this.transferPooled(views, position, left, toFile);
  }

  /**
   * preadv2/pwritev2(RWF_NOWAIT) over at most IOV_MAX views per call; returns the bytes moved,
   * stopping at the first EAGAIN or short count. Throws the NativeError of a real failure.
   */
  private transferInline(views: readonly Uint8Array[], position: number, toFile: boolean): number {
    let moved = 0;
    for (let first = 0; first < views.length; ) {
      const count = Math.min(IOV_MAX, views.length - first);
      let bytes = 0;
      for (let i = 0; i < count; i++) bytes += iov.set(i, views[first + i]!);
      let n: number | null;
      try {
        n = toFile
          ? this.io.pwritev2(this.fd, iov, count, position + moved, RWF_NOWAIT, this.path)
          : this.io.preadv2(this.fd, iov, count, position + moved, RWF_NOWAIT, this.path);
      } catch (err) {
        if (isNativeError(err, 'EINTR')) return moved;
        if (!refusesNowait(err)) throw err;
        if (toFile) this.inlineWrites = false;
        else this.inlineReads = false;
        return moved;
      }
      if (n === null) return moved;
      moved += n;
      if (n < bytes) return moved;
      first += count;
    }
    return moved;
  }

  /** preadv/pwritev on the thread pool until `left` bytes moved: at most IOV_MAX buffers per call, short transfers resumed. */
  private transferPooled(views: readonly Uint8Array[], position: number, left: number, toFile: boolean): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let pending = views;
      let at = position;
      const step = () => {
        const batch = pending.length > IOV_MAX ? pending.slice(0, IOV_MAX) : pending;
        if (toFile) writev(this.fd, batch as Uint8Array[], at, done);
        else readv(this.fd, batch as Uint8Array[], at, done);
      };
      const done: IoCallback = (err, n) => {
        if (err) return reject(err);
        if (n === 0) return reject(new RawFileError('EIO', this.path, `unexpected end of file at byte ${at}`));
        left -= n;
        at += n;
        if (left === 0) return resolve();
        pending = skipBytes(pending, n);
        step();
      };
      step();
    });
  }
}

/** The buffers after the first `n` bytes (cold path: only after a short transfer or a batch split). */
function skipBytes(views: readonly Uint8Array[], n: number): Uint8Array[] {
  let i = 0;
  while (n >= views[i]!.byteLength) n -= views[i++]!.byteLength;
  const rest = views.slice(i);
  if (n > 0) rest[0] = rest[0]!.subarray(n);
  return rest;
}

function isUnsupported(err: unknown): boolean {
  return err instanceof NativeError && (err.code === 'EOPNOTSUPP' || err.code === 'ENOTSUP');
}

/** RWF_NOWAIT unknown to the kernel (EINVAL before 4.14, or with O_DIRECT quirks) or not done by this file system. */
function refusesNowait(err: unknown): boolean {
  return isUnsupported(err) || isNativeError(err, 'EINVAL');
}
