// The .xz decoder the x86 loader uses for bzImage payloads: output equal to what the host's xz
// compressed (every check type, the x86 BCJ filter, several blocks, concatenated streams), the
// real guest kernel's payload equal to its vmlinux, and corrupt or unsupported input refused
// with an XzError naming the problem (never another exception, never a hang).
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { findGuestImage } from '../../cli/guest-image/guest-image.ts';
import { parseSetupHeader } from '../../framework/vm/boot/bzimage.ts';
import { crc32, crc64 } from '../../framework/vm/boot/xz/checksums.ts';
import { decompressXz, XzError } from '../../framework/vm/boot/xz/xz.ts';
import { chooseSeed, Prng } from '../support/prng.ts';

const hasXz = (() => {
  try {
    execFileSync('xz', ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();
if (!hasXz) console.log('SKIP (host xz tests): xz not installed');
const xzTest = hasXz ? test : test.skip;

function xz(data: Uint8Array, args: string[]): Uint8Array {
  return new Uint8Array(execFileSync('xz', ['-z', '-c', ...args], { input: data, maxBuffer: 1 << 28 }));
}

const seed = chooseSeed();
const prng = new Prng(seed);

/** Compressible bytes: words from a small vocabulary with random runs, like text or code. */
function sample(size: number): Uint8Array {
  const words = Array.from({ length: 64 }, () => Buffer.from(Array.from({ length: prng.int(1, 12) }, () => prng.int(32, 126))));
  const out = Buffer.alloc(size);
  let at = 0;
  while (at < size) {
    const w = prng.int(10) === 0 ? Buffer.from(prng.bytes(8)) : prng.pick(words);
    at += w.copy(out, at);
  }
  return out;
}

/** Bytes shaped like x86 code: CALL/JMP rel32 (E8/E9) with small signed targets among other bytes. */
function x86Like(size: number): Uint8Array {
  const out = new Uint8Array(size);
  for (let i = 0; i < size;) {
    if (prng.int(4) === 0 && i + 5 <= size) {
      out[i] = prng.chance(0.5) ? 0xe8 : 0xe9;
      const rel = prng.int(-0x100000, 0x100000);
      new DataView(out.buffer).setInt32(i + 1, rel, true);
      i += 5;
    } else {
      out[i++] = prng.pick([0x48, 0x89, 0x8b, 0xc3, 0x0f, 0x00, 0xff, 0x55]);
    }
  }
  return out;
}

test('crc32 and crc64 match their check values for "123456789"', () => {
  const input = Buffer.from('123456789');
  assert.is(crc32(input), 0xcbf43926);
  assert.is(crc64(input), 0x995dc9bbdf1939fan);
});

xzTest('every integrity check type, and the raw sizes in between, decode to the original', () => {
  for (const check of ['none', 'crc32', 'crc64', 'sha256']) {
    for (const size of [0, 1, 100, 70_000]) {
      const data = sample(size);
      const { data: out, trailing } = decompressXz(xz(data, [`--check=${check}`]));
      assert.ok(Buffer.from(out).equals(Buffer.from(data)), `check ${check}, ${size} bytes (seed ${seed})`);
      assert.is(trailing.length, 0);
    }
  }
});

xzTest('the x86 BCJ filter, as Linux compresses x86 kernels, is undone', () => {
  const data = x86Like(300_000);
  const compressed = xz(data, ['--check=crc32', '--x86', '--lzma2=preset=6,dict=1MiB']);
  assert.ok(Buffer.from(decompressXz(compressed).data).equals(Buffer.from(data)), `seed ${seed}`);
});

xzTest('several blocks, stored (incompressible) chunks, concatenated streams and stream padding', () => {
  const random = prng.bytes(200_000);
  const text = sample(500_000);
  const a = xz(Buffer.concat([text, random]), ['--block-size=65536', '--check=crc64']);
  const b = xz(text.subarray(0, 1000), ['--check=crc32']);
  const joined = Buffer.concat([a, Buffer.alloc(8), b]);
  const { data, trailing } = decompressXz(joined);
  assert.ok(Buffer.from(data).equals(Buffer.concat([text, random, text.subarray(0, 1000)])), `seed ${seed}`);
  assert.is(trailing.length, 0);
});

xzTest('bytes after the last stream are returned, not decoded (a bzImage keeps its size there)', () => {
  const data = sample(5000);
  const { data: out, trailing } = decompressXz(Buffer.concat([xz(data, []), Buffer.from([1, 2, 3, 4])]));
  assert.ok(Buffer.from(out).equals(Buffer.from(data)));
  assert.equal([...trailing], [1, 2, 3, 4]);
});

xzTest('other filters and corrupt data are refused with a one-line XzError', () => {
  const data = sample(20_000);
  const cases: [string, Uint8Array, RegExp][] = [
    ['ARM BCJ', xz(data, ['--arm', '--lzma2=preset=1']), /ARM BCJ filter/],
    ['delta', xz(data, ['--delta=dist=2', '--lzma2=preset=1']), /delta filter/],
    ['not xz', Buffer.from('hello world, not xz at all'), /not \.xz data/],
  ];
  const good = xz(data, ['--check=crc32']);
  cases.push(['truncated', good.subarray(0, good.length - 20), /truncated|end marker|past the end|needs more/]);
  const flipped = Uint8Array.from(good);
  flipped[flipped.length >> 1] ^= 0x55;
  cases.push(['a flipped byte', flipped, /corrupt|integrity|LZMA2|index|mismatch|dictionary|match/]);
  for (const [what, input, message] of cases) {
    try {
      decompressXz(input);
      assert.unreachable(`${what}: decoded`);
    } catch (e) {
      assert.instance(e, XzError, `${what}: ${String(e)}`);
      assert.match((e as Error).message, message, what);
      assert.not.match((e as Error).message, /\n/, `${what}: one line`);
    }
  }
});

xzTest('mutated input never escapes as anything but XzError, and never exceeds the output limit', () => {
  const data = x86Like(40_000);
  const good = xz(data, ['--check=crc64', '--x86', '--lzma2=preset=1']);
  for (let i = 0; i < 300; i++) {
    const bad = Uint8Array.from(good);
    for (let n = prng.int(1, 4); n > 0; n--) bad[prng.int(bad.length)] = prng.int(256);
    try {
      const { data: out } = decompressXz(bad, { limit: 1 << 20 });
      // A mutation in padding-free metadata may still decode; then it must be the original.
      assert.ok(Buffer.from(out).equals(Buffer.from(data)), `mutation ${i} decoded to something else (seed ${seed})`);
    } catch (e) {
      if (!(e instanceof XzError)) throw new Error(`mutation ${i} (seed ${seed}) threw ${String(e)}`);
    }
  }
});

test('an output limit stops a payload that expands past it', () => {
  // 1 MiB of zeros compresses to a few hundred bytes.
  const zeros = hasXz ? xz(new Uint8Array(1 << 20), []) : null;
  if (!zeros) return;
  assert.throws(() => decompressXz(zeros, { limit: 64 * 1024 }), (e: unknown) => e instanceof XzError && e.code === 'EFBIG');
});

const image = await findGuestImage().catch(() => undefined);
(image ? test : test.skip)('the cached guest bzImage payload decompresses to the kernel ELF in vmlinux', () => {
  const bz = new Uint8Array(readFileSync(image!.bzImage));
  const header = parseSetupHeader(bz);
  assert.is(header.payload.compression, 'xz');
  const payload = bz.subarray(header.payload.offset, header.payload.offset + header.payload.length);
  const started = performance.now();
  const { data, trailing } = decompressXz(payload);
  console.log(`guest kernel payload: ${payload.length} -> ${data.length} bytes in ${(performance.now() - started).toFixed(0)} ms`);
  assert.is(new DataView(trailing.buffer, trailing.byteOffset, 4).getUint32(0, true), data.length, 'size appended by the kernel build');
  // The payload is vmlinux with symbols stripped: the same loadable bytes at the same file offsets.
  const vmlinux = readFileSync(image!.vmlinux);
  const view = new DataView(vmlinux.buffer, vmlinux.byteOffset);
  const phoff = Number(view.getBigUint64(32, true));
  for (let i = 0; i < view.getUint16(56, true); i++) {
    const at = phoff + i * 56;
    if (view.getUint32(at, true) !== 1) continue;
    const offset = Number(view.getBigUint64(at + 8, true));
    const size = Number(view.getBigUint64(at + 32, true));
    assert.ok(Buffer.from(data.subarray(offset, offset + size)).equals(vmlinux.subarray(offset, offset + size)), `segment ${i}`);
  }
});

test.run();
