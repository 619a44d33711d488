// Reads the x86 boot protocol setup header of a bzImage far enough to say where
// the compressed kernel payload is and which compressor made it (recorded in
// the image manifest; a VMM that decompresses on the host needs to know). The
// header is read by the framework's boot loader (framework/vm/boot/bzimage.ts).

import { MIN_BOOT_PROTOCOL, payloadMagic, payloadRange, setupHeaderVersion, type PayloadMagic } from '../../framework/vm/boot/bzimage.ts';

export type PayloadCompression = PayloadMagic;

export interface BzImagePayload {
  /** Byte offset of the payload in the bzImage file. */
  offset: number;
  length: number;
  compression: PayloadCompression;
}

/** Returns undefined when `image` is not a bzImage with boot protocol >= 2.08 (the first with payload fields). */
export function bzImagePayload(image: Uint8Array): BzImagePayload | undefined {
  const version = setupHeaderVersion(image);
  if (version === null || version < MIN_BOOT_PROTOCOL) return undefined;
  const { offset, length } = payloadRange(image);
  if (length === 0 || offset + length > image.length) return undefined;
  return { offset, length, compression: payloadMagic(image.subarray(offset, offset + length)) };
}
