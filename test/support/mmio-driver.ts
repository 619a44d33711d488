// The guest's virtio-mmio driver, for in-process tests: speaks the register
// protocol (virtio 1.2 §4.2.3) to a transport through the MMIO bus exactly as
// Linux's virtio_mmio.c does, and lays out each queue with DriverQueue.

import type { GuestMemory } from '../../framework/guest-memory.ts';
import type { MmioBus } from '../../framework/mmio-bus.ts';
import {
  STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
} from '../../framework/virtio/constants.ts';
import * as R from '../../transports/virtio-mmio/registers.ts';
import { DriverQueue } from './driver-queue.ts';

export interface DriverInitOptions {
  /** Features the driver accepts out of those offered (default: all offered). */
  accept?: (offered: bigint) => bigint;
  /** Queue sizes to program (default: QueueNumMax, capped at 256). */
  queueSizes?: number[];
  /** Bytes of guest memory per queue for rings and buffers. */
  queueArea?: number;
}

export class MmioDriver {
  queues: DriverQueue[] = [];
  private readonly word = new Uint8Array(4);

  constructor(readonly bus: MmioBus, readonly base: number, readonly mem: GuestMemory) {}

  read32(offset: number): number {
    this.bus.dispatch(this.base + offset, false, this.word);
    return new DataView(this.word.buffer).getUint32(0, true);
  }

  write32(offset: number, value: number): void {
    new DataView(this.word.buffer).setUint32(0, value >>> 0, true);
    this.bus.dispatch(this.base + offset, true, this.word);
  }

  /** Access of any width (for width-rule tests). */
  access(offset: number, width: number, value?: number): number {
    const data = new Uint8Array(width);
    if (value !== undefined) {
      for (let i = 0; i < width; i++) data[i] = (value / 2 ** (8 * i)) & 0xff;
      this.bus.dispatch(this.base + offset, true, data);
      return value;
    }
    this.bus.dispatch(this.base + offset, false, data);
    return data.reduce((acc, b, i) => acc + b * 2 ** (8 * i), 0);
  }

  readConfig(offset: number, len: number): Uint8Array {
    const data = new Uint8Array(len);
    this.bus.dispatch(this.base + R.CONFIG + offset, false, data);
    return data;
  }

  get status(): number {
    return this.read32(R.STATUS);
  }

  set status(value: number) {
    this.write32(R.STATUS, value);
  }

  deviceFeatures(): bigint {
    this.write32(R.DEVICE_FEATURES_SEL, 0);
    const lo = this.read32(R.DEVICE_FEATURES);
    this.write32(R.DEVICE_FEATURES_SEL, 1);
    const hi = this.read32(R.DEVICE_FEATURES);
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  writeDriverFeatures(features: bigint): void {
    this.write32(R.DRIVER_FEATURES_SEL, 0);
    this.write32(R.DRIVER_FEATURES, Number(features & 0xffffffffn));
    this.write32(R.DRIVER_FEATURES_SEL, 1);
    this.write32(R.DRIVER_FEATURES, Number((features >> 32n) & 0xffffffffn));
  }

  /** Reset, negotiate, lay out and enable every queue, DRIVER_OK. Returns the accepted features. */
  async init(options: DriverInitOptions = {}): Promise<bigint> {
    await this.reset();
    this.status = STATUS_ACKNOWLEDGE;
    this.status = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
    const offered = this.deviceFeatures();
    const accepted = options.accept ? options.accept(offered) : offered;
    this.writeDriverFeatures(accepted);
    this.status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
    if (!(this.status & STATUS_FEATURES_OK)) throw new Error('device refused FEATURES_OK');
    this.setupQueues(options);
    this.status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
    return accepted;
  }

  /** Program every queue the device has (QueueNumMax != 0) and set QueueReady. */
  setupQueues(options: DriverInitOptions = {}): void {
    const area = options.queueArea ?? 256 * 1024;
    const region = this.mem.regions[0]!;
    this.queues = [];
    for (let i = 0; ; i++) {
      this.write32(R.QUEUE_SEL, i);
      const max = this.read32(R.QUEUE_NUM_MAX);
      if (max === 0) break;
      const size = options.queueSizes?.[i] ?? Math.min(max, 256);
      const start = region.base + i * area;
      const q = new DriverQueue(this.mem, { size, base: start, dataEnd: start + area });
      this.write32(R.QUEUE_NUM, size);
      this.writeAddress(R.QUEUE_DESC_LOW, q.descTable);
      this.writeAddress(R.QUEUE_DRIVER_LOW, q.availRing);
      this.writeAddress(R.QUEUE_DEVICE_LOW, q.usedRing);
      this.write32(R.QUEUE_READY, 1);
      this.queues.push(q);
    }
  }

  writeAddress(lowRegister: number, addr: number): void {
    this.write32(lowRegister, addr % 2 ** 32);
    this.write32(lowRegister + 4, Math.floor(addr / 2 ** 32));
  }

  /** Write 0 to status and wait until it reads back 0 (in-flight I/O may delay it). */
  async reset(timeoutMs = 2000): Promise<void> {
    this.status = 0;
    const deadline = Date.now() + timeoutMs;
    while (this.status !== 0) {
      if (Date.now() > deadline) throw new Error('device did not complete reset');
      await new Promise((r) => setTimeout(r, 1));
    }
  }

  notify(queueIndex: number): void {
    this.write32(R.QUEUE_NOTIFY, queueIndex);
  }

  /** Read InterruptStatus and acknowledge it, like the guest's interrupt handler. */
  acknowledgeInterrupt(): number {
    const pending = this.read32(R.INTERRUPT_STATUS);
    if (pending) this.write32(R.INTERRUPT_ACK, pending);
    return pending;
  }
}

/** Let queued microtasks and timers run (completions are batched per microtask). */
export function settle(ms = 0): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
