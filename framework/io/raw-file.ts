// Positional file I/O for disk images: reads and writes move bytes directly between the
// file and guest-memory views (preadv/pwritev on libuv's thread pool, no intermediate
// copy), fdatasync, and deallocation through fallocate (punch hole, zero range) with a
// plain zero-write fallback where the file system has neither. `BlockFile` is what the
// block device needs from its backing store, so tests can inject failing ones.

import { closeSync, fdatasync, fstatSync, openSync, readv, writev } from 'node:fs';
import { NativeError } from '../../native/errors.ts';
import { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, fallocate } from '../../native/libc.ts';

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

/** Linux IOV_MAX: the most buffers one preadv/pwritev takes. */
const IOV_MAX = 1024;
/** Chunk of the zero-write fallback (allocated on first use). */
const ZERO_CHUNK_SIZE = 1 << 20;
let zeroChunk: Uint8Array | null = null;

type IoCallback = (err: NodeJS.ErrnoException | null, bytes: number) => void;

export class RawFile implements BlockFile {
  private fd: number;
  private canPunchHole = true;
  private canZeroRange = true;

  private constructor(
    fd: number,
    readonly path: string,
    readonly size: number,
    readonly readOnly: boolean,
    readonly ioSize: number,
  ) {
    this.fd = fd;
  }

  /** Open a regular file read-write ('r+') or read-only ('r'); throws the fs error (ENOENT, EACCES...) or RawFileError. */
  static open(path: string, options: { readOnly?: boolean } = {}): RawFile {
    const readOnly = options.readOnly ?? false;
    const fd = openSync(path, readOnly ? 'r' : 'r+');
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw new RawFileError('EINVAL', path, 'not a regular file');
      return new RawFile(fd, path, st.size, readOnly, st.blksize > 0 ? st.blksize : 4096);
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

  /** preadv/pwritev until every byte moved: at most IOV_MAX buffers per call, short transfers resumed. */
  private transfer(views: readonly Uint8Array[], position: number, toFile: boolean): Promise<void> {
    let left = 0;
    for (const v of views) left += v.byteLength;
    if (left === 0) return Promise.resolve();
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
