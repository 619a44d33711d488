// The virtio-mmio transport (virtio 1.2 §4.2): decodes the register window of
// one device into VirtioDeviceState operations. Modern (version 2) by default,
// legacy (version 1, QueuePFN) as an option. It declares the ioeventfds (one
// per queue at QueueNotify, datamatch = queue index) and the one interrupt it
// needs; the VM runtime registers them. It never calls an ioctl itself.

import type { GuestMemory } from '../../framework/guest-memory.ts';
import type { Doorbell } from '../../framework/doorbell.ts';
import { warn } from '../../framework/log.ts';
import type { MmioHandler } from '../../framework/mmio-bus.ts';
import type { VirtioDevice } from '../../framework/virtio/device.ts';
import { VirtioDeviceState } from '../../framework/virtio/device-state.ts';
import { STATUS_DRIVER_OK } from '../../framework/virtio/constants.ts';
import * as R from './registers.ts';

export interface VirtioMmioOptions {
  /** Guest-physical base of the register window. */
  base: number;
  /** Interrupt line (x86 GSI / arm64 SPI) the guest is told about. */
  irq: number;
  /** Current guest memory. */
  memory: () => GuestMemory | null;
  /** Raises the device interrupt (an irqfd, or a callback in tests). */
  doorbell: Doorbell;
  /** virtio-mmio version 1 (legacy QueuePFN layout). */
  legacy?: boolean;
}

/** An ioeventfd the runtime should register so QueueNotify writes never exit to userspace. */
export interface NotifyRegistration {
  readonly queueIndex: number;
  readonly address: number;
  readonly length: 4;
  readonly datamatch: number;
}

export class VirtioMmioTransport implements MmioHandler {
  readonly size = R.WINDOW_SIZE;
  readonly state: VirtioDeviceState;
  readonly base: number;
  readonly irq: number;
  readonly legacy: boolean;
  private interruptStatus = 0;
  private deviceFeaturesSel = 0;
  private driverFeaturesSel = 0;
  private queueSel = 0;
  private shmSel = 0;
  private guestPageSize = 4096;
  private readonly legacyAlign: number[];
  private readonly legacyPfn: number[];
  /** Accesses the spec forbids (wrong width, misaligned, write to read-only): ignored and counted. */
  badAccesses = 0;

  constructor(readonly device: VirtioDevice, private readonly options: VirtioMmioOptions) {
    this.base = options.base;
    this.irq = options.irq;
    this.legacy = options.legacy ?? false;
    this.state = new VirtioDeviceState(device, {
      memory: options.memory,
      legacy: this.legacy,
      name: `virtio-mmio@0x${options.base.toString(16)}`,
      interrupts: {
        usedBuffer: () => this.raise(R.INTERRUPT_USED_BUFFER),
        configChange: () => this.raise(R.INTERRUPT_CONFIG_CHANGE),
      },
    });
    this.legacyAlign = device.queues.map(() => 4096);
    this.legacyPfn = device.queues.map(() => 0);
    options.doorbell.bindPending(() => this.interruptStatus !== 0);
  }

  /** The ioeventfds this device wants: one per queue, matching the queue index written to QueueNotify. */
  notifyRegistrations(): NotifyRegistration[] {
    return this.device.queues.map((_, i) => ({
      queueIndex: i,
      address: this.base + R.QUEUE_NOTIFY,
      length: 4,
      datamatch: i,
    }));
  }

  /** `virtio_mmio.device=` kernel command-line entry for x86 guests. */
  get cmdline(): string {
    return `virtio_mmio.device=${this.size >= 1024 ? `${this.size / 1024}K` : this.size}@0x${this.base.toString(16)}:${this.irq}`;
  }

  /** A queue notification that arrived through an ioeventfd (or QueueNotify). */
  notify(queueIndex: number): void {
    this.state.notify(queueIndex);
  }

  get pendingInterrupts(): number {
    return this.interruptStatus;
  }

  read(offset: number, data: Uint8Array): void {
    if (offset >= R.CONFIG) {
      this.device.config.read(offset - R.CONFIG, data);
      return;
    }
    if (data.length !== 4 || (offset & 3) !== 0) {
      this.badAccesses++;
      data.fill(0);
      return;
    }
    writeU32(data, this.readRegister(offset));
  }

  write(offset: number, data: Uint8Array): void {
    if (offset >= R.CONFIG) {
      this.device.config.write(offset - R.CONFIG, data);
      return;
    }
    if (data.length !== 4 || (offset & 3) !== 0) {
      this.badAccesses++;
      return;
    }
    this.writeRegister(offset, readU32(data));
  }

  private readRegister(offset: number): number {
    const q = this.state.queues[this.queueSel];
    switch (offset) {
      case R.MAGIC_VALUE: return R.MAGIC;
      case R.VERSION: return this.legacy ? 1 : 2;
      case R.DEVICE_ID: return this.device.type;
      case R.VENDOR_ID: return this.device.vendor;
      case R.DEVICE_FEATURES:
        return this.deviceFeaturesSel > 1 ? 0 : Number((this.state.offeredFeatures >> BigInt(32 * this.deviceFeaturesSel)) & 0xffffffffn);
      case R.QUEUE_NUM_MAX: return q ? q.maxSize : 0;
      case R.QUEUE_READY: return !this.legacy && q?.ready ? 1 : 0;
      case R.LEGACY_QUEUE_PFN: return this.legacy && q ? this.legacyPfn[this.queueSel]! : 0;
      case R.INTERRUPT_STATUS: return this.interruptStatus;
      case R.STATUS: return this.state.status;
      case R.SHM_LEN_LOW: case R.SHM_LEN_HIGH: case R.SHM_BASE_LOW: case R.SHM_BASE_HIGH:
        return this.legacy ? 0 : 0xffffffff; // no shared memory regions: "length -1"
      case R.CONFIG_GENERATION: return this.legacy ? 0 : this.device.config.generation;
      case R.QUEUE_RESET: return 0;
      default:
        this.badAccesses++; // write-only or reserved register
        return 0;
    }
  }

  private writeRegister(offset: number, value: number): void {
    const sel = this.queueSel;
    const q = this.state.queues[sel];
    const queueWritable = q !== undefined && !q.ready && !this.state.isQueueRunning(sel);
    switch (offset) {
      case R.DEVICE_FEATURES_SEL: this.deviceFeaturesSel = value; return;
      case R.DRIVER_FEATURES: this.state.writeDriverFeatures(this.driverFeaturesSel, value); return;
      case R.DRIVER_FEATURES_SEL: this.driverFeaturesSel = value; return;
      case R.QUEUE_SEL: this.queueSel = value; return;
      case R.QUEUE_NUM: if (queueWritable) q.size = value; return;
      case R.QUEUE_READY: if (!this.legacy) this.setQueueReady(sel, value === 1); return;
      case R.QUEUE_NOTIFY: this.state.notify(value & 0xffff); return;
      case R.INTERRUPT_ACK: this.interruptStatus &= ~value; return;
      case R.STATUS:
        this.state.writeStatus(value);
        if (value === 0) this.resetTransport();
        return;
      case R.QUEUE_DESC_LOW: if (queueWritable && !this.legacy) q.descTable = setLow(q.descTable, value); return;
      case R.QUEUE_DESC_HIGH: if (queueWritable && !this.legacy) q.descTable = setHigh(q.descTable, value); return;
      case R.QUEUE_DRIVER_LOW: if (queueWritable && !this.legacy) q.availRing = setLow(q.availRing, value); return;
      case R.QUEUE_DRIVER_HIGH: if (queueWritable && !this.legacy) q.availRing = setHigh(q.availRing, value); return;
      case R.QUEUE_DEVICE_LOW: if (queueWritable && !this.legacy) q.usedRing = setLow(q.usedRing, value); return;
      case R.QUEUE_DEVICE_HIGH: if (queueWritable && !this.legacy) q.usedRing = setHigh(q.usedRing, value); return;
      case R.SHM_SEL: this.shmSel = value; return;
      case R.LEGACY_GUEST_PAGE_SIZE: if (this.legacy) this.guestPageSize = value; return;
      case R.LEGACY_QUEUE_ALIGN: if (this.legacy && q) this.legacyAlign[sel] = value; return;
      case R.LEGACY_QUEUE_PFN: if (this.legacy && q) this.setLegacyPfn(sel, value); return;
      default:
        this.badAccesses++;
        warn(this.state.name, () => `write 0x${value.toString(16)} to read-only or reserved register 0x${offset.toString(16)} ignored`);
    }
  }

  private setQueueReady(index: number, ready: boolean): void {
    const q = this.state.queues[index];
    if (!q) return;
    if (ready && !q.ready) {
      q.ready = true;
      if (this.state.status & STATUS_DRIVER_OK) this.state.startQueue(index);
    } else if (!ready && q.ready) {
      q.ready = false;
      void this.state.stopQueue(index);
    }
  }

  private setLegacyPfn(index: number, pfn: number): void {
    const q = this.state.queues[index]!;
    this.legacyPfn[index] = pfn;
    if (pfn === 0) {
      this.setQueueReady(index, false);
      return;
    }
    // Legacy layout (virtio 1.0 §2.4.2): descriptors, then avail, then used at the next QueueAlign boundary.
    const align = this.legacyAlign[index]!;
    const desc = pfn * this.guestPageSize;
    const avail = desc + 16 * q.size;
    const availEnd = avail + 6 + 2 * q.size;
    const used = align > 0 && (align & (align - 1)) === 0 ? Math.ceil(availEnd / align) * align : NaN;
    if (!Number.isSafeInteger(desc) || !Number.isSafeInteger(used)) {
      this.state.needsReset(`queue ${index}: legacy PFN 0x${pfn.toString(16)} / align ${align} gives no valid ring`);
      return;
    }
    q.descTable = desc;
    q.availRing = avail;
    q.usedRing = used;
    this.setQueueReady(index, true);
  }

  private raise(bit: number): void {
    this.interruptStatus |= bit;
    this.options.doorbell.ring();
  }

  private resetTransport(): void {
    this.interruptStatus = 0;
    this.deviceFeaturesSel = 0;
    this.driverFeaturesSel = 0;
    this.queueSel = 0;
    this.shmSel = 0;
    this.legacyPfn.fill(0);
  }
}

function readU32(data: Uint8Array): number {
  return (data[0]! | (data[1]! << 8) | (data[2]! << 16) | (data[3]! << 24)) >>> 0;
}

function writeU32(data: Uint8Array, value: number): void {
  data[0] = value & 0xff;
  data[1] = (value >>> 8) & 0xff;
  data[2] = (value >>> 16) & 0xff;
  data[3] = (value >>> 24) & 0xff;
}

const TWO_32 = 0x1_0000_0000;

function setLow(addr: number, low: number): number {
  return Math.floor(addr / TWO_32) * TWO_32 + (low >>> 0);
}

function setHigh(addr: number, high: number): number {
  // Addresses at or above 2^53 cannot be guest RAM here; keep them out of range rather than losing bits.
  return (high >>> 0) >= 0x200000 ? Number.MAX_SAFE_INTEGER : (high >>> 0) * TWO_32 + (addr % TWO_32);
}
