// The transport-independent half of a virtio device: offered and accepted
// features, the device-status state machine (virtio 1.2 §2.1, §3.1), per-queue
// settings written by the driver, queue start/stop, DEVICE_NEEDS_RESET, and
// reset that waits for in-flight I/O before status reads back 0. Transports
// (virtio-mmio registers, vhost-user messages) drive this object; devices never
// see it.

import { Subscription } from 'rxjs';
import type { GuestMemory } from '../guest-memory.ts';
import { warn } from '../log.ts';
import { DeviceQueue, type DeviceQueueHost } from './device-queue.ts';
import type { VirtioDevice } from './device.ts';
import { SplitQueue } from './split-queue.ts';
import {
  STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED,
  STATUS_FEATURES_OK, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, featureBits, hasFeature,
} from './constants.ts';

/** Queue registers as the driver programs them before DRIVER_OK (or vhost-user SET_VRING_*). */
export interface QueueSettings {
  readonly maxSize: number;
  size: number;
  ready: boolean;
  descTable: number;
  availRing: number;
  usedRing: number;
}

/** Where the device's interrupts go: the transport maps these onto doorbells. */
export interface InterruptSink {
  usedBuffer(queueIndex: number): void;
  configChange(): void;
}

export interface DeviceStateOptions {
  /** Current guest memory (vhost-user replaces it on SET_MEM_TABLE). */
  memory: () => GuestMemory | null;
  interrupts: InterruptSink;
  /** Legacy (virtio-mmio version 1) drivers negotiate without VERSION_1 and FEATURES_OK. */
  legacy?: boolean;
  /** Transport-level feature bits the kit offers; default VERSION_1 | INDIRECT_DESC | EVENT_IDX. */
  transportFeatures?: bigint;
  /** Log scope, e.g. "virtio-mmio@0xd0000000". */
  name?: string;
}

interface RunningQueue {
  queue: DeviceQueue;
  teardown: Subscription;
}

const DEFAULT_TRANSPORT_FEATURES = featureBits(VIRTIO_F_VERSION_1, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_EVENT_IDX);

export class VirtioDeviceState implements DeviceQueueHost {
  readonly offeredFeatures: bigint;
  readonly queues: QueueSettings[];
  readonly name: string;
  private accepted = 0n;
  private statusBits = 0;
  /** Settles when I/O from before the last reset no longer targets guest memory; queues start after it. */
  private quiescing: Promise<void> | null = null;
  private readonly running: (RunningQueue | null)[];
  /** Queues stopped but whose in-flight I/O has not settled yet. */
  private readonly stopping = new Map<number, { queue: DeviceQueue; done: Promise<void> }>();

  constructor(readonly device: VirtioDevice, private readonly options: DeviceStateOptions) {
    const transport = options.transportFeatures ?? DEFAULT_TRANSPORT_FEATURES;
    this.offeredFeatures = device.features | (options.legacy ? transport & ~featureBits(VIRTIO_F_VERSION_1) : transport);
    this.name = options.name ?? `virtio-${device.type}`;
    this.queues = device.queues.map((q) => freshQueueSettings(q.maxSize));
    this.running = device.queues.map(() => null);
    device.config.onChange = () => {
      if (this.statusBits & STATUS_DRIVER_OK) options.interrupts.configChange();
    };
  }

  get memory(): GuestMemory | null {
    return this.options.memory();
  }

  /** Device status as the driver reads it. */
  get status(): number {
    return this.statusBits;
  }

  get driverFeatures(): bigint {
    return this.accepted;
  }

  /** True while I/O taken before the last reset is still settling (queues wait for it to start). */
  get isQuiescing(): boolean {
    return this.quiescing !== null;
  }

  /** 32-bit word `select` of the driver's accepted features; ignored once FEATURES_OK is set. */
  writeDriverFeatures(select: number, value: number): void {
    if (this.statusBits & STATUS_FEATURES_OK || select > 1) return;
    const shift = BigInt(select * 32);
    this.accepted = (this.accepted & ~(0xffffffffn << shift)) | (BigInt(value >>> 0) << shift);
  }

  /** vhost-user SET_FEATURES: the whole accepted set at once. Returns false if it names a bit not offered. */
  setFeatures(features: bigint): boolean {
    if ((features & ~this.offeredFeatures) !== 0n) return false;
    this.accepted = features;
    this.device.onFeatures(features);
    return true;
  }

  /** Driver write of the status register. */
  writeStatus(value: number): void {
    value &= 0xff;
    if (value === 0) {
      void this.reset();
      return;
    }
    const old = this.statusBits;
    if ((value & old) !== old) {
      warn(this.name, () => `driver cleared status bits (0x${old.toString(16)} -> 0x${value.toString(16)}): ignored`);
      return;
    }
    let added = value & ~old & ~STATUS_DEVICE_NEEDS_RESET; // only the device sets NEEDS_RESET
    if (added & STATUS_FAILED) {
      this.statusBits |= STATUS_FAILED;
      this.stopAllQueues();
      return;
    }
    const next = () => old | added;
    if (added & STATUS_DRIVER && !(next() & STATUS_ACKNOWLEDGE)) return this.refuse(value, 'DRIVER before ACKNOWLEDGE');
    if (added & STATUS_FEATURES_OK) {
      if (!(next() & STATUS_DRIVER)) return this.refuse(value, 'FEATURES_OK before DRIVER');
      if (!this.featuresAcceptable()) added &= ~STATUS_FEATURES_OK; // the driver reads it back and gives up
      else this.device.onFeatures(this.accepted);
    }
    if (added & STATUS_DRIVER_OK) {
      const needed = this.options.legacy ? STATUS_DRIVER : STATUS_FEATURES_OK;
      if (!(next() & needed)) return this.refuse(value, 'DRIVER_OK before FEATURES_OK');
      if (this.options.legacy) this.device.onFeatures(this.accepted);
    }
    this.statusBits = old | added;
    if (added & STATUS_DRIVER_OK) {
      for (let i = 0; i < this.queues.length; i++) {
        if (this.queues[i]!.ready && !this.startQueue(i)) break; // the device needs a reset: start nothing more
      }
    }
  }

  /** Driver notification for queue `index` (QueueNotify or an ioeventfd). */
  notify(index: number): void {
    this.running[index]?.queue.kick();
  }

  /** Start serving queue `index` from its settings; vhost-user may pass the ring position. */
  startQueue(index: number, position?: { nextAvail: number; nextUsed: number }): boolean {
    const settings = this.queues[index];
    const memory = this.memory;
    if (!settings || this.running[index] || !memory) return false;
    if (this.statusBits & (STATUS_DEVICE_NEEDS_RESET | STATUS_FAILED)) return false;
    if (this.quiescing) {
      // Requests from before the reset still write into guest memory: start once they have settled.
      const after = this.quiescing;
      void after.then(() => {
        if (this.quiescing === null && this.queues[index] === settings && !this.running[index]) this.startQueue(index, position);
      });
      return true;
    }
    if (settings.size === 0 || settings.size > settings.maxSize) {
      this.needsReset(`queue ${index}: size ${settings.size} not in 1..${settings.maxSize}`);
      return false;
    }
    let ring: SplitQueue;
    try {
      ring = new SplitQueue(memory, {
        size: settings.size,
        descTable: settings.descTable,
        availRing: settings.availRing,
        usedRing: settings.usedRing,
        eventIdx: hasFeature(this.accepted, VIRTIO_F_EVENT_IDX),
        indirect: hasFeature(this.accepted, VIRTIO_F_INDIRECT_DESC),
      });
    } catch (err) {
      this.needsReset(`queue ${index}: ${err instanceof Error ? err.message : String(err)}`);
      return false;
    }
    if (position) {
      ring.nextAvail = position.nextAvail & 0xffff;
      ring.nextUsed = position.nextUsed & 0xffff;
    }
    const definition = this.device.queues[index]!;
    const queue = new DeviceQueue(index, definition.name, this.accepted, ring, this);
    const teardown = new Subscription();
    this.running[index] = { queue, teardown };
    try {
      teardown.add(definition.handler(queue));
    } catch (err) {
      this.needsReset(`queue ${index}: handler failed to start: ${err instanceof Error ? err.message : String(err)}`);
      return false;
    }
    return true;
  }

  /**
   * Stop queue `index`; resolves with its ring position once its in-flight work has settled.
   * `drain` lets requests already taken complete into the ring (vhost-user); otherwise they are dropped (reset).
   */
  async stopQueue(index: number, options: { drain?: boolean } = {}): Promise<{ nextAvail: number } | null> {
    const run = this.running[index];
    if (!run) {
      const stopping = this.stopping.get(index);
      if (!stopping) return null;
      await stopping.done; // stopped earlier (e.g. by DEVICE_NEEDS_RESET): its I/O may still be running
      return { nextAvail: stopping.queue.nextAvail };
    }
    this.running[index] = null;
    run.teardown.unsubscribe();
    const done = run.queue.stop(options);
    this.stopping.set(index, { queue: run.queue, done });
    try {
      await done;
    } finally {
      if (this.stopping.get(index)?.done === done) this.stopping.delete(index);
    }
    return { nextAvail: run.queue.nextAvail };
  }

  isQueueRunning(index: number): boolean {
    return this.running[index] != null;
  }

  /** DeviceQueueHost: a queue published used buffers that the driver wants to hear about. */
  signalUsed(queueIndex: number): void {
    this.options.interrupts.usedBuffer(queueIndex);
  }

  /** DeviceQueueHost: the guest broke the protocol. Stop the device and tell the driver. */
  needsReset(reason: string): void {
    if (this.statusBits & STATUS_DEVICE_NEEDS_RESET) return;
    warn(this.name, `DEVICE_NEEDS_RESET: ${reason}`);
    this.statusBits |= STATUS_DEVICE_NEEDS_RESET;
    this.stopAllQueues();
    if (this.statusBits & STATUS_DRIVER_OK) this.options.interrupts.configChange();
  }

  /**
   * Full device reset. Status reads 0 at once (Linux's virtio-mmio never waits for it). Requests in
   * flight are dropped; their I/O cannot be cancelled, so queues started before it settles wait for
   * it. The promise settles when nothing from before the reset touches guest memory any more.
   */
  reset(): Promise<void> {
    const stopped = this.running.map((_, i) => this.stopQueue(i));
    const busy = [...this.stopping.values()].filter((s) => s.queue.inFlightCount > 0);
    this.accepted = 0n;
    for (let i = 0; i < this.queues.length; i++) this.queues[i] = freshQueueSettings(this.queues[i]!.maxSize);
    this.device.onReset();
    this.statusBits = 0;
    if (busy.length === 0) return this.quiescing ?? Promise.resolve();
    const quiesced: Promise<void> = Promise.allSettled([...stopped, ...busy.map((s) => s.done), this.quiescing]).then(() => {
      if (this.quiescing === quiesced) this.quiescing = null;
    });
    this.quiescing = quiesced;
    return quiesced;
  }

  private stopAllQueues(): void {
    for (let i = 0; i < this.running.length; i++) void this.stopQueue(i);
  }

  private featuresAcceptable(): boolean {
    if ((this.accepted & ~this.offeredFeatures) !== 0n) return false;
    return this.options.legacy === true || hasFeature(this.accepted, VIRTIO_F_VERSION_1);
  }

  private refuse(value: number, why: string): void {
    warn(this.name, () => `status 0x${value.toString(16)} refused: ${why}`);
  }
}

function freshQueueSettings(maxSize: number): QueueSettings {
  return { maxSize, size: maxSize, ready: false, descTable: 0, availRing: 0, usedRing: 0 };
}
