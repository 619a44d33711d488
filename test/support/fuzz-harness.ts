// Transport-free driver for fuzzing one device over FuzzMemory (observer + canaries): the
// device kit's state machine brought to DRIVER_OK with every offered feature (or a given
// set), one DriverQueue per device queue laid out in RAM, kicks, and the interrupts raised.

import { STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK } from '../../framework/virtio/constants.ts';
import type { VirtioDevice } from '../../framework/virtio/device.ts';
import { VirtioDeviceState } from '../../framework/virtio/device-state.ts';
import { DriverQueue } from './driver-queue.ts';
import type { FuzzMemory } from './fuzz-memory.ts';

export class FuzzHarness {
  readonly state: VirtioDeviceState;
  readonly queues: DriverQueue[];
  readonly usedInterrupts: number[];
  configInterrupts = 0;

  /** RAM [0, ramSize) of `memory` is split evenly between the queues. */
  constructor(readonly device: VirtioDevice, readonly memory: FuzzMemory, ramSize: number,
    options: { queueSize?: number; features?: bigint } = {}) {
    const n = device.queues.length;
    const share = Math.floor(ramSize / n / 4096) * 4096;
    this.queues = device.queues.map((q, i) => new DriverQueue(memory.mem, {
      size: Math.min(options.queueSize ?? 64, q.maxSize), base: i * share, dataEnd: (i + 1) * share,
    }));
    this.usedInterrupts = device.queues.map(() => 0);
    this.state = new VirtioDeviceState(device, {
      memory: () => memory.mem,
      interrupts: {
        usedBuffer: (i) => { this.usedInterrupts[i]!++; },
        configChange: () => { this.configInterrupts++; },
      },
      name: `fuzz-${device.type}`,
    });
    this.features = options.features ?? this.state.offeredFeatures;
    this.negotiate();
  }

  private readonly features: bigint;

  /** The driver's side of §3.1.1 over this harness's rings. */
  private negotiate(): void {
    const features = this.features;
    const s = this.state;
    s.writeStatus(STATUS_ACKNOWLEDGE);
    s.writeStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    s.writeDriverFeatures(0, Number(features & 0xffff_ffffn));
    s.writeDriverFeatures(1, Number(features >> 32n));
    s.writeStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    if (!(s.status & STATUS_FEATURES_OK)) throw new Error(`device refused features 0x${features.toString(16)}`);
    this.queues.forEach((dq, i) => Object.assign(s.queues[i]!, {
      size: dq.size, descTable: dq.descTable, availRing: dq.availRing, usedRing: dq.usedRing, ready: true,
    }));
    s.writeStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
  }

  get status(): number {
    return this.state.status;
  }

  /**
   * A driver re-probe: status 0, then negotiation again over freshly zeroed rings. Waits for the
   * reset only if status does not read 0 at once (chains the device still holds are dropped);
   * `beforeRingsCleared` may still take what the device published before it stopped.
   */
  async restart(beforeRingsCleared: () => void = () => {}): Promise<void> {
    const done = this.state.reset();
    if (this.state.status !== 0) await done;
    await Promise.resolve(); // used elements flushed by the stop are in the rings now
    beforeRingsCleared();
    for (const dq of this.queues) dq.reset();
    this.negotiate();
  }

  kick(i: number): void {
    this.state.notify(i);
  }
}
