// Split-virtqueue memory layout (virtio 1.2 §2.7): flag values, area sizes and
// alignments, the legacy single-area layout, and vring_need_event. Shared by the
// device-side queue, transports and the test driver.

export const VIRTQ_DESC_F_NEXT = 1;
export const VIRTQ_DESC_F_WRITE = 2;
export const VIRTQ_DESC_F_INDIRECT = 4;
/** avail.flags: the driver does not want used-buffer notifications (without EVENT_IDX). */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** used.flags: the device does not want available-buffer notifications (without EVENT_IDX). */
export const VIRTQ_USED_F_NO_NOTIFY = 1;

export const DESC_SIZE = 16;
export const DESC_ALIGN = 16;
export const AVAIL_ALIGN = 2;
export const USED_ALIGN = 4;
export const MAX_QUEUE_SIZE = 32768;

export function isValidQueueSize(size: number): boolean {
  return Number.isInteger(size) && size >= 1 && size <= MAX_QUEUE_SIZE && (size & (size - 1)) === 0;
}

export function descTableBytes(size: number): number {
  return DESC_SIZE * size;
}

/** flags, idx, ring[size], and used_event when EVENT_IDX is negotiated. */
export function availRingBytes(size: number, eventIdx: boolean): number {
  return 4 + 2 * size + (eventIdx ? 2 : 0);
}

/** flags, idx, ring[size] of {id u32, len u32}, and avail_event when EVENT_IDX is negotiated. */
export function usedRingBytes(size: number, eventIdx: boolean): number {
  return 4 + 8 * size + (eventIdx ? 2 : 0);
}

export interface RingAddresses {
  descTable: number;
  availRing: number;
  usedRing: number;
}

/**
 * Legacy (virtio-mmio v1 QueuePFN, legacy PCI) layout: one area at `base`, the used
 * ring at the next `align` boundary after the available ring (always with room for
 * the event fields).
 */
export function legacyRingLayout(base: number, size: number, align = 4096): RingAddresses {
  const availRing = base + descTableBytes(size);
  const availEnd = availRing + availRingBytes(size, true);
  return { descTable: base, availRing, usedRing: Math.ceil(availEnd / align) * align };
}

/** Bytes a legacy queue occupies (vring_size). */
export function legacyRingBytes(size: number, align = 4096): number {
  return legacyRingLayout(0, size, align).usedRing + usedRingBytes(size, true);
}

/**
 * Linux vring_need_event: must the other side be notified, given its event index, the
 * new index and the index at the previous check? True when the event index lies in
 * [old, new) modulo 2^16.
 */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}
