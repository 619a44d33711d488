// A failing disk for tests: a tiny FUSE file system (spoken directly on /dev/fuse, no
// libfuse) holding one file, `disk.img`, whose reads, writes and fsyncs fail with real
// kernel errors (EIO, ENOSPC) wherever the test says. Files are opened direct-I/O, so every
// pread/pwrite reaches this process and a failure is the syscall's own errno, exactly what a
// dying disk gives a VMM. Run as its own process (a process must not serve FUSE requests
// for itself): `node --import tsx faulty-disk.ts MOUNTPOINT SIZE`; it prints "ready" once
// mounted, then takes one JSON command per stdin line and answers "ok" to each:
//   {"failRead":[[start,end],...], "failWrite":[[start,end],...], "writeErrno":"EIO"|"ENOSPC", "failFsync":true}
// Byte ranges are [start, end). Closing stdin (or the parent dying) unmounts and exits.

import { spawnSync } from 'node:child_process';
import { closeSync, openSync, read, writeSync } from 'node:fs';
import { createInterface } from 'node:readline';

const [mountpoint, sizeArg] = process.argv.slice(2);
const SIZE = Number(sizeArg);
if (!mountpoint || !Number.isSafeInteger(SIZE) || SIZE <= 0) {
  process.stderr.write('usage: faulty-disk.ts MOUNTPOINT SIZE\n');
  process.exit(2);
}

const ERRNO = { EPERM: 1, ENOENT: 2, EIO: 5, EBADF: 9, EACCES: 13, EEXIST: 17, EINVAL: 22, ENOSPC: 28, EROFS: 30, ENOSYS: 38 } as const;
type ErrnoName = keyof typeof ERRNO;

// ---- the disk and its faults ----
const data = new Uint8Array(SIZE);
for (let i = 0; i < SIZE; i++) data[i] = ((i >>> 9) * 31 + i) & 0xff; // every sector different
let failRead: [number, number][] = [];
let failWrite: [number, number][] = [];
let writeErrno: ErrnoName = 'EIO';
let failFsync = false;
const hits = (ranges: [number, number][], start: number, end: number) => ranges.some(([a, b]) => start < b && a < end);

// ---- FUSE wire format (include/uapi/linux/fuse.h) ----
const OP = {
  LOOKUP: 1, FORGET: 2, GETATTR: 3, SETATTR: 4, OPEN: 14, READ: 15, WRITE: 16, STATFS: 17, RELEASE: 18, FSYNC: 20,
  FLUSH: 25, INIT: 26, OPENDIR: 27, READDIR: 28, RELEASEDIR: 29, ACCESS: 34, INTERRUPT: 36, DESTROY: 38, BATCH_FORGET: 42,
} as const;
const IN_HEADER = 40;
const ROOT = 1n, FILE = 2n;
const FOPEN_DIRECT_IO = 1;
const FUSE_BIG_WRITES = 1 << 5;
const MAX_WRITE = 128 * 1024;
const NAME = 'disk.img';

const fuse = openSync('/dev/fuse', 'r+');
const mounted = spawnSync('mount', ['-i', '-t', 'fuse', '-o', `fd=3,rootmode=40000,user_id=0,group_id=0,max_read=${MAX_WRITE}`,
  'rxvirt-faulty-disk', mountpoint], { stdio: ['ignore', 'ignore', 'pipe', fuse] });
if (mounted.status !== 0) {
  process.stderr.write(`faulty-disk: mount failed: ${mounted.stderr?.toString().trim() || `exit ${mounted.status}`}\n`);
  process.exit(1);
}

function reply(unique: bigint, error: number, body: Uint8Array = new Uint8Array(0)): void {
  const out = new Uint8Array(16 + (error === 0 ? body.length : 0));
  const v = new DataView(out.buffer);
  v.setUint32(0, out.length, true);
  v.setInt32(4, -error, true);
  v.setBigUint64(8, unique, true);
  if (error === 0) out.set(body, 16);
  try {
    writeSync(fuse, out);
  } catch {
    // the request was interrupted or the file system is going away
  }
}

function attr(node: bigint): Uint8Array {
  const a = new Uint8Array(88);
  const v = new DataView(a.buffer);
  const now = BigInt(Math.floor(Date.now() / 1000));
  const file = node === FILE;
  v.setBigUint64(0, node, true); // ino
  v.setBigUint64(8, BigInt(file ? SIZE : 0), true); // size
  v.setBigUint64(16, BigInt(file ? Math.ceil(SIZE / 512) : 0), true); // blocks
  for (const at of [24, 32, 40]) v.setBigUint64(at, now, true); // atime, mtime, ctime
  v.setUint32(60, file ? 0o100644 : 0o040755, true); // mode
  v.setUint32(64, file ? 1 : 2, true); // nlink
  v.setUint32(80, 4096, true); // blksize
  return a;
}

function entryOut(node: bigint): Uint8Array {
  const e = new Uint8Array(40 + 88);
  const v = new DataView(e.buffer);
  v.setBigUint64(0, node, true);
  v.setBigUint64(16, 1n, true); // entry_valid: 1 s
  e.set(attr(node), 40); // attr_valid 0: sizes are always asked again
  return e;
}

function attrOut(node: bigint): Uint8Array {
  const o = new Uint8Array(16 + 88);
  o.set(attr(node), 16);
  return o;
}

function handle(req: Uint8Array): boolean {
  const v = new DataView(req.buffer, req.byteOffset, req.length);
  const opcode = v.getUint32(4, true);
  const unique = v.getBigUint64(8, true);
  const node = v.getBigUint64(16, true);
  const body = req.subarray(IN_HEADER);
  const b = new DataView(body.buffer, body.byteOffset, body.length);
  switch (opcode) {
    case OP.INIT: {
      const out = new Uint8Array(64);
      const o = new DataView(out.buffer);
      o.setUint32(0, 7, true); // major
      o.setUint32(4, 31, true); // minor
      o.setUint32(8, b.getUint32(8, true), true); // max_readahead as offered
      o.setUint32(12, FUSE_BIG_WRITES, true);
      o.setUint16(16, 16, true); // max_background
      o.setUint16(18, 12, true); // congestion_threshold
      o.setUint32(20, MAX_WRITE, true);
      o.setUint32(24, 1, true); // time_gran
      reply(unique, 0, out);
      return true;
    }
    case OP.LOOKUP: {
      const name = new TextDecoder().decode(body.subarray(0, Math.max(0, body.indexOf(0))));
      if (node === ROOT && name === NAME) reply(unique, 0, entryOut(FILE));
      else reply(unique, ERRNO.ENOENT);
      return true;
    }
    case OP.GETATTR:
    case OP.SETATTR:
      if (node === ROOT || node === FILE) reply(unique, 0, attrOut(node));
      else reply(unique, ERRNO.ENOENT);
      return true;
    case OP.OPEN: {
      const out = new Uint8Array(16);
      const o = new DataView(out.buffer);
      o.setBigUint64(0, 1n, true);
      o.setUint32(8, FOPEN_DIRECT_IO, true);
      reply(unique, 0, out);
      return true;
    }
    case OP.READ: {
      const offset = Number(b.getBigUint64(8, true));
      const size = b.getUint32(16, true);
      const end = Math.min(SIZE, offset + size);
      if (hits(failRead, offset, end)) reply(unique, ERRNO.EIO);
      else reply(unique, 0, offset >= SIZE ? new Uint8Array(0) : data.subarray(offset, end));
      return true;
    }
    case OP.WRITE: {
      const offset = Number(b.getBigUint64(8, true));
      const size = b.getUint32(16, true);
      const bytes = body.subarray(40, 40 + size);
      if (offset + size > SIZE) reply(unique, ERRNO.ENOSPC);
      else if (hits(failWrite, offset, offset + size)) reply(unique, ERRNO[writeErrno]);
      else {
        data.set(bytes, offset);
        const out = new Uint8Array(8);
        new DataView(out.buffer).setUint32(0, size, true);
        reply(unique, 0, out);
      }
      return true;
    }
    case OP.FSYNC:
      reply(unique, failFsync ? ERRNO.EIO : 0);
      return true;
    case OP.STATFS: {
      const out = new Uint8Array(80);
      const o = new DataView(out.buffer);
      o.setBigUint64(0, BigInt(SIZE / 4096), true);
      o.setUint32(40, 4096, true); // bsize
      o.setUint32(44, 255, true); // namelen
      o.setUint32(48, 4096, true); // frsize
      reply(unique, 0, out);
      return true;
    }
    case OP.OPENDIR:
      reply(unique, 0, new Uint8Array(16));
      return true;
    case OP.READDIR:
      reply(unique, 0); // (an empty listing: the test opens the file by name)
      return true;
    case OP.RELEASE:
    case OP.RELEASEDIR:
    case OP.FLUSH:
    case OP.ACCESS:
      reply(unique, 0);
      return true;
    case OP.FORGET:
    case OP.BATCH_FORGET:
    case OP.INTERRUPT:
      return true; // no reply
    case OP.DESTROY:
      reply(unique, 0);
      return false;
    default:
      reply(unique, ERRNO.ENOSYS);
      return true;
  }
}

const buffer = new Uint8Array(MAX_WRITE + 64 * 1024);
let stopped = false;

function loop(): void {
  read(fuse, buffer, 0, buffer.length, null, (err, n) => {
    if (stopped) return;
    if (err) {
      if (err.code === 'EINTR' || err.code === 'EAGAIN' || err.code === 'ENOENT') return loop(); // ENOENT: an interrupted request
      return shutdown(0); // ENODEV: unmounted
    }
    if (!handle(buffer.subarray(0, n))) return shutdown(0);
    loop();
  });
}

function shutdown(code: number): void {
  if (stopped) return;
  stopped = true;
  spawnSync('umount', ['-l', mountpoint!], { stdio: 'ignore' });
  try {
    closeSync(fuse);
  } catch {
    // already closed
  }
  process.exit(code);
}

loop();
process.stdout.write('ready\n');

const lines = createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const cmd = JSON.parse(line) as { failRead?: [number, number][]; failWrite?: [number, number][]; writeErrno?: ErrnoName; failFsync?: boolean };
  if (cmd.failRead) failRead = cmd.failRead;
  if (cmd.failWrite) failWrite = cmd.failWrite;
  if (cmd.writeErrno) writeErrno = cmd.writeErrno;
  if (cmd.failFsync !== undefined) failFsync = cmd.failFsync;
  process.stdout.write('ok\n');
});
lines.on('close', () => shutdown(0));
process.on('SIGTERM', () => shutdown(0));
