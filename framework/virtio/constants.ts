// Virtio constants shared by devices and transports (virtio 1.2 sections 2.1, 2.2, 5, 6).
// Feature bits are bit numbers; feature sets are bigint masks (features span 64 bits).

/** Device status bits (virtio 1.2 §2.1). */
export const STATUS_ACKNOWLEDGE = 1;
export const STATUS_DRIVER = 2;
export const STATUS_DRIVER_OK = 4;
export const STATUS_FEATURES_OK = 8;
export const STATUS_DEVICE_NEEDS_RESET = 64;
export const STATUS_FAILED = 128;

/** Reserved (device-independent) feature bit numbers (§6). */
export const VIRTIO_F_INDIRECT_DESC = 28;
export const VIRTIO_F_EVENT_IDX = 29;
export const VIRTIO_F_VERSION_1 = 32;
export const VIRTIO_F_ACCESS_PLATFORM = 33;
export const VIRTIO_F_RING_PACKED = 34;
export const VIRTIO_F_IN_ORDER = 35;

/** Device ids (§5). */
export const VIRTIO_ID_NET = 1;
export const VIRTIO_ID_BLOCK = 2;
export const VIRTIO_ID_CONSOLE = 3;
export const VIRTIO_ID_ENTROPY = 4;

/** bigint mask with the given feature bit numbers set. */
export function featureBits(...bits: number[]): bigint {
  let mask = 0n;
  for (const b of bits) mask |= 1n << BigInt(b);
  return mask;
}

export function hasFeature(features: bigint, bit: number): boolean {
  return (features & (1n << BigInt(bit))) !== 0n;
}
