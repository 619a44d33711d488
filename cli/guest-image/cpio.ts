// cpio "newc" (SVR4, magic 070701) archives, the only format the Linux
// initramfs unpacker reads: a writer for building the guest's initramfs and a
// strict reader used to check what was written. Output is deterministic (mtime
// 0, uid/gid 0, inode numbers in entry order), so equal inputs give equal bytes.

export type CpioEntry =
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'file'; path: string; data: Uint8Array; mode?: number }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'chardev'; path: string; major: number; minor: number; mode?: number };

export class CpioError extends Error {
  constructor(readonly code: 'EINVAL' | 'E2BIG', message: string) {
    super(`${code}: ${message}`);
    this.name = 'CpioError';
  }
}

const MAGIC = '070701';
const HEADER_SIZE = 110; // magic + 13 fields of 8 hex digits
const TRAILER = 'TRAILER!!!';
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const U32_MAX = 0xffff_ffff;

const pad4 = (n: number): number => (4 - (n & 3)) & 3;

/** Checks a path the way the kernel will see it: relative, no '.'/'..' parts, no NUL. */
function checkPath(path: string): void {
  if (path === TRAILER) throw new CpioError('EINVAL', `cpio path '${path}' is reserved for the end-of-archive marker`);
  if (path.length === 0 || path.startsWith('/') || path.endsWith('/') || path.includes('\0')) {
    throw new CpioError('EINVAL', `cpio path '${path}' must be relative, non-empty, without a trailing '/' or NUL`);
  }
  for (const part of path.split('/')) {
    if (part === '' || part === '.' || part === '..') throw new CpioError('EINVAL', `cpio path '${path}' has an empty, '.' or '..' component`);
  }
}

function checkPermissions(path: string, mode: number): number {
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw new CpioError('EINVAL', `cpio entry '${path}': mode ${mode} is not a permission mask (0..0o7777)`);
  return mode;
}

function u32(path: string, what: string, value: number): number {
  if (!Number.isInteger(value) || value < 0 || value > U32_MAX) throw new CpioError('E2BIG', `cpio entry '${path}': ${what} ${value} does not fit in 32 bits`);
  return value;
}

function hex8(value: number): string {
  return value.toString(16).padStart(8, '0');
}

/** Serialises entries, in order, followed by the trailer. Parent directories must be listed before their children. */
export function writeCpio(entries: Iterable<CpioEntry>): Buffer {
  const chunks: Buffer[] = [];
  const seen = new Set<string>();
  let ino = 0;

  const emit = (name: string, mode: number, nlink: number, data: Uint8Array, rdevMajor: number, rdevMinor: number): void => {
    const nameBytes = Buffer.from(`${name}\0`, 'utf8');
    const fields = [
      ++ino, mode, 0, 0, nlink, 0, u32(name, 'size', data.length), 0, 0,
      u32(name, 'major', rdevMajor), u32(name, 'minor', rdevMinor), nameBytes.length, 0,
    ];
    const header = Buffer.from(MAGIC + fields.map(hex8).join(''), 'latin1');
    chunks.push(header, nameBytes, Buffer.alloc(pad4(HEADER_SIZE + nameBytes.length)));
    if (data.length > 0) chunks.push(Buffer.from(data.buffer, data.byteOffset, data.length), Buffer.alloc(pad4(data.length)));
  };

  for (const entry of entries) {
    checkPath(entry.path);
    if (seen.has(entry.path)) throw new CpioError('EINVAL', `cpio path '${entry.path}' appears twice`);
    const slash = entry.path.lastIndexOf('/');
    if (slash > 0 && !seen.has(entry.path.slice(0, slash))) {
      throw new CpioError('EINVAL', `cpio entry '${entry.path}' comes before its directory '${entry.path.slice(0, slash)}'`);
    }
    seen.add(entry.path);
    switch (entry.type) {
      case 'dir':
        emit(entry.path, S_IFDIR | checkPermissions(entry.path, entry.mode ?? 0o755), 2, new Uint8Array(0), 0, 0);
        break;
      case 'file':
        emit(entry.path, S_IFREG | checkPermissions(entry.path, entry.mode ?? 0o644), 1, entry.data, 0, 0);
        break;
      case 'symlink':
        if (entry.target.length === 0 || entry.target.includes('\0')) throw new CpioError('EINVAL', `cpio symlink '${entry.path}' has an empty or NUL-containing target`);
        emit(entry.path, S_IFLNK | 0o777, 1, Buffer.from(entry.target, 'utf8'), 0, 0);
        break;
      case 'chardev':
        emit(entry.path, S_IFCHR | checkPermissions(entry.path, entry.mode ?? 0o600), 1, new Uint8Array(0), entry.major, entry.minor);
        break;
    }
  }
  emit(TRAILER, 0, 1, new Uint8Array(0), 0, 0);
  return Buffer.concat(chunks);
}

/** Parses a newc archive back into entries, rejecting anything malformed or truncated. */
export function readCpio(archive: Uint8Array): CpioEntry[] {
  const buf = Buffer.from(archive.buffer, archive.byteOffset, archive.length);
  const entries: CpioEntry[] = [];
  let off = 0;
  for (;;) {
    if (off + HEADER_SIZE > buf.length) throw new CpioError('EINVAL', `cpio archive truncated at offset ${off} (no trailer)`);
    if (buf.toString('latin1', off, off + 6) !== MAGIC) throw new CpioError('EINVAL', `cpio header at offset ${off} has bad magic`);
    const field = (i: number): number => {
      const text = buf.toString('latin1', off + 6 + i * 8, off + 14 + i * 8);
      if (!/^[0-9a-fA-F]{8}$/.test(text)) throw new CpioError('EINVAL', `cpio header at offset ${off}: field ${i} is not hex`);
      return parseInt(text, 16);
    };
    const mode = field(1);
    const size = field(6);
    const rdevMajor = field(9);
    const rdevMinor = field(10);
    const nameSize = field(11);
    const nameStart = off + HEADER_SIZE;
    const dataStart = nameStart + nameSize + pad4(HEADER_SIZE + nameSize);
    const next = dataStart + size + pad4(size);
    if (nameSize < 2 || nameStart + nameSize > buf.length || dataStart + size > buf.length) {
      throw new CpioError('EINVAL', `cpio entry at offset ${off} runs past the end of the archive`);
    }
    if (buf[nameStart + nameSize - 1] !== 0) throw new CpioError('EINVAL', `cpio entry at offset ${off}: name is not NUL-terminated`);
    const path = buf.toString('utf8', nameStart, nameStart + nameSize - 1);
    if (path === TRAILER) return entries;
    const data = new Uint8Array(buf.subarray(dataStart, dataStart + size));
    const perm = mode & 0o7777;
    switch (mode & S_IFMT) {
      case S_IFDIR: entries.push({ type: 'dir', path, mode: perm }); break;
      case S_IFREG: entries.push({ type: 'file', path, data, mode: perm }); break;
      case S_IFLNK: entries.push({ type: 'symlink', path, target: Buffer.from(data).toString('utf8') }); break;
      case S_IFCHR: entries.push({ type: 'chardev', path, major: rdevMajor, minor: rdevMinor, mode: perm }); break;
      default: throw new CpioError('EINVAL', `cpio entry '${path}': unsupported file type 0o${(mode & S_IFMT).toString(8)}`);
    }
    off = next;
  }
}
