// RawFile's inline-first I/O: page-cache-hot reads go through preadv2(RWF_NOWAIT) on the calling
// thread, what would block (EAGAIN, the rest of a short transfer) finishes on the thread pool, a
// file system that refuses RWF_NOWAIT is remembered, bytes land exactly across many segments of
// SharedArrayBuffer, koffi-mapped and ordinary memory, and host errors still end as IOERR.
import { closeSync, fdatasyncSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { BlockDevice } from '../../devices/block.ts';
import { VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from '../../devices/block-request.ts';
import { RawFile, type VectorIo } from '../../framework/io/raw-file.ts';
import { NativeError, errnoNumber } from '../../native/errors.ts';
import {
  IOV_MAX, IovecArray, MAP_ANONYMOUS, MAP_PRIVATE, POSIX_FADV_DONTNEED, PROT_READ, PROT_WRITE, fadvise, mmap, munmap,
  preadv2, pwritev2, view,
} from '../../native/libc.ts';
import { DeviceHarness } from '../support/device-harness.ts';

const dir = mkdtempSync(join(tmpdir(), 'rxvirt-rawfile-'));
const SIZE = 256 << 10;

let images = 0;
/** A fresh image with distinguishable bytes; its pages are hot (just written). */
function makeImage(size = SIZE): { path: string; bytes: Uint8Array } {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 7 + (i >> 12) * 13) & 0xff;
  const path = join(dir, `img${images++}`);
  writeFileSync(path, bytes);
  return { path, bytes };
}

/** Views of `sizes` bytes each, carved alternately from a SharedArrayBuffer, koffi-mapped memory and an ArrayBuffer. */
function scatteredViews(sizes: number[]): Uint8Array[] {
  const total = sizes.reduce((a, b) => a + b, 0) + 64 * sizes.length;
  const shared = new Uint8Array(new SharedArrayBuffer(total));
  const mapped = new Uint8Array(view(mappedAt(total), total));
  const plain = new Uint8Array(total);
  const pools = [shared, mapped, plain];
  const offsets = [5, 3, 1]; // odd offsets: nothing relies on alignment
  return sizes.map((n, i) => {
    const k = i % 3;
    const v = pools[k]!.subarray(offsets[k]!, offsets[k]! + n);
    offsets[k]! += n + 17;
    return v;
  });
}

const mappings: [bigint, number][] = [];
function mappedAt(length: number): bigint {
  const p = mmap(length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  mappings.push([p, length]);
  return p;
}

function concat(views: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(views.reduce((a, v) => a + v.byteLength, 0));
  let at = 0;
  for (const v of views) { out.set(v, at); at += v.byteLength; }
  return out;
}

/** Equal bytes, or a failure naming the first difference (uvu's diff of large arrays takes minutes). */
function assertBytes(actual: Uint8Array | undefined, expected: Uint8Array, what = 'bytes'): void {
  assert.ok(actual !== undefined, what);
  assert.is(actual!.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    if (actual![i] !== expected[i]) assert.unreachable(`${what}: byte ${i} is ${actual![i]}, expected ${expected[i]}`);
  }
}

/** libc's calls, counted; `read`/`write` replace them when set. */
function countingIo() {
  const io = {
    reads: 0,
    writes: 0,
    read: null as VectorIo['preadv2'] | null,
    write: null as VectorIo['pwritev2'] | null,
    preadv2: ((...a) => { io.reads++; return (io.read ?? preadv2)(...a); }) as VectorIo['preadv2'],
    pwritev2: ((...a) => { io.writes++; return (io.write ?? pwritev2)(...a); }) as VectorIo['pwritev2'],
  };
  return io;
}
/** A file system that does RWF_NOWAIT writes (XFS, btrfs): what ext4 and tmpfs refuse, done as a plain pwritev2. */
const nowaitWrites: VectorIo['pwritev2'] = (fd, iov, count, offset, _flags, context) => pwritev2(fd, iov, count, offset, 0, context);
const fail = (code: string) => () => { throw new NativeError(errnoNumber(code), 'injected'); };

test('a page-cache-hot 4 KiB read completes inline, on the calling thread, and is exact', async () => {
  const { path, bytes } = makeImage();
  const file = RawFile.open(path, { readOnly: true });
  const [v] = scatteredViews([4096]);
  const p = file.read([v!], 8192);
  assert.equal(file.stats, { inline: 1, pooled: 0 }, 'served before read() returned');
  await p;
  assertBytes(v, bytes.subarray(8192, 8192 + 4096));
  file.close();
});

test('multi-segment reads are byte-exact over shared, mapped and plain memory, also beyond IOV_MAX segments', async () => {
  const { path, bytes } = makeImage();
  const file = RawFile.open(path, { inlineMaxBytes: Infinity });
  const sizes = [1, 511, 4096, 3000, 7, 512, 65536, 2];
  const views = scatteredViews(sizes);
  await file.read(views, 1234);
  assertBytes(concat(views), bytes.subarray(1234, 1234 + 73665));
  const many = scatteredViews(Array.from({ length: IOV_MAX + 300 }, (_, i) => 1 + (i % 97)));
  await file.read(many, 99);
  const got = concat(many);
  assertBytes(got, bytes.subarray(99, 99 + got.length));
  assert.equal(file.stats, { inline: 2, pooled: 0 });
  file.close();
});

test('multi-segment writes are byte-exact, inline where the file system does RWF_NOWAIT writes', async () => {
  const { path, bytes } = makeImage();
  const io = countingIo();
  io.write = nowaitWrites;
  const file = RawFile.open(path, { io });
  const views = scatteredViews([3, 4096, 509, 12000, 1]);
  let seed = 1;
  for (const v of views) for (let i = 0; i < v.length; i++) v[i] = (seed = (seed * 1103515245 + 12345) >>> 0) >>> 24;
  const p = file.write(views, 777);
  assert.equal(file.stats, { inline: 1, pooled: 0 });
  await p;
  const data = concat(views);
  bytes.set(data, 777);
  assertBytes(new Uint8Array(readFileSync(path)), bytes);
  file.close();
});

test('writes where the kernel decides: exact whichever path, and a refusal is asked once per file', async () => {
  const { path, bytes } = makeImage();
  const io = countingIo();
  const file = RawFile.open(path, { io });
  for (let k = 0; k < 3; k++) {
    const views = scatteredViews([100, 4096 - 100]);
    views[0]!.fill(k + 1);
    views[1]!.fill(k + 0x40);
    await file.write(views, k * 4096);
    bytes.fill(k + 1, k * 4096, k * 4096 + 100);
    bytes.fill(k + 0x40, k * 4096 + 100, (k + 1) * 4096);
  }
  assertBytes(new Uint8Array(readFileSync(path)), bytes);
  assert.is(file.stats.inline + file.stats.pooled, 3);
  // ext4 and tmpfs (Linux 6.x) refuse buffered RWF_NOWAIT writes: then one probe and no more.
  if (file.stats.pooled > 0) assert.is(io.writes, 1, 'asked again after EOPNOTSUPP');
  else assert.is(io.writes, 3);
  file.close();
});

test('EOPNOTSUPP or EINVAL for RWF_NOWAIT: that direction moves to the pool for good, the other stays inline', async () => {
  for (const code of ['EOPNOTSUPP', 'EINVAL']) {
    const { path, bytes } = makeImage();
    const io = countingIo();
    io.read = fail(code);
    io.write = nowaitWrites;
    const file = RawFile.open(path, { io });
    for (let k = 0; k < 3; k++) {
      const [v] = scatteredViews([4096]);
      await file.read([v!], k * 4096);
      assertBytes(v, bytes.subarray(k * 4096, (k + 1) * 4096), `${code} read ${k}`);
    }
    assert.is(io.reads, 1, `${code}: asked again`);
    const [w] = scatteredViews([512]);
    w!.fill(0xab);
    await file.write([w!], 0);
    assert.is(io.writes, 1);
    assert.equal(file.stats, { inline: 1, pooled: 3 }, code);
    assertBytes(new Uint8Array(readFileSync(path)).subarray(0, 512), w);
    file.close();
  }
});

test('EAGAIN (injected): the request finishes on the pool, and the next one tries inline again', async () => {
  const { path, bytes } = makeImage();
  const io = countingIo();
  io.read = () => null;
  const file = RawFile.open(path, { io });
  const views = scatteredViews([1000, 3096]);
  await file.read(views, 4096);
  assertBytes(concat(views), bytes.subarray(4096, 8192));
  io.read = null;
  await file.read(views, 0);
  assertBytes(concat(views), bytes.subarray(0, 4096));
  assert.is(io.reads, 2);
  assert.equal(file.stats, { inline: 1, pooled: 1 });
  file.close();
});

test('a page-cache miss (real EAGAIN) and a partly cached range (real short read) finish exactly on the pool', async () => {
  const { path, bytes } = makeImage(1 << 20);
  const fd = openSync(path, 'r');
  fdatasyncSync(fd); // clean pages can be dropped
  const io = countingIo();
  const results: (number | null)[] = [];
  io.read = (...a) => { const n = preadv2(...a); results.push(n); return n; };
  const file = RawFile.open(path, { readOnly: true, io, inlineMaxBytes: Infinity });
  try {
    fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    const cold = scatteredViews([4096, 4096]);
    await file.read(cold, 65536);
    assertBytes(concat(cold), bytes.subarray(65536, 65536 + 8192));
    assert.equal(results, [null], 'the kernel said EAGAIN');
    assert.equal(file.stats, { inline: 0, pooled: 1 }, 'a cold read did not block the caller');
    await file.read(cold, 65536); // the pool's read left it hot
    assert.equal(file.stats, { inline: 1, pooled: 1 });

    // Keep 64 KiB hot, drop what follows: a read across the edge gets the hot part inline, the rest pooled.
    fadvise(fd, 65536 + 65536, 0, POSIX_FADV_DONTNEED);
    const span = scatteredViews([3000, 62536 + 1096, 8192]);
    await file.read(span, 65536 + 4096);
    assertBytes(concat(span), bytes.subarray(65536 + 4096, 65536 + 4096 + 74824));
    const partial = results[2];
    assert.ok(partial !== null && partial! > 0 && partial! < 74824, `inline part: ${partial}`);
    assert.equal(file.stats, { inline: 1, pooled: 2 });
  } finally {
    closeSync(fd);
    file.close();
  }
});

test('a short first batch of a request over IOV_MAX segments: nothing after it is tried inline', async () => {
  const { path, bytes } = makeImage();
  const views = scatteredViews(Array.from({ length: IOV_MAX + 10 }, () => 64));
  const io = countingIo();
  io.read = (...a) => { const n = preadv2(...a); return n === null ? null : n - 100; };
  const file = RawFile.open(path, { io, inlineMaxBytes: Infinity });
  await file.read(views, 512);
  assertBytes(concat(views), bytes.subarray(512, 512 + 64 * (IOV_MAX + 10)));
  assert.is(io.reads, 1);
  assert.equal(file.stats, { inline: 0, pooled: 1 });
  file.close();
});

test('a short inline transfer: the rest, inside a segment, is finished on the pool', async () => {
  const { path, bytes } = makeImage();
  const views = scatteredViews([1000, 5000, 100]);
  const io = countingIo();
  // Really read everything, then claim 2500 bytes and spoil the bytes past them: the pool must redo exactly those.
  io.read = (...a) => {
    preadv2(...a);
    let skip = 2500;
    for (const v of views) { v.subarray(Math.min(skip, v.length)).fill(0xee); skip = Math.max(0, skip - v.length); }
    return 2500;
  };
  io.write = (fd, iov, count, offset, _f, context) => {
    pwritev2(fd, iov, count, offset, 0, context);
    writeSync(fd, new Uint8Array(3600).fill(0xee), 0, 3600, offset + 2500); // what "was not written yet"
    return 2500;
  };
  const file = RawFile.open(path, { io });
  await file.read(views, 3333);
  assertBytes(concat(views), bytes.subarray(3333, 3333 + 6100));
  for (const v of views) v.fill(0x5c);
  await file.write(views, 10000);
  bytes.fill(0x5c, 10000, 16100);
  assertBytes(new Uint8Array(readFileSync(path)), bytes);
  assert.equal(file.stats, { inline: 0, pooled: 2 });
  file.close();
});

test('requests over inlineMaxBytes (default 64 KiB) go to the pool, whose threads copy without stalling the loop', async () => {
  const { path, bytes } = makeImage();
  const file = RawFile.open(path, { readOnly: true });
  const big = scatteredViews([65536, 512]);
  await file.read(big, 0);
  assertBytes(concat(big), bytes.subarray(0, 65536 + 512));
  const small = scatteredViews([65536]);
  await file.read(small, 0);
  assert.equal(file.stats, { inline: 1, pooled: 1 });
  file.close();
});

test('inline: false keeps every request on the thread pool', async () => {
  const { path, bytes } = makeImage();
  const file = RawFile.open(path, { inline: false });
  const [v] = scatteredViews([4096]);
  await file.read([v!], 0);
  await file.write([v!], 4096);
  assert.equal(file.stats, { inline: 0, pooled: 2 });
  assertBytes(new Uint8Array(readFileSync(path)).subarray(4096, 8192), bytes.subarray(0, 4096));
  file.close();
});

test('a read past the end of the file still fails with EIO after the inline part', async () => {
  const { path } = makeImage(4096);
  const file = RawFile.open(path);
  const [v] = scatteredViews([8192]);
  const err = await file.read([v!], 0).then(() => null, (e: unknown) => e);
  assert.is((err as { code?: string } | null)?.code, 'EIO');
  assert.is(file.stats.pooled, 1);
  file.close();
});

test('inline EIO on read and ENOSPC on write end as IOERR on the device, counted', async () => {
  const { path } = makeImage(64 << 10);
  const io = countingIo();
  io.read = fail('EIO');
  io.write = fail('ENOSPC');
  const device = new BlockDevice(RawFile.open(path, { io }));
  const h = new DeviceHarness(device);
  const header = (type: number, sector: number) => {
    const b = new Uint8Array(16);
    new DataView(b.buffer).setUint32(0, type, true);
    new DataView(b.buffer).setUint32(8, sector, true);
    return b;
  };
  h.submit(0, [{ data: header(VIRTIO_BLK_T_IN, 8) }, { writableLen: 4096 }, { writableLen: 1 }]);
  const [r] = await h.waitUsed(0, 1);
  assert.is(r!.writable[4096], VIRTIO_BLK_S_IOERR);
  h.submit(0, [{ data: header(VIRTIO_BLK_T_OUT, 8) }, { data: new Uint8Array(4096) }, { writableLen: 1 }]);
  const [w] = await h.waitUsed(0, 1);
  assert.is(w!.writable[0], VIRTIO_BLK_S_IOERR);
  assert.is(device.stats.ioErrors, 2);
  io.read = null; // the disk recovered: the same device reads fine again
  h.submit(0, [{ data: header(VIRTIO_BLK_T_IN, 8) }, { writableLen: 4096 }, { writableLen: 1 }]);
  const [ok] = await h.waitUsed(0, 1);
  assert.is(ok!.writable[4096], VIRTIO_BLK_S_OK);
  device.close();
});

test('IovecArray: entries hold each view\'s host address and length; refuses more than its capacity', () => {
  const iov = new IovecArray(2);
  const shared = new Uint8Array(new SharedArrayBuffer(64), 8, 40);
  assert.is(iov.set(0, shared.subarray(3, 10)), 7);
  assert.is(iov.set(1, new Uint8Array(0)), 0);
  assert.throws(() => iov.set(2, shared), /entry 2 of 2/);
  assert.throws(() => new IovecArray(IOV_MAX + 1), RangeError);
  assert.throws(() => preadv2(0, iov, 3, 0, 0), /3 entries of 2/);
});

test.after(() => {
  for (const [p, n] of mappings) munmap(p, n);
  rmSync(dir, { recursive: true, force: true });
});

test.run();
