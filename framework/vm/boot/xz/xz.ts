// The .xz container (tukaani.org xz-file-format 1.2.1), decoded whole: stream header, blocks
// (LZMA2, optionally behind the x86 BCJ filter, as Linux compresses x86 kernels), each block's
// integrity check (none, CRC32, CRC64, SHA-256), the index cross-checked against the blocks,
// and the stream footer. Concatenated streams and stream padding are accepted; bytes after the
// last stream are reported, not decoded (a bzImage appends the decompressed size there).
// node:zlib has no xz, and the npm decoders either lack the BCJ filters every x86 kernel uses
// or are native addons, hence this one.

import { createHash } from 'node:crypto';
import { bcjX86Decode } from './bcj-x86.ts';
import { crc32, crc64 } from './checksums.ts';
import { decodeLzma2, lzma2DictionarySize, OutputBuffer } from './lzma2.ts';
import { XzError } from './xz-error.ts';

export { XzError } from './xz-error.ts';

const MAGIC = [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];
const FOOTER_MAGIC = [0x59, 0x5a];
const HEADER_SIZE = 12;
const CHECK_NONE = 0;
const CHECK_CRC32 = 1;
const CHECK_CRC64 = 4;
const CHECK_SHA256 = 10;
const FILTER_LZMA2 = 0x21;
const FILTER_X86 = 0x04;
const FILTER_NAMES: Record<number, string> = {
  0x03: 'delta', 0x05: 'PowerPC BCJ', 0x06: 'IA-64 BCJ', 0x07: 'ARM BCJ', 0x08: 'ARM-Thumb BCJ',
  0x09: 'SPARC BCJ', 0x0a: 'ARM64 BCJ', 0x0b: 'RISC-V BCJ',
};
const DEFAULT_LIMIT = 1 << 30;

export interface XzResult {
  readonly data: Uint8Array;
  /** Bytes after the last stream (and its padding) that were not decoded. */
  readonly trailing: Uint8Array;
}

export interface XzOptions {
  /** Largest output accepted (default 1 GiB). */
  readonly limit?: number;
  /** Expected output size, to allocate once. */
  readonly sizeHint?: number;
}

export function isXz(data: Uint8Array): boolean {
  return MAGIC.every((b, i) => data[i] === b);
}

/** Decompresses .xz data; throws XzError naming what is wrong. */
export function decompressXz(input: Uint8Array, options: XzOptions = {}): XzResult {
  const limit = options.limit ?? DEFAULT_LIMIT;
  const out = new OutputBuffer(options.sizeHint ?? input.length * 4, limit);
  let pos = 0;
  for (;;) {
    pos = decodeStream(input, pos, out);
    // Stream padding: zero bytes in groups of four, then possibly another stream.
    let next = pos;
    while (next + 4 <= input.length && input[next] === 0 && input[next + 1] === 0 && input[next + 2] === 0 && input[next + 3] === 0) next += 4;
    if (next + HEADER_SIZE <= input.length && isXz(input.subarray(next))) {
      pos = next;
      continue;
    }
    pos = next;
    break;
  }
  return { data: out.bytes.subarray(0, out.length), trailing: input.subarray(pos) };
}

interface IndexRecord {
  unpaddedSize: number;
  uncompressedSize: number;
}

function decodeStream(input: Uint8Array, start: number, out: OutputBuffer): number {
  if (input.length - start < HEADER_SIZE || !isXz(input.subarray(start))) throw new XzError('EINVAL', 'not .xz data (no stream header magic)');
  const flags = input.subarray(start + 6, start + 8);
  if (readU32(input, start + 8) !== crc32(flags)) throw new XzError('EINVAL', 'stream header CRC32 mismatch');
  if (flags[0] !== 0 || (flags[1]! & 0xf0) !== 0) throw new XzError('ENOTSUP', 'stream header has unknown flags');
  const check = flags[1]! & 0x0f;
  const checkSize = checkSizeOf(check);
  let pos = start + HEADER_SIZE;
  const records: IndexRecord[] = [];
  for (;;) {
    if (pos >= input.length) throw new XzError('EINVAL', 'data truncated before the index');
    if (input[pos] === 0x00) break; // index indicator
    const outStart = out.length;
    const block = decodeBlock(input, pos, out, check, checkSize);
    records.push({ unpaddedSize: block.unpaddedSize, uncompressedSize: out.length - outStart });
    pos = block.end;
  }
  const indexStart = pos;
  pos = checkIndex(input, pos, records);
  // Stream footer.
  if (pos + HEADER_SIZE > input.length) throw new XzError('EINVAL', 'data truncated in the stream footer');
  const footer = input.subarray(pos, pos + HEADER_SIZE);
  if (!FOOTER_MAGIC.every((b, i) => footer[10 + i] === b)) throw new XzError('EINVAL', 'stream footer magic missing');
  if (readU32(footer, 0) !== crc32(footer.subarray(4, 10))) throw new XzError('EINVAL', 'stream footer CRC32 mismatch');
  if (footer[8] !== flags[0] || footer[9] !== flags[1]) throw new XzError('EINVAL', 'stream footer flags differ from the header');
  if ((readU32(footer, 4) + 1) * 4 !== pos - indexStart) throw new XzError('EINVAL', 'stream footer backward size does not match the index');
  return pos + HEADER_SIZE;
}

/** Decodes the block at `start`; returns where it ends and its unpadded size (as the index records it). */
function decodeBlock(input: Uint8Array, start: number, out: OutputBuffer, check: number, checkSize: number): { end: number; unpaddedSize: number } {
  const headerSize = (input[start]! + 1) * 4;
  if (start + headerSize > input.length) throw new XzError('EINVAL', 'data truncated in a block header');
  const header = input.subarray(start, start + headerSize);
  if (readU32(header, headerSize - 4) !== crc32(header.subarray(0, headerSize - 4))) throw new XzError('EINVAL', 'block header CRC32 mismatch');
  const blockFlags = header[1]!;
  if ((blockFlags & 0x3c) !== 0) throw new XzError('ENOTSUP', 'block header has unknown flags');
  const reader = { bytes: header, pos: 2, end: headerSize - 4 };
  const compressedSize = blockFlags & 0x40 ? readVarint(reader, 'block compressed size') : null;
  const uncompressedSize = blockFlags & 0x80 ? readVarint(reader, 'block uncompressed size') : null;
  const filterCount = (blockFlags & 3) + 1;
  let x86: { startOffset: number } | null = null;
  let dictSize = 0;
  for (let i = 0; i < filterCount; i++) {
    const id = readVarint(reader, 'filter id');
    const propsSize = readVarint(reader, 'filter properties size');
    if (reader.pos + propsSize > reader.end) throw new XzError('EINVAL', 'filter properties run past the block header');
    const props = header.subarray(reader.pos, reader.pos + propsSize);
    reader.pos += propsSize;
    const last = i === filterCount - 1;
    if (id === FILTER_LZMA2) {
      if (!last) throw new XzError('EINVAL', 'LZMA2 is not the last filter of its block');
      if (propsSize !== 1) throw new XzError('EINVAL', 'LZMA2 filter properties are not one byte');
      dictSize = lzma2DictionarySize(props[0]!);
    } else if (id === FILTER_X86 && !last && x86 === null) {
      if (propsSize !== 0 && propsSize !== 4) throw new XzError('EINVAL', 'x86 BCJ filter properties are not 0 or 4 bytes');
      x86 = { startOffset: propsSize === 4 ? readU32(props, 0) : 0 };
    } else if (last) {
      throw new XzError('ENOTSUP', `block compressed with filter 0x${id.toString(16)}, not LZMA2`);
    } else {
      throw new XzError('ENOTSUP', `block uses the ${FILTER_NAMES[id] ?? `0x${id.toString(16)}`} filter; only x86 BCJ is decoded`);
    }
  }
  for (let i = reader.pos; i < reader.end; i++) if (header[i] !== 0) throw new XzError('EINVAL', 'block header padding is not zero');

  const dataStart = start + headerSize;
  const outStart = out.length;
  const dataEnd = decodeLzma2(input, dataStart, input.length, dictSize, out);
  const produced = out.bytes.subarray(outStart, out.length);
  if (compressedSize !== null && compressedSize !== dataEnd - dataStart) throw new XzError('EINVAL', 'block compressed size differs from its header');
  if (uncompressedSize !== null && uncompressedSize !== produced.length) throw new XzError('EINVAL', 'block uncompressed size differs from its header');
  if (x86) bcjX86Decode(produced, x86.startOffset);
  let pos = dataEnd;
  while ((pos - start) % 4 !== 0) {
    if (pos >= input.length || input[pos] !== 0) throw new XzError('EINVAL', 'block padding is not zero');
    pos++;
  }
  if (pos + checkSize > input.length) throw new XzError('EINVAL', 'data truncated in a block check');
  verifyCheck(check, produced, input.subarray(pos, pos + checkSize));
  return { end: pos + checkSize, unpaddedSize: dataEnd - start + checkSize };
}

function checkSizeOf(check: number): number {
  if (check === CHECK_NONE) return 0;
  if (check === CHECK_CRC32) return 4;
  if (check === CHECK_CRC64) return 8;
  if (check === CHECK_SHA256) return 32;
  throw new XzError('ENOTSUP', `integrity check type ${check} is not supported`);
}

function verifyCheck(check: number, data: Uint8Array, stored: Uint8Array): void {
  let ok = true;
  if (check === CHECK_CRC32) ok = crc32(data) === readU32(stored, 0);
  else if (check === CHECK_CRC64) ok = crc64(data) === new DataView(stored.buffer, stored.byteOffset, 8).getBigUint64(0, true);
  else if (check === CHECK_SHA256) ok = Buffer.from(createHash('sha256').update(data).digest()).equals(stored);
  if (!ok) throw new XzError('EINVAL', 'decompressed data fails its integrity check (corrupt input)');
}

function checkIndex(input: Uint8Array, start: number, records: readonly IndexRecord[]): number {
  const reader = { bytes: input, pos: start + 1, end: input.length };
  const count = readVarint(reader, 'index record count');
  if (count !== records.length) throw new XzError('EINVAL', `index lists ${count} blocks, the stream has ${records.length}`);
  for (const r of records) {
    const unpadded = readVarint(reader, 'index unpadded size');
    const uncompressed = readVarint(reader, 'index uncompressed size');
    if (unpadded !== r.unpaddedSize || uncompressed !== r.uncompressedSize) throw new XzError('EINVAL', 'index does not match the blocks');
  }
  let pos = reader.pos;
  while ((pos - start) % 4 !== 0) {
    if (pos >= input.length || input[pos] !== 0) throw new XzError('EINVAL', 'index padding is not zero');
    pos++;
  }
  if (pos + 4 > input.length) throw new XzError('EINVAL', 'data truncated in the index');
  if (readU32(input, pos) !== crc32(input.subarray(start, pos))) throw new XzError('EINVAL', 'index CRC32 mismatch');
  return pos + 4;
}

interface Reader {
  readonly bytes: Uint8Array;
  pos: number;
  readonly end: number;
}

/** A .xz multibyte integer (7 bits a byte, at most 9 bytes); values past 2^53 are refused. */
function readVarint(r: Reader, what: string): number {
  let value = 0;
  for (let i = 0; i < 9; i++) {
    if (r.pos >= r.end) throw new XzError('EINVAL', `${what}: truncated`);
    const b = r.bytes[r.pos++]!;
    value += (b & 0x7f) * 2 ** (7 * i);
    if ((b & 0x80) === 0) {
      if (i > 0 && b === 0) throw new XzError('EINVAL', `${what}: not minimally encoded`);
      if (!Number.isSafeInteger(value)) throw new XzError('ENOTSUP', `${what}: too large`);
      return value;
    }
  }
  throw new XzError('EINVAL', `${what}: longer than 9 bytes`);
}

function readU32(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}
