// MemoryTable.map on its own: regions larger than one zero-copy view can hold (QEMU with
// -m 8G sends a 6 GiB region) become several GuestRegions of at most 4 GiB over one mmap,
// a guest buffer across such a boundary reaches the file through two views, and nothing
// stays mapped when a table is refused. Sparse memfds: no test touches more than a few pages.
import { closeSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { SplitQueue } from '../../framework/virtio/split-queue.ts';
import { VirtqueueError } from '../../framework/virtio/descriptor-chain.ts';
import { VIRTQ_DESC_F_WRITE } from '../../framework/virtio/ring-layout.ts';
import * as libc from '../../native/libc.ts';
import { MemoryTable } from '../../transports/vhost-user/memory-table.ts';
import { VhostUserProtocolError } from '../../transports/vhost-user/protocol.ts';
import { DriverQueue } from '../support/driver-queue.ts';

const GiB = 2 ** 30;
const USER = 0x7000_0000_0000n;

/** A sparse memfd of `size` bytes named `name` (visible in /proc/self/maps while mapped). */
function sparseMemfd(name: string, size: number): number {
  const fd = libc.memfdCreate(name, libc.MFD_CLOEXEC);
  libc.ftruncate(fd, size);
  return fd;
}

const mappingsOf = (name: string) =>
  readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes(`/memfd:${name} `)).length;

/** QEMU's x86 layout for -m 8G: [0, 2G) at file offset 0, then [4G, 10G) at file offset 2G. */
function qemu8G(fd: number): MemoryTable {
  return MemoryTable.map([
    { guestAddress: 0n, size: BigInt(2 * GiB), userAddress: USER, mmapOffset: 0n },
    { guestAddress: BigInt(4 * GiB), size: BigInt(6 * GiB), userAddress: USER + BigInt(2 * GiB), mmapOffset: BigInt(2 * GiB) },
  ], [fd, fd]);
}

test('a 6 GiB region maps once, as guest regions of at most 4 GiB split at 4 GiB boundaries', () => {
  const fd = sparseMemfd('rxvirt-mt-6g', 8 * GiB);
  try {
    const table = qemu8G(fd);
    try {
      assert.is(table.regionCount, 2, 'front-end regions');
      assert.is(mappingsOf('rxvirt-mt-6g'), 2, 'one mmap per front-end region');
      const regions = table.guest.regions;
      assert.equal(regions.map((r) => [r.base / GiB, r.size / GiB]), [[0, 2], [4, 4], [8, 2]]);
      for (const r of regions) assert.is(r.bytes.length, r.size);
      assert.is(regions[2]!.hostAddress! - regions[1]!.hostAddress!, BigInt(4 * GiB), 'pieces of one mapping');
      // guest bytes on both sides of the 8 GiB boundary are file bytes at offset 2G + (gpa - 4G)
      const views = table.guest.slices(8 * GiB - 4, 8, true);
      assert.equal(views.map((v) => v.length), [4, 4]);
      views[0]!.set([1, 2, 3, 4]);
      views[1]!.set([5, 6, 7, 8]);
      const file = new Uint8Array(8);
      readSync(fd, file, 0, 8, 6 * GiB - 4);
      assert.equal([...file], [1, 2, 3, 4, 5, 6, 7, 8]);
      writeSync(fd, Uint8Array.of(0xab), 0, 1, 8 * GiB - 1); // last byte of the file = last guest byte
      assert.is(table.guest.readU8(10 * GiB - 1), 0xab);
      // front-end addresses still translate over the whole region
      assert.is(table.translate(USER + BigInt(2 * GiB) + BigInt(5 * GiB), 16), 9 * GiB);
    } finally {
      table.unmap();
    }
    assert.is(mappingsOf('rxvirt-mt-6g'), 0, 'unmap releases every mapping');
  } finally {
    libc.close(fd);
  }
});

test('a descriptor buffer across the 8 GiB piece boundary is served as two views', () => {
  const fd = sparseMemfd('rxvirt-mt-desc', 8 * GiB);
  try {
    const table = qemu8G(fd);
    try {
      const mem = table.guest;
      const drv = new DriverQueue(mem, { size: 16, base: 0x10000, dataEnd: 0x20000 });
      const q = new SplitQueue(mem, drv.config());
      drv.writeDescriptor(0, { addr: 8 * GiB - 3, len: 6, flags: VIRTQ_DESC_F_WRITE, next: 0 });
      drv.offer(0);
      const chain = q.pop()!;
      assert.equal(chain.writable.map((v) => v.length), [3, 3]);
      chain.writer().write(Uint8Array.of(10, 11, 12, 13, 14, 15));
      const file = new Uint8Array(6);
      readSync(fd, file, 0, 6, 6 * GiB - 3);
      assert.equal([...file], [10, 11, 12, 13, 14, 15]);
      // the hole between 2 GiB and 4 GiB is not memory, even between two regions of one file
      drv.writeDescriptor(1, { addr: 2 * GiB - 4, len: 8, flags: VIRTQ_DESC_F_WRITE, next: 0 });
      drv.offer(1);
      assert.throws(() => q.pop(), (err: unknown) => err instanceof VirtqueueError && err.reason === 'buffer out of memory');
    } finally {
      table.unmap();
    }
  } finally {
    libc.close(fd);
  }
});

test('a refused table leaves nothing mapped, even after earlier regions were mapped', () => {
  const fd = sparseMemfd('rxvirt-mt-refused', 8 * GiB);
  try {
    const notMemory = openSync('/dev/null', 'r');
    const err = (() => {
      try {
        MemoryTable.map([
          { guestAddress: 0n, size: BigInt(6 * GiB), userAddress: USER, mmapOffset: 0n },
          { guestAddress: BigInt(8 * GiB), size: 4096n, userAddress: USER + BigInt(8 * GiB), mmapOffset: 0n },
        ], [fd, notMemory]);
      } catch (e) {
        return e;
      }
      return null;
    })();
    closeSync(notMemory);
    assert.instance(err, VhostUserProtocolError);
    assert.is(mappingsOf('rxvirt-mt-refused'), 0);
  } finally {
    libc.close(fd);
  }
});

test.run();
