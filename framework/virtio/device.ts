// What a device author writes: the device type, the feature bits it offers, its
// configuration space and one handler per virtqueue. Everything else (feature
// negotiation, the status state machine, ring parsing, used-ring publication,
// interrupts, reset) belongs to the device kit and the transports.

import type { TeardownLogic } from 'rxjs';
import { ConfigSpace, type DeviceConfig } from './config-space.ts';
import type { DeviceQueue } from './device-queue.ts';

/** Called when the driver activates a queue; returns what to tear down on reset. */
export type QueueHandler = (queue: DeviceQueue) => TeardownLogic;

export interface QueueDefinition {
  readonly name: string;
  /** QueueNumMax: the largest ring the device accepts (power of two, <= 32768). */
  readonly maxSize: number;
  readonly handler: QueueHandler;
}

export function queue(name: string, maxSize: number, handler: QueueHandler): QueueDefinition {
  return { name, maxSize, handler };
}

export abstract class VirtioDevice {
  /** Virtio device id (VIRTIO_ID_*). */
  abstract readonly type: number;
  /** Device-specific feature bits offered to the driver (bigint mask); the kit adds VERSION_1, INDIRECT_DESC, EVENT_IDX. */
  readonly features: bigint = 0n;
  abstract readonly queues: readonly QueueDefinition[];
  readonly config: DeviceConfig = ConfigSpace.empty();
  /** Virtio vendor id reported by transports. */
  readonly vendor: number = 0x554d4551; // "QEMU" little-endian: what Linux tools expect from generic devices

  /** The driver accepted `features` (FEATURES_OK). Devices adapt to optional features here. */
  onFeatures(_features: bigint): void {}
  /** Device reset: drop device-side state. Queues and in-flight work are handled by the kit. */
  onReset(): void {}
}
