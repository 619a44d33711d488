// Reads the x86 boot protocol setup header of a bzImage far enough to say where
// the compressed kernel payload is and which compressor made it (recorded in
// the image manifest; a VMM that decompresses on the host needs to know).

export type PayloadCompression = 'gzip' | 'xz' | 'lzma' | 'bzip2' | 'lzo' | 'lz4' | 'zstd' | 'unknown';

export interface BzImagePayload {
  /** Byte offset of the payload in the bzImage file. */
  offset: number;
  length: number;
  compression: PayloadCompression;
}

const MAGICS: ReadonlyArray<[PayloadCompression, readonly number[]]> = [
  ['gzip', [0x1f, 0x8b]],
  ['xz', [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]],
  ['zstd', [0x28, 0xb5, 0x2f, 0xfd]],
  ['bzip2', [0x42, 0x5a, 0x68]],
  ['lzo', [0x89, 0x4c, 0x5a, 0x4f]],
  ['lz4', [0x02, 0x21, 0x4c, 0x18]],
  ['lzma', [0x5d, 0x00, 0x00]],
];

/** Returns undefined when `image` is not a bzImage with boot protocol >= 2.08 (the first with payload fields). */
export function bzImagePayload(image: Uint8Array): BzImagePayload | undefined {
  if (image.length < 0x250) return undefined;
  const view = new DataView(image.buffer, image.byteOffset, image.length);
  if (view.getUint32(0x202, true) !== 0x53726448 /* "HdrS" */ || view.getUint16(0x206, true) < 0x0208) return undefined;
  const setupSects = image[0x1f1] || 4;
  const offset = (setupSects + 1) * 512 + view.getUint32(0x248, true);
  const length = view.getUint32(0x24c, true);
  if (length === 0 || offset + length > image.length) return undefined;
  const compression = MAGICS.find(([, magic]) => magic.every((b, i) => image[offset + i] === b))?.[0] ?? 'unknown';
  return { offset, length, compression };
}
