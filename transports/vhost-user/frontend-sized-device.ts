// Over vhost-user the front-end, not the device, picks each ring's size: there is
// no QueueNumMax register, and QEMU simply sends SET_VRING_NUM (vhost-user-rng asks
// for 1024, vhost-user-blk for its queue-size property). This adapter presents a
// device whose queues accept rings up to `queueSizeMax` (like libvhost-user's
// VIRTQUEUE_MAX_SIZE and rust-vmm's max_queue_size) and forwards everything else
// to the real device, which never sees the difference: rings of any valid size are
// handled by the device kit.

import type { DeviceConfig } from '../../framework/virtio/config-space.ts';
import { VirtioDevice, type QueueDefinition } from '../../framework/virtio/device.ts';

export class FrontendSizedDevice extends VirtioDevice {
  readonly type: number;
  override readonly features: bigint;
  readonly queues: readonly QueueDefinition[];
  override readonly config: DeviceConfig;
  override readonly vendor: number;

  constructor(readonly inner: VirtioDevice, queueSizeMax: number) {
    super();
    this.type = inner.type;
    this.features = inner.features;
    this.config = inner.config;
    this.vendor = inner.vendor;
    this.queues = inner.queues.map((q) => ({ ...q, maxSize: Math.max(q.maxSize, queueSizeMax) }));
  }

  override onFeatures(features: bigint): void {
    this.inner.onFeatures(features);
  }

  override onReset(): void {
    this.inner.onReset();
  }
}
