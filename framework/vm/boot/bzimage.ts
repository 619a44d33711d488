// bzImage files (x86 boot protocol 2.08+): the setup header, and the compressed kernel inside
// it (payload_offset/payload_length) decompressed on the host, because a guest decompressing
// itself is slow where kernel code is emulated and pointless elsewhere. The payload is the
// kernel's ELF image; gzip and xz payloads are decoded, any other compressor is named in a
// one-line error.

import { gunzipSync } from 'node:zlib';
import { BootError } from './boot-error.ts';
import { isElf } from './elf.ts';
import { decompressXz, XzError } from './xz/xz.ts';

export type PayloadCompression = 'none' | 'gzip' | 'xz' | 'lzma' | 'bzip2' | 'lzo' | 'lz4' | 'zstd' | 'unknown';
/** What a payload's first bytes tell: a compressor's magic, or 'unknown'. */
export type PayloadMagic = Exclude<PayloadCompression, 'none'>;

export interface SetupHeader {
  /** Boot protocol version, e.g. 0x020f. */
  readonly version: number;
  /** The setup header bytes (from 0x1f1), to be copied into boot_params. */
  readonly bytes: Uint8Array;
  /** Longest command line the kernel takes, without the NUL. */
  readonly cmdlineSize: number;
  /** Highest address the initramfs may end at (inclusive). */
  readonly initrdAddrMax: number;
  readonly payload: { readonly offset: number; readonly length: number; readonly compression: PayloadCompression };
}

const SETUP_HEADER_START = 0x1f1;
const HDRS = 0x53726448; // "HdrS"
const BOOT_FLAG = 0xaa55;
/** The first boot protocol with payload fields (2.08). */
export const MIN_BOOT_PROTOCOL = 0x0208;
const DEFAULT_CMDLINE_SIZE = 255;

const MAGICS: ReadonlyArray<[PayloadMagic, readonly number[]]> = [
  ['gzip', [0x1f, 0x8b]],
  ['xz', [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]],
  ['zstd', [0x28, 0xb5, 0x2f, 0xfd]],
  ['bzip2', [0x42, 0x5a, 0x68]],
  ['lzo', [0x89, 0x4c, 0x5a, 0x4f]],
  ['lz4', [0x02, 0x21, 0x4c, 0x18]],
  ['lzma', [0x5d, 0x00, 0x00]],
];

/** The boot protocol version of `image`'s "HdrS" setup header, or null when it has none. */
export function setupHeaderVersion(image: Uint8Array): number | null {
  if (image.length < 0x250) return null;
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  return v.getUint32(0x202, true) === HDRS ? v.getUint16(0x206, true) : null;
}

/** Whether `image` starts like a bzImage (boot sector flag and "HdrS"). */
export function isBzImage(image: Uint8Array): boolean {
  if (setupHeaderVersion(image) === null) return false;
  return new DataView(image.buffer, image.byteOffset, image.byteLength).getUint16(0x1fe, true) === BOOT_FLAG;
}

/**
 * Where the setup header (protocol 2.08+, `image` at least 0x250 bytes) puts the payload: after
 * the setup sectors, at payload_offset; it may lie outside a truncated file.
 */
export function payloadRange(image: Uint8Array): { readonly offset: number; readonly length: number } {
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const setupSects = image[0x1f1] || 4;
  return { offset: (setupSects + 1) * 512 + v.getUint32(0x248, true), length: v.getUint32(0x24c, true) };
}

/** The compressor whose magic `payload` starts with. */
export function payloadMagic(payload: Uint8Array): PayloadMagic {
  return MAGICS.find(([, magic]) => magic.every((b, i) => payload[i] === b))?.[0] ?? 'unknown';
}

export function parseSetupHeader(image: Uint8Array, what = 'bzImage'): SetupHeader {
  if (!isBzImage(image)) throw new BootError('ENOEXEC', `${what}: not a bzImage (no x86 boot sector with a "HdrS" setup header)`);
  const v = new DataView(image.buffer, image.byteOffset, image.byteLength);
  const version = v.getUint16(0x206, true);
  if (version < MIN_BOOT_PROTOCOL) {
    throw new BootError('ENOTSUP', `${what}: boot protocol ${fmtVersion(version)} is older than 2.08 (no payload fields)`);
  }
  const headerEnd = 0x202 + image[0x201]!;
  const { offset, length } = payloadRange(image);
  if (length === 0 || offset + length > image.length) {
    throw new BootError('ENOEXEC', `${what}: payload at ${offset}+${length} lies outside the ${image.length}-byte file (truncated?)`);
  }
  const payload = image.subarray(offset, offset + length);
  let compression: PayloadCompression = payloadMagic(payload);
  if (compression === 'unknown' && isElf(payload)) compression = 'none';
  return {
    version,
    bytes: image.subarray(SETUP_HEADER_START, Math.min(headerEnd, image.length)),
    cmdlineSize: version >= 0x0206 ? v.getUint32(0x238, true) : DEFAULT_CMDLINE_SIZE,
    initrdAddrMax: v.getUint32(0x22c, true) || 0x37ffffff,
    payload: { offset, length, compression },
  };
}

/** The kernel ELF inside a bzImage, decompressed. */
export function bzImageKernel(image: Uint8Array, header: SetupHeader, what = 'bzImage'): Uint8Array {
  const { offset, length, compression } = header.payload;
  const payload = image.subarray(offset, offset + length);
  switch (compression) {
    case 'none':
      return payload;
    case 'gzip':
      try {
        return gunzipSync(payload);
      } catch (e) {
        throw new BootError('EINVAL', `${what}: gzip payload is corrupt (${(e as Error).message})`);
      }
    case 'xz':
      return decompressXzPayload(payload, what);
    default:
      throw new BootError('ENOTSUP', `${what}: kernel payload is compressed with ${compression}; rxvirt decompresses gzip and xz (or pass the vmlinux ELF)`);
  }
}

/** Linux appends the decompressed size (u32) after the xz stream; it must agree. */
function decompressXzPayload(payload: Uint8Array, what: string): Uint8Array {
  let result;
  try {
    const sizeHint = payload.length >= 4 ? new DataView(payload.buffer, payload.byteOffset + payload.length - 4, 4).getUint32(0, true) : undefined;
    result = decompressXz(payload, { sizeHint });
  } catch (e) {
    if (e instanceof XzError) throw new BootError(e.code === 'ENOTSUP' ? 'ENOTSUP' : 'EINVAL', `${what}: ${e.message}`);
    throw e;
  }
  const { data, trailing } = result;
  if (trailing.length === 4) {
    const declared = new DataView(trailing.buffer, trailing.byteOffset, 4).getUint32(0, true);
    if (declared !== data.length) throw new BootError('EINVAL', `${what}: payload decompressed to ${data.length} bytes, its trailer says ${declared}`);
  } else if (trailing.length !== 0) {
    throw new BootError('EINVAL', `${what}: ${trailing.length} unexpected bytes after the xz payload`);
  }
  return data;
}

function fmtVersion(v: number): string {
  return `${v >> 8}.${(v & 0xff).toString().padStart(2, '0')}`;
}
