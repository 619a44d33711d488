// The arm64 Linux `Image` header (Documentation/arch/arm64/booting.rst): checked before the
// kernel is loaded, because Gunyah simply enters whatever sits at the start of the region.

import { VmError } from '../vm-error.ts';

export const ARM64_IMAGE_MAGIC = 0x644d5241; // "ARM\x64", little-endian at offset 56
export const ARM64_IMAGE_HEADER_SIZE = 64;
const FLAG_BIG_ENDIAN = 1;

export interface Arm64Image {
  readonly textOffset: number;
  /** Bytes the kernel occupies from its load address (BSS included): image_size, or the file size if 0. */
  readonly effectiveSize: number;
}

export function parseArm64Image(kernel: Uint8Array): Arm64Image {
  if (kernel.length < ARM64_IMAGE_HEADER_SIZE) {
    throw new VmError('ENOEXEC', `arm64 Image: ${kernel.length} bytes is shorter than the ${ARM64_IMAGE_HEADER_SIZE}-byte header`);
  }
  const view = new DataView(kernel.buffer, kernel.byteOffset, kernel.byteLength);
  if (view.getUint32(56, true) !== ARM64_IMAGE_MAGIC) throw new VmError('ENOEXEC', 'arm64 Image: no ARM\\x64 magic at offset 56 (not an arm64 Linux Image)');
  const textOffset = Number(view.getBigUint64(8, true));
  const imageSize = Number(view.getBigUint64(16, true));
  const flags = Number(view.getBigUint64(24, true));
  if (flags & FLAG_BIG_ENDIAN) throw new VmError('ENOEXEC', 'arm64 Image: big-endian kernel');
  if (!Number.isSafeInteger(imageSize) || !Number.isSafeInteger(textOffset)) throw new VmError('ENOEXEC', 'arm64 Image: header sizes out of range');
  return { textOffset, effectiveSize: Math.max(imageSize, kernel.length) };
}
