// The FDT writer: blobs parse back to the tree that was written, the header and block layout
// follow the specification, dtc reads our blobs exactly as it reads the same tree from source,
// the writer refuses trees the specification forbids, and the reader survives hostile blobs.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { FDT_MAGIC, FdtError, HEADER } from '../../framework/fdt/fdt-format.ts';
import { parseFdt, fdtTotalSize } from '../../framework/fdt/fdt-reader.ts';
import { fdtStringList, fdtU32, fdtU64, readCells } from '../../framework/fdt/fdt-values.ts';
import { FdtWriter } from '../../framework/fdt/fdt-writer.ts';
import { seeded } from '../support/prng.ts';
import { canonicalize, decompile, dtcAvailable } from './support/dtc.ts';

/** A small tree using every kind of value, and its dts source. */
function sample(): { blob: Uint8Array; dts: string } {
  const w = new FdtWriter({ reservations: [{ address: 0x8800_0000, size: 0x10_0000 }], bootCpuidPhys: 0 });
  w.beginNode('');
  w.propertyString('compatible', 'acme,board');
  w.propertyU32('#address-cells', 2);
  w.propertyU32('#size-cells', 2);
  w.beginNode('chosen');
  w.propertyString('bootargs', 'console=hvc0 root=/dev/vda');
  w.propertyU64('linux,initrd-start', 0x1_2345_6000n);
  w.endNode();
  w.beginNode('soc@0');
  w.propertyStrings('compatible', ['acme,soc', 'simple-bus']);
  w.propertyEmpty('ranges');
  w.propertyU32('#address-cells', 2);
  w.propertyU32('#size-cells', 2);
  w.beginNode('dev@a000000');
  w.propertyU64('reg', 0xa00_0000, 0x200);
  w.property('raw', Uint8Array.of(1, 2, 3));
  w.endNode();
  w.endNode();
  w.endNode();
  const dts = `/dts-v1/;
/memreserve/ 0x88000000 0x100000;
/ {
  compatible = "acme,board";
  #address-cells = <2>;
  #size-cells = <2>;
  chosen {
    bootargs = "console=hvc0 root=/dev/vda";
    linux,initrd-start = <0x1 0x23456000>;
  };
  soc@0 {
    compatible = "acme,soc", "simple-bus";
    ranges;
    #address-cells = <2>;
    #size-cells = <2>;
    dev@a000000 {
      reg = <0x0 0xa000000 0x0 0x200>;
      raw = [01 02 03];
    };
  };
};
`;
  return { blob: w.finish(), dts };
}

test('a written tree parses back node by node, property by property', () => {
  const { blob } = sample();
  const tree = parseFdt(blob);
  assert.is(tree.version, 17);
  assert.is(tree.lastCompVersion, 16);
  assert.equal(tree.reservations, [{ address: 0x8800_0000n, size: 0x10_0000n }]);
  const root = tree.root;
  assert.equal(root.children.map((c) => c.name), ['chosen', 'soc@0']);
  assert.is(root.string('compatible'), 'acme,board');
  assert.is(root.u32('#address-cells'), 2);
  assert.is(root.find('chosen')!.string('bootargs'), 'console=hvc0 root=/dev/vda');
  assert.equal(root.find('chosen')!.cells('linux,initrd-start'), [0x1, 0x2345_6000]);
  assert.equal(root.find('soc@0')!.strings('compatible'), ['acme,soc', 'simple-bus']);
  assert.is(root.find('soc@0')!.properties.get('ranges')!.length, 0);
  const dev = root.find('soc@0/dev@a000000')!;
  assert.is(dev.path, '/soc@0/dev@a000000');
  assert.equal(dev.cells('reg'), [0, 0xa00_0000, 0, 0x200]);
  assert.equal([...dev.properties.get('raw')!], [1, 2, 3]);
});

test('header and blocks follow the v17 layout: aligned blocks in order, exact sizes, shared names', () => {
  const { blob } = sample();
  const v = new DataView(blob.buffer, blob.byteOffset, blob.byteLength);
  const h = (f: number) => v.getUint32(f, false);
  assert.is(h(HEADER.magic), FDT_MAGIC);
  assert.is(h(HEADER.totalsize), blob.length);
  assert.is(fdtTotalSize(blob), blob.length);
  assert.is(h(HEADER.offMemRsvmap) % 8, 0);
  assert.is(h(HEADER.offDtStruct) % 4, 0);
  assert.is(h(HEADER.offDtStruct), h(HEADER.offMemRsvmap) + 2 * 16, 'one reservation plus the terminator');
  assert.is(h(HEADER.offDtStrings), h(HEADER.offDtStruct) + h(HEADER.sizeDtStruct));
  assert.is(h(HEADER.offDtStrings) + h(HEADER.sizeDtStrings), blob.length);
  // Each distinct property name once: compatible, #address-cells, #size-cells, bootargs,
  // linux,initrd-start, ranges, reg, raw.
  const names = ['compatible', '#address-cells', '#size-cells', 'bootargs', 'linux,initrd-start', 'ranges', 'reg', 'raw'];
  assert.is(h(HEADER.sizeDtStrings), names.reduce((n, s) => n + s.length + 1, 0));
  // The struct block ends with FDT_END.
  assert.is(v.getUint32(h(HEADER.offDtStruct) + h(HEADER.sizeDtStruct) - 4, false), 9);
});

test('dtc decompiles our blob to exactly what it makes of the same tree written as source', () => {
  if (!dtcAvailable()) {
    console.log('SKIP: dtc not installed (Debian package device-tree-compiler)');
    return;
  }
  const { blob, dts } = sample();
  const ours = decompile(blob);
  const theirs = canonicalize(dts);
  assert.is(ours.status, 0, ours.messages.join('\n'));
  assert.is(theirs.status, 0, theirs.messages.join('\n'));
  assert.is(ours.dts, theirs.dts);
  assert.equal(ours.messages, theirs.messages, 'no warning of ours that the source does not also get');
});

test('values: cells are big-endian, u64 is two cells high first, string lists are NUL-separated', () => {
  assert.equal([...fdtU32(1, 0xdeadbeef)], [0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef]);
  assert.equal([...fdtU64(0x1_0000_0002)], [0, 0, 0, 1, 0, 0, 0, 2]);
  assert.equal([...fdtU64(0xffff_ffff_ffff_ffffn)], [255, 255, 255, 255, 255, 255, 255, 255]);
  assert.equal([...fdtStringList(['ab', 'c'])], [97, 98, 0, 99, 0]);
  assert.equal(readCells(fdtU32(7, 8)), [7, 8]);
  assert.is(readCells(Uint8Array.of(1, 2, 3)), null);
  for (const bad of [() => fdtU32(-1), () => fdtU32(2 ** 32), () => fdtU32(1.5), () => fdtU64(-1), () => fdtU64(1n << 64n),
    () => fdtU64(2 ** 53), () => fdtStringList(['a\0b'])]) {
    assert.throws(bad, (e: unknown) => e instanceof FdtError && e.code === 'EINVAL');
  }
});

/** Runs `build` on a fresh writer (root already open) and expects an FdtError matching `message`. */
function refuses(build: (w: FdtWriter) => void, message: RegExp): void {
  const w = new FdtWriter();
  w.beginNode('');
  assert.throws(() => build(w), (e: unknown) => e instanceof FdtError && e.code === 'EINVAL' && message.test(e.message),
    `expected FdtError ${message}`);
}

test('the writer refuses what the specification forbids, naming the node', () => {
  refuses((w) => w.beginNode('bad name'), /\/bad name: node name .* characters/);
  refuses((w) => w.beginNode('x'.repeat(32)), /longer than 31/);
  refuses((w) => w.beginNode('dev@'), /unit address/);
  refuses((w) => w.beginNode('@10'), /empty node name/);
  refuses((w) => w.property('bad/name'), /property name 'bad\/name'/);
  refuses((w) => w.property('p'.repeat(32)), /longer than 31/);
  refuses((w) => { w.propertyU32('a', 1); w.propertyU32('a', 2); }, /duplicate property 'a'/);
  refuses((w) => { w.beginNode('n'); w.endNode(); w.beginNode('n'); }, /\/n: duplicate node/);
  refuses((w) => { w.beginNode('n'); w.endNode(); w.propertyU32('late', 1); }, /\/: property 'late' after a subnode/);
  refuses((w) => w.finish(), /node \/ not closed/);
  refuses((w) => { w.endNode(); w.beginNode('second-root'); }, /after the root node was closed/);
  refuses((w) => { w.endNode(); w.endNode(); }, /endNode without an open node/);
  assert.throws(() => new FdtWriter().beginNode('notroot'), /first node must be the root/);
  assert.throws(() => new FdtWriter().finish(), /no root node/);
  assert.throws(() => new FdtWriter().propertyU32('x', 1), /outside any node/);
  const w = new FdtWriter();
  w.beginNode('');
  w.endNode();
  w.finish();
  assert.throws(() => w.finish(), /already finished/);
});

test('sibling nodes may share a base name with different unit addresses; names of 31 characters are fine', () => {
  const w = new FdtWriter();
  w.beginNode('');
  w.beginNode('cpu@0');
  w.endNode();
  w.beginNode('cpu@1');
  w.endNode();
  w.beginNode('n'.repeat(31));
  w.propertyEmpty('p'.repeat(31));
  w.endNode();
  w.endNode();
  const tree = parseFdt(w.finish());
  assert.equal(tree.root.children.map((c) => c.name), ['cpu@0', 'cpu@1', 'n'.repeat(31)]);
});

test('the reader refuses truncated and corrupted blobs with FdtError, and nothing else', () => {
  const { blob } = sample();
  for (let len = 0; len < blob.length; len++) {
    assert.throws(() => parseFdt(blob.subarray(0, len)), (e: unknown) => e instanceof FdtError, `truncated to ${len}`);
  }
  const badMagic = blob.slice();
  badMagic[0] = 0;
  assert.throws(() => parseFdt(badMagic), /bad magic/);
  const future = blob.slice();
  new DataView(future.buffer).setUint32(HEADER.lastCompVersion, 18, false);
  assert.throws(() => parseFdt(future), /not readable/);
  seeded((rng) => {
    let parsed = 0;
    for (let i = 0; i < 3000; i++) {
      const copy = blob.slice();
      for (let flips = rng.int(1, 4); flips > 0; flips--) copy[rng.int(copy.length)] = rng.u32() & 0xff;
      try {
        parseFdt(copy);
        parsed++;
      } catch (e) {
        if (!(e instanceof FdtError)) throw new Error(`corrupted blob raised ${String(e)}`);
      }
    }
    assert.ok(parsed > 0, 'some corruptions (inside values) still parse');
  });
});

test('free space after the blob is allowed (the DTB region is larger than the tree)', () => {
  const { blob } = sample();
  const region = new Uint8Array(blob.length + 4096);
  region.set(blob);
  assert.is(parseFdt(region).totalSize, blob.length);
});

test.run();
