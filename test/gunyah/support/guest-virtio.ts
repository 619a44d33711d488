// The guest's virtio-mmio driver for model VMs: the register protocol of Linux's virtio_mmio.c,
// but every register access is a real guest MMIO access on a vCPU of the model (an exit the
// VMM must serve, or an ioeventfd for QueueNotify), and interrupts arrive on the SPI the device
// tree gives the device. Rings are laid out with DriverQueue in guest memory.

import type { GuestMemory } from '../../../framework/guest-memory.ts';
import {
  STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
} from '../../../framework/virtio/constants.ts';
import * as R from '../../../transports/virtio-mmio/registers.ts';
import { DriverQueue } from '../../support/driver-queue.ts';
import type { ModelGuest } from '../model/guest.ts';

export class GuestVirtioDriver {
  queues: DriverQueue[] = [];

  /** `area`: guest memory [start, end) this driver may put its rings and buffers in. */
  constructor(
    readonly guest: ModelGuest,
    readonly base: number,
    readonly memory: GuestMemory,
    readonly area: { start: number; end: number },
  ) {}

  read32(offset: number): Promise<number> {
    return this.guest.read32(this.base + offset);
  }

  write32(offset: number, value: number): Promise<void> {
    return this.guest.write32(this.base + offset, value);
  }

  /** The SPI Linux would request for this device: the one in its device-tree node. */
  get spi(): number {
    return this.guest.deviceSpi(this.base);
  }

  async deviceFeatures(): Promise<bigint> {
    await this.write32(R.DEVICE_FEATURES_SEL, 0);
    const lo = await this.read32(R.DEVICE_FEATURES);
    await this.write32(R.DEVICE_FEATURES_SEL, 1);
    const hi = await this.read32(R.DEVICE_FEATURES);
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  /** Reset, negotiate (accepting every offered feature by default), set up every queue, DRIVER_OK. */
  async init(options: { accept?: (offered: bigint) => bigint; queueSize?: number } = {}): Promise<bigint> {
    await this.write32(R.STATUS, 0);
    await this.write32(R.STATUS, STATUS_ACKNOWLEDGE);
    await this.write32(R.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    const offered = await this.deviceFeatures();
    const accepted = options.accept ? options.accept(offered) : offered;
    await this.write32(R.DRIVER_FEATURES_SEL, 0);
    await this.write32(R.DRIVER_FEATURES, Number(accepted & 0xffffffffn));
    await this.write32(R.DRIVER_FEATURES_SEL, 1);
    await this.write32(R.DRIVER_FEATURES, Number(accepted >> 32n));
    await this.write32(R.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    if (!((await this.read32(R.STATUS)) & STATUS_FEATURES_OK)) throw new Error('device refused FEATURES_OK');
    const count = await this.queueCount();
    const share = Math.floor((this.area.end - this.area.start) / count / 4096) * 4096;
    this.queues = [];
    for (let i = 0; i < count; i++) {
      await this.write32(R.QUEUE_SEL, i);
      const max = await this.read32(R.QUEUE_NUM_MAX);
      const size = Math.min(max, options.queueSize ?? 64);
      const start = this.area.start + i * share;
      const q = new DriverQueue(this.memory, { size, base: start, dataEnd: start + share });
      await this.write32(R.QUEUE_NUM, size);
      await this.writeAddress(R.QUEUE_DESC_LOW, q.descTable);
      await this.writeAddress(R.QUEUE_DRIVER_LOW, q.availRing);
      await this.writeAddress(R.QUEUE_DEVICE_LOW, q.usedRing);
      await this.write32(R.QUEUE_READY, 1);
      this.queues.push(q);
    }
    await this.write32(R.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    return accepted;
  }

  /** Kick a queue: a QueueNotify write (an ioeventfd takes it, or it exits). */
  notify(queueIndex: number): Promise<void> {
    return this.write32(R.QUEUE_NOTIFY, queueIndex);
  }

  /**
   * The interrupt handler: wait for the SPI, read InterruptStatus, acknowledge it, and (as
   * Linux's virtqueue_enable_cb does with EVENT_IDX) ask for an interrupt at the next used entry.
   */
  async interrupt(timeoutMs?: number): Promise<number> {
    await this.guest.interrupt(this.spi, timeoutMs);
    const pending = await this.read32(R.INTERRUPT_STATUS);
    if (pending) await this.write32(R.INTERRUPT_ACK, pending);
    for (const q of this.queues) q.setUsedEvent(q.usedIdx());
    return pending;
  }

  private async queueCount(): Promise<number> {
    let n = 0;
    for (;; n++) {
      await this.write32(R.QUEUE_SEL, n);
      if ((await this.read32(R.QUEUE_NUM_MAX)) === 0) return n;
    }
  }

  private async writeAddress(low: number, addr: number): Promise<void> {
    await this.write32(low, addr % 2 ** 32);
    await this.write32(low + 4, Math.floor(addr / 2 ** 32));
  }
}
