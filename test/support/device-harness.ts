// Transport-free test driver for virtio devices: guest memory, a VirtioDeviceState, the
// driver's side of the negotiation (ACKNOWLEDGE, DRIVER, features, FEATURES_OK, queue
// setup from DriverQueue layouts, DRIVER_OK), one DriverQueue per device queue, kicks,
// waiting for completions, and the interrupts the device raised.

import { GuestMemory } from '../../framework/guest-memory.ts';
import {
  STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
} from '../../framework/virtio/constants.ts';
import type { VirtioDevice } from '../../framework/virtio/device.ts';
import { VirtioDeviceState } from '../../framework/virtio/device-state.ts';
import { DriverQueue, type BufferSpec, type UsedElement } from './driver-queue.ts';

export interface HarnessOptions {
  /** Features the driver accepts (default: everything the device offers). */
  features?: bigint;
  /** Ring size per queue (default: min(queue max, 256)). */
  queueSize?: number;
  /** Guest RAM, split evenly between the queues (rings + buffers). Default 16 MiB. */
  memorySize?: number;
}

/** A used element plus everything in the chain's writable buffers at completion (status bytes included). */
export interface Completion extends UsedElement {
  writable: Uint8Array;
}

export class DeviceHarness<D extends VirtioDevice = VirtioDevice> {
  readonly memory: GuestMemory;
  readonly state: VirtioDeviceState;
  readonly queues: DriverQueue[];
  /** usedBuffer interrupts per queue. */
  readonly usedInterrupts: number[];
  configInterrupts = 0;
  private readonly consumed: number[];
  private readonly features: bigint;

  constructor(readonly device: D, options: HarnessOptions = {}) {
    const memorySize = options.memorySize ?? 16 << 20;
    this.memory = GuestMemory.allocate(memorySize);
    const n = device.queues.length;
    const share = Math.floor(memorySize / n / 4096) * 4096;
    this.queues = device.queues.map((q, i) => new DriverQueue(this.memory, {
      size: options.queueSize ?? Math.min(q.maxSize, 256),
      base: i * share,
      dataEnd: (i + 1) * share,
    }));
    this.usedInterrupts = device.queues.map(() => 0);
    this.consumed = device.queues.map(() => 0);
    this.state = new VirtioDeviceState(device, {
      memory: () => this.memory,
      interrupts: {
        usedBuffer: (i) => { this.usedInterrupts[i]!++; },
        configChange: () => { this.configInterrupts++; },
      },
      name: `test-${device.type}`,
    });
    this.features = options.features ?? this.state.offeredFeatures;
    this.negotiate(this.features);
  }

  /** Driver side of §3.1.1; throws if the device refuses FEATURES_OK or a queue does not start. */
  private negotiate(features: bigint): void {
    const s = this.state;
    s.writeStatus(STATUS_ACKNOWLEDGE);
    s.writeStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    s.writeDriverFeatures(0, Number(features & 0xffffffffn));
    s.writeDriverFeatures(1, Number((features >> 32n) & 0xffffffffn));
    s.writeStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    if (!(s.status & STATUS_FEATURES_OK)) throw new Error(`device refused features 0x${features.toString(16)}`);
    this.queues.forEach((dq, i) => {
      const settings = s.queues[i]!;
      settings.size = dq.size;
      settings.descTable = dq.descTable;
      settings.availRing = dq.availRing;
      settings.usedRing = dq.usedRing;
      settings.ready = true;
    });
    s.writeStatus(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    this.queues.forEach((_, i) => {
      if (!s.isQueueRunning(i)) throw new Error(`queue ${i} did not start (status 0x${s.status.toString(16)})`);
    });
  }

  get status(): number {
    return this.state.status;
  }

  /** Driver notification for queue `i`. */
  kick(i: number): void {
    this.state.notify(i);
  }

  /** Add a chain to queue `i` and kick it; returns the head. */
  submit(i: number, buffers: BufferSpec[], opts: { indirect?: boolean } = {}): number {
    const head = this.queues[i]!.addChain(buffers, opts);
    this.kick(i);
    return head;
  }

  /** Used elements published on queue `i` but not yet taken. */
  pendingUsed(i: number): number {
    return (this.queues[i]!.usedIdx() - this.consumed[i]!) & 0xffff;
  }

  /** Take every completion on queue `i` (possibly none), with the writable bytes of each chain. */
  takeUsed(i: number): Completion[] {
    const dq = this.queues[i]!;
    const ids: number[] = [];
    for (let k = 0, n = this.pendingUsed(i); k < n; k++) {
      const at = dq.usedRing + 4 + 8 * ((this.consumed[i]! + k) % dq.size);
      ids.push(new DataView(dq.raw(at, 4).slice().buffer).getUint32(0, true));
    }
    const writable = ids.map((id) => {
      try {
        return dq.readWritable(id);
      } catch {
        return new Uint8Array(0); // not a chain in flight: the device returned a bogus id
      }
    });
    const used = dq.takeUsed();
    this.consumed[i] = (this.consumed[i]! + used.length) & 0xffff;
    return used.map((u, k) => ({ ...u, writable: writable[k] ?? new Uint8Array(0) }));
  }

  /** Wait until at least `count` completions are pending on queue `i`, then take them all. */
  async waitUsed(i: number, count = 1, timeoutMs = 5000): Promise<Completion[]> {
    const deadline = Date.now() + timeoutMs;
    while (this.pendingUsed(i) < count) {
      if (Date.now() > deadline) {
        throw new Error(`queue ${i}: ${this.pendingUsed(i)} of ${count} completions after ${timeoutMs} ms`
          + ` (status 0x${this.status.toString(16)})`);
      }
      await new Promise((r) => setImmediate(r));
    }
    return this.takeUsed(i);
  }

  /** Let pending I/O callbacks and microtasks run (for "nothing happened" checks). */
  async settle(rounds = 20): Promise<void> {
    for (let k = 0; k < rounds; k++) await new Promise((r) => setImmediate(r));
  }

  /** Device reset; resolves once status reads 0 (in-flight I/O settled). */
  reset(): Promise<void> {
    return this.state.reset();
  }

  /** Reset, then bring the device up again with fresh rings, as a driver reloading would. */
  async restart(): Promise<void> {
    await this.state.reset();
    this.queues.forEach((dq, i) => {
      dq.reset();
      this.consumed[i] = 0;
    });
    this.negotiate(this.features);
  }
}
