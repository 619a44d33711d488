// Fuzz target: virtio-mmio register sequences against every device (rng, console, blk,
// read-only blk), modern and legacy. One input is a sequence of guest actions: raw accesses
// at any offset (registers, config space, past the window), any width (1, 2, 4, 8, and odd
// ones), any value; pieces of a real driver's bring-up (status steps, feature words, queue
// programming with good or hostile ring addresses and sizes); chains on the rings (valid
// requests and garbage descriptors) with notifications; resets; interrupt acks; host events.
// Invariants: no exception escapes the bus; identification registers never change; accesses
// of the wrong width or alignment read 0; config reads past the device's config read 0;
// InterruptStatus holds only defined bits; status never shows a bit the driver did not set
// (other than DEVICE_NEEDS_RESET), FEATURES_OK only for an acceptable feature set, and the
// status bits only in their spec order; a reset reads back 0 once host I/O settled;
// DEVICE_NEEDS_RESET while DRIVER_OK comes with a configuration interrupt; a driver that
// follows the spec never sees DEVICE_NEEDS_RESET and gets every request back; nothing is
// touched outside guest memory.

import { CallbackDoorbell } from '../../../framework/doorbell.ts';
import { MmioBus } from '../../../framework/mmio-bus.ts';
import {
  STATUS_ACKNOWLEDGE, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK,
  VIRTIO_F_VERSION_1,
} from '../../../framework/virtio/constants.ts';
import { ConfigSpace } from '../../../framework/virtio/config-space.ts';
import { legacyRingLayout } from '../../../framework/virtio/ring-layout.ts';
import { VirtioMmioTransport } from '../../../transports/virtio-mmio/mmio-transport.ts';
import * as R from '../../../transports/virtio-mmio/registers.ts';
import { DriverQueue, type BufferSpec } from '../../support/driver-queue.ts';
import { DEVICE_KINDS, makeDevice, type FuzzDevice } from '../../support/fuzz-devices.ts';
import type { FuzzStats, FuzzTarget } from '../../support/fuzz-engine.ts';
import { FuzzMemory } from '../../support/fuzz-memory.ts';
import type { Prng } from '../../support/prng.ts';

const BASE = 0xd000_0000;
const RAM = 0x20000;
const QUEUE_AREA = 0x8000;
const REGISTERS = [
  R.MAGIC_VALUE, R.VERSION, R.DEVICE_ID, R.VENDOR_ID, R.DEVICE_FEATURES, R.DEVICE_FEATURES_SEL, R.DRIVER_FEATURES,
  R.DRIVER_FEATURES_SEL, R.LEGACY_GUEST_PAGE_SIZE, R.QUEUE_SEL, R.QUEUE_NUM_MAX, R.QUEUE_NUM, R.LEGACY_QUEUE_ALIGN,
  R.LEGACY_QUEUE_PFN, R.QUEUE_READY, R.QUEUE_NOTIFY, R.INTERRUPT_STATUS, R.INTERRUPT_ACK, R.STATUS, R.QUEUE_DESC_LOW,
  R.QUEUE_DESC_HIGH, R.QUEUE_DRIVER_LOW, R.QUEUE_DRIVER_HIGH, R.QUEUE_DEVICE_LOW, R.QUEUE_DEVICE_HIGH, R.SHM_SEL,
  R.SHM_LEN_LOW, R.SHM_LEN_HIGH, R.SHM_BASE_LOW, R.SHM_BASE_HIGH, R.QUEUE_RESET, R.CONFIG_GENERATION,
];

interface Context {
  memory: FuzzMemory;
}

class Violation extends Error {}
function check(cond: boolean, message: string): void {
  if (!cond) throw new Violation(message);
}

/** One case's world: the device behind its transport on a bus, and what the driver did so far. */
class World {
  readonly bus = new MmioBus();
  readonly transport: VirtioMmioTransport;
  readonly doorbell: CallbackDoorbell;
  readonly queues: (DriverQueue | null)[];
  readonly queueCount: number;
  /** Status bits the driver wrote since the last reset. */
  driverBits = 0;
  /** Driver feature words as written while FEATURES_OK was clear (index = select). */
  driverFeatures = [0, 0];
  driverFeaturesSel = 0;
  /** QueueSel as last written (null: unknown since a reset). */
  queueSel: number | null = 0;
  /** A configuration interrupt was raised at some point. */
  configInterrupts = 0;
  /** Device status and config-interrupt count at the end of the previous action. */
  private statusBefore = 0;
  private configInterruptsBefore = 0;
  /** The driver wrote 0 to status and the device is still finishing in-flight I/O. */
  resetPending = false;
  /** Every action so far followed the spec (clean drivers never see NEEDS_RESET). */
  clean = true;
  submitted = 0;
  completed = 0;

  constructor(readonly fd: FuzzDevice, readonly memory: FuzzMemory, readonly legacy: boolean) {
    this.doorbell = new CallbackDoorbell('edge', () => {
      if (this.transport.pendingInterrupts & R.INTERRUPT_CONFIG_CHANGE) this.configInterrupts++;
    });
    this.transport = new VirtioMmioTransport(fd.device, { base: BASE, irq: 5, memory: () => memory.mem, doorbell: this.doorbell, legacy });
    this.bus.register(BASE, this.transport.size, this.transport, fd.kind);
    this.queueCount = fd.device.queues.length;
    this.queues = fd.device.queues.map(() => null);
  }

  get offered(): bigint {
    return this.transport.state.offeredFeatures;
  }

  /** One access through the bus; `data.length` is the width. Exceptions are violations. */
  access(offset: number, width: number, write: boolean, value = 0): number {
    const data = new Uint8Array(width);
    if (write) for (let i = 0; i < width; i++) data[i] = Math.floor(value / 2 ** (8 * i)) & 0xff;
    try {
      this.bus.dispatch(BASE + offset, write, data);
    } catch (err) {
      throw new Violation(`${write ? 'write' : 'read'} of ${width} bytes at 0x${offset.toString(16)} threw: ${(err as Error).message}`);
    }
    if (write) this.noteWrite(offset, width, value);
    let v = 0;
    for (let i = width - 1; i >= 0; i--) v = v * 256 + data[i]!;
    return v;
  }

  read32(offset: number): number {
    const v = this.access(offset, 4, false);
    this.checkRead(offset, 4, v);
    return v;
  }

  write32(offset: number, value: number): void {
    this.access(offset, 4, true, value >>> 0);
  }

  /** What the spec-following driver model learns from a write. */
  private noteWrite(offset: number, width: number, value: number): void {
    if (offset >= R.CONFIG || width !== 4 || offset % 4 !== 0) return;
    value >>>= 0;
    switch (offset) {
      case R.STATUS:
        if ((value & 0xff) === 0) {
          this.queueSel = null; // whether QueueSel survives a reset is the device's business
          // Reset is immediate for the driver (status reads 0 at once); old I/O settles in the background.
          this.forget();
        } else this.driverBits |= value & 0xff;
        break;
      case R.DRIVER_FEATURES_SEL: this.driverFeaturesSel = value; break;
      case R.DRIVER_FEATURES:
        if (!(this.transport.state.status & STATUS_FEATURES_OK) && this.driverFeaturesSel < 2) this.driverFeatures[this.driverFeaturesSel] = value;
        break;
      case R.QUEUE_SEL: this.queueSel = value; break;
    }
  }

  /** Invariants of a register or config read of `width` bytes at `offset` that returned `v`. */
  checkRead(offset: number, width: number, v: number): void {
    if (offset >= R.WINDOW_SIZE) {
      check(v === 0, `read past the window at 0x${offset.toString(16)} returned ${v}`);
      return;
    }
    if (offset >= R.CONFIG) {
      const config = this.fd.device.config;
      const at = offset - R.CONFIG;
      if (config instanceof ConfigSpace) {
        for (let i = 0; i < width; i++) {
          const want = at + i < config.size ? config.bytes[at + i]! : 0;
          check(Math.floor(v / 2 ** (8 * i)) % 256 === want, `config byte ${at + i} read ${Math.floor(v / 2 ** (8 * i)) % 256}, config holds ${want}`);
        }
      }
      return;
    }
    if (width !== 4 || offset % 4 !== 0) {
      check(v === 0, `${width}-byte register read at 0x${offset.toString(16)} returned ${v} (must read 0)`);
      return;
    }
    switch (offset) {
      case R.MAGIC_VALUE: check(v === R.MAGIC, `MagicValue ${v.toString(16)}`); break;
      case R.VERSION: check(v === (this.legacy ? 1 : 2), `Version ${v}`); break;
      case R.DEVICE_ID: check(v === this.fd.device.type, `DeviceID ${v}`); break;
      case R.VENDOR_ID: check(v === this.fd.device.vendor, `VendorID ${v}`); break;
      case R.INTERRUPT_STATUS: check((v & ~3) === 0, `InterruptStatus 0x${v.toString(16)} has undefined bits`); break;
      case R.QUEUE_NUM_MAX:
        if (this.queueSel !== null) {
          const want = this.fd.device.queues[this.queueSel]?.maxSize ?? 0;
          check(v === want, `QueueNumMax of queue ${this.queueSel} reads ${v}, expected ${want}`);
        }
        break;
      case R.STATUS: this.checkStatus(v); break;
    }
  }

  checkStatus(s: number): void {
    check((s & ~this.driverBits & ~STATUS_DEVICE_NEEDS_RESET) === 0,
      `status 0x${s.toString(16)} shows bits the driver never set (driver wrote 0x${this.driverBits.toString(16)})`);
    if (s & STATUS_DRIVER) check((s & STATUS_ACKNOWLEDGE) !== 0, `status 0x${s.toString(16)}: DRIVER without ACKNOWLEDGE`);
    if (s & STATUS_FEATURES_OK) {
      check((s & STATUS_DRIVER) !== 0, `status 0x${s.toString(16)}: FEATURES_OK without DRIVER`);
      const accepted = BigInt(this.driverFeatures[0]!) | (BigInt(this.driverFeatures[1]!) << 32n);
      check((accepted & ~this.offered) === 0n, `FEATURES_OK for features 0x${accepted.toString(16)} not offered (0x${this.offered.toString(16)})`);
      if (!this.legacy) check((accepted & (1n << BigInt(VIRTIO_F_VERSION_1))) !== 0n, 'FEATURES_OK without VERSION_1');
    }
    if (s & STATUS_DRIVER_OK && !(s & STATUS_FAILED)) {
      check((s & (this.legacy ? STATUS_DRIVER : STATUS_FEATURES_OK)) !== 0, `status 0x${s.toString(16)}: DRIVER_OK too early`);
    }
    if (this.clean) check((s & STATUS_DEVICE_NEEDS_RESET) === 0, `a spec-following driver got DEVICE_NEEDS_RESET (status 0x${s.toString(16)})`);
  }

  /** What a completed reset wipes. */
  private forget(): void {
    this.driverBits = 0;
    this.driverFeatures = [0, 0];
    this.driverFeaturesSel = 0;
  }

  /** After every action: cross-layer invariants that do not depend on what was read. */
  after(): void {
    if (this.resetPending) {
      this.resetPending = false;
      this.forget();
    }
    const s = this.transport.state.status;
    // §2.1.2: setting DEVICE_NEEDS_RESET while DRIVER_OK is set comes with a configuration change notification.
    if ((s & STATUS_DEVICE_NEEDS_RESET) && !(this.statusBefore & STATUS_DEVICE_NEEDS_RESET) && (s & STATUS_DRIVER_OK)) {
      check(this.configInterrupts > this.configInterruptsBefore, 'DEVICE_NEEDS_RESET while DRIVER_OK without a configuration interrupt');
    }
    this.statusBefore = s;
    this.configInterruptsBefore = this.configInterrupts;
    if (this.clean) check((s & STATUS_DEVICE_NEEDS_RESET) === 0, `a spec-following driver got DEVICE_NEEDS_RESET (status 0x${s.toString(16)})`);
    this.memory.assertObserved();
  }

  writeAddress(low: number, addr: number): void {
    this.write32(low, addr % 2 ** 32);
    this.write32(low + 4, Math.floor(addr / 2 ** 32));
  }
}

// ---- actions ----------------------------------------------------------------------------------

function interestingValue(rng: Prng): number {
  switch (rng.int(8)) {
    case 0: return 0;
    case 1: return 1;
    case 2: return 0xffff_ffff;
    case 3: return rng.int(16);
    case 4: return 1 << rng.int(32) >>> 0;
    case 5: return rng.pick([STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_FEATURES_OK, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_DEVICE_NEEDS_RESET, 0x0f, 0x8f]);
    default: return rng.u32();
  }
}

function randomAccess(w: World, rng: Prng, stats: FuzzStats): void {
  const where = rng.int(10);
  const offset = where < 5 ? rng.pick(REGISTERS) + (rng.chance(0.1) ? rng.int(1, 4) : 0)
    : where < 8 ? R.CONFIG + rng.int(0x100) : where < 9 ? rng.int(R.WINDOW_SIZE) : R.WINDOW_SIZE + rng.int(64);
  const width = rng.chance(0.7) ? 4 : rng.pick([1, 2, 8, 3, 16]);
  const write = rng.chance(0.5);
  const value = interestingValue(rng);
  if (write) {
    w.clean = false; // a random write is no spec-following driver: the device may refuse anything after it
    w.access(offset, width, true, width > 4 ? 0 : value);
    stats.count('access: write');
  } else {
    const v = w.access(offset, width, false);
    if (width <= 4) w.checkRead(offset, width, v);
    stats.count('access: read');
  }
}

/** The driver's bring-up, stopping after a random number of steps (or going all the way). */
function bringUp(w: World, rng: Prng, stats: FuzzStats, full: boolean): void {
  const steps = full ? 99 : rng.int(1, 8);
  if (!full) w.clean = false; // a half-done bring-up followed by requests is a driver bug
  let step = 0;
  const go = () => step++ < steps;
  if (!go()) return;
  w.write32(R.STATUS, 0);
  w.queues.fill(null);
  if (w.read32(R.STATUS) !== 0) return; // reset still in progress: try again later
  if (!go()) return;
  w.write32(R.STATUS, STATUS_ACKNOWLEDGE);
  if (!go()) return;
  w.write32(R.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  w.write32(R.DEVICE_FEATURES_SEL, 0);
  const lo = w.read32(R.DEVICE_FEATURES);
  w.write32(R.DEVICE_FEATURES_SEL, 1);
  const hi = w.read32(R.DEVICE_FEATURES);
  const offered = BigInt(lo) | (BigInt(hi) << 32n);
  check(offered === w.offered, `DeviceFeatures reads 0x${offered.toString(16)}, device offers 0x${w.offered.toString(16)}`);
  if (!go()) return;
  let accept = offered;
  if (!full && rng.chance(0.3)) {
    accept = rng.chance(0.5) ? offered & ((BigInt(rng.u32()) << 32n) | BigInt(rng.u32())) : (BigInt(rng.u32()) << 32n) | BigInt(rng.u32());
    if ((accept & ~offered) !== 0n) w.clean = false; // asking for features not offered: FEATURES_OK will be refused
  }
  w.write32(R.DRIVER_FEATURES_SEL, 0);
  w.write32(R.DRIVER_FEATURES, Number(accept & 0xffff_ffffn));
  w.write32(R.DRIVER_FEATURES_SEL, 1);
  w.write32(R.DRIVER_FEATURES, Number(accept >> 32n));
  if (!go()) return;
  if (!w.legacy) {
    w.write32(R.STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    const s = w.read32(R.STATUS);
    if (!(s & STATUS_FEATURES_OK)) {
      stats.count('features refused');
      w.clean = false; // a real driver gives up here
      return;
    }
  }
  if (!go()) return;
  for (let i = 0; i < w.queueCount + (rng.chance(0.2) ? 1 : 0); i++) {
    w.write32(R.QUEUE_SEL, i);
    const max = w.read32(R.QUEUE_NUM_MAX);
    if (max === 0) break;
    let size = Math.min(max, 1 << rng.int(1, 7));
    const hostile = !full && rng.chance(0.15);
    if (hostile) {
      size = rng.pick([0, 3, max * 2, 0xffff_ffff, 1 << rng.int(16)]);
      w.clean = false;
      stats.count('queue: hostile size');
    }
    w.write32(R.QUEUE_NUM, size);
    const area = (i + 1) * QUEUE_AREA; // not page 0: a legacy QueuePFN of 0 means "no queue"
    let dq: DriverQueue | null = null;
    if (w.legacy) {
      const layout = legacyRingLayout(area, size > 0 && size <= 256 ? size : 1);
      w.write32(R.LEGACY_GUEST_PAGE_SIZE, 4096);
      w.write32(R.LEGACY_QUEUE_ALIGN, 4096);
      if (!hostile && !(rng.chance(0.1) && !full)) {
        dq = new DriverQueue(w.memory.mem, { size, ...layout, dataEnd: area + QUEUE_AREA });
        w.write32(R.LEGACY_QUEUE_PFN, area / 4096);
      } else {
        w.clean = false;
        w.write32(R.LEGACY_QUEUE_PFN, rng.pick([rng.u32(), 0x100, 0x20_0000 >>> 12, 0xffff_ffff]));
        stats.count('queue: hostile pfn');
      }
    } else {
      if (!hostile) dq = new DriverQueue(w.memory.mem, { size, base: area, dataEnd: area + QUEUE_AREA });
      const desc = dq?.descTable ?? rng.int(RAM), avail = dq?.availRing ?? rng.int(RAM), used = dq?.usedRing ?? rng.int(RAM);
      const bad = !full && rng.chance(0.1);
      if (bad) {
        w.clean = false;
        stats.count('queue: hostile address');
        dq = null;
      }
      const anywhere = () => rng.pick([0x20_1000, RAM - 8, 2 ** 53 - 2, 2 ** 40 + 4096, rng.u32() * 4096, 0x10_0000 + 7]);
      w.writeAddress(R.QUEUE_DESC_LOW, bad && rng.chance(0.5) ? anywhere() : desc);
      w.writeAddress(R.QUEUE_DRIVER_LOW, bad && rng.chance(0.5) ? anywhere() : avail);
      w.writeAddress(R.QUEUE_DEVICE_LOW, bad && rng.chance(0.5) ? anywhere() : used);
      w.write32(R.QUEUE_READY, 1);
    }
    w.queues[i] = dq;
  }
  if (!go()) return;
  const status = w.legacy ? STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK
    : STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
  w.write32(R.STATUS, status);
  stats.count('bring-up: DRIVER_OK');
}

function header(type: number, sector: number): Uint8Array {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setUint32(0, type, true);
  v.setBigUint64(8, BigInt(sector), true);
  return b;
}

/** A request a spec-following driver would send on queue `q` of this device. */
function validRequest(w: World, q: number, rng: Prng): BufferSpec[] {
  switch (w.fd.kind) {
    case 'rng': return [{ writableLen: rng.int(1, 600) }];
    case 'console': return q === 0 ? [{ writableLen: rng.int(1, 300) }] : [{ data: rng.bytes(rng.int(1, 300)) }];
    default: {
      const capacity = w.fd.file!.size / 512;
      const sectors = rng.int(0, Math.min(8, capacity));
      const sector = rng.int(capacity - sectors + 1);
      switch (rng.int(4)) {
        case 0: return [{ data: header(0, sector) }, ...(sectors ? [{ writableLen: 512 * sectors }] : []), { writableLen: 1 }];
        case 1: return [{ data: header(1, sector) }, ...(sectors ? [{ data: rng.bytes(512 * sectors) }] : []), { writableLen: 1 }];
        case 2: return [{ data: header(4, 0) }, { writableLen: 1 }];
        default: return [{ data: header(8, 0) }, { writableLen: 21 }];
      }
    }
  }
}

function submit(w: World, rng: Prng, stats: FuzzStats): void {
  const q = rng.int(w.queueCount);
  const dq = w.queues[q];
  if (!dq) return;
  dq.takeUsed();
  const hostile = rng.chance(0.2);
  if (!hostile) {
    const specs = validRequest(w, q, rng);
    if (dq.freeDescriptors < specs.length && !rng.chance(0.5)) return;
    try {
      dq.addChain(specs, { indirect: rng.chance(0.2) && (w.transport.state.driverFeatures & (1n << 28n)) !== 0n });
      w.submitted++;
      stats.count('chain: valid');
    } catch {
      return; // ring or data area full
    }
  } else {
    w.clean = false;
    const slot = rng.int(dq.size);
    dq.writeDescriptor(slot, {
      addr: rng.pick([rng.int(RAM), 0x20_1000, rng.u32() * 4096, 2 ** 53 - 8]), len: rng.pick([0, 1, 16, rng.u32()]),
      flags: rng.int(8), next: rng.int(dq.size + 2),
    });
    dq.offer(rng.chance(0.9) ? slot : rng.int(0x10000));
    stats.count('chain: hostile');
  }
  const value = rng.chance(0.9) ? q : rng.pick([w.queueCount, 0xffff_ffff, rng.u32()]);
  if (value !== q) w.clean = false;
  w.write32(R.QUEUE_NOTIFY, value);
}

async function resetAndWait(w: World, rng: Prng, stats: FuzzStats): Promise<void> {
  w.write32(R.STATUS, 0);
  w.queues.fill(null);
  for (let i = 0; i < 50 && w.transport.state.isQuiescing; i++) await w.fd.settle(rng);
  const s = w.read32(R.STATUS);
  check(s === 0, `status reads 0x${s.toString(16)} after a reset with all host I/O settled`);
  stats.count('reset');
}

async function finish(w: World, rng: Prng): Promise<void> {
  // Complete everything in flight; a clean driver gets every request back.
  for (let i = 0; i < 20; i++) {
    await w.fd.settle(rng);
    if (w.fd.kind === 'console') w.fd.host!.input.next(new Uint8Array(4096)); // fill pending receive buffers
  }
  if (!w.clean) return;
  let outstanding = 0;
  for (let q = 0; q < w.queueCount; q++) {
    const dq = w.queues[q];
    if (!dq) continue;
    dq.takeUsed();
    if (w.fd.kind === 'console' && q === 0) continue; // receive buffers wait for host bytes
    outstanding += dq.chainsInFlight;
  }
  check(outstanding === 0, `${outstanding} requests of a spec-following driver never completed`);
}

export const mmioTarget: FuzzTarget<Context> = {
  name: 'mmio',
  summary: 'virtio-mmio register sequences (any order/width/value) and rings against rng, console, blk',
  budget: 20000,
  open: () => ({ memory: FuzzMemory.standard(RAM) }),
  async run(rng, { memory }, stats) {
    memory.clear();
    const kind = rng.pick(DEVICE_KINDS);
    const legacy = rng.chance(0.2);
    const fd = makeDevice(kind, rng);
    const w = new World(fd, memory, legacy);
    stats.count(`device: ${kind}${legacy ? ' (legacy)' : ''}`);
    try {
      const cleanRun = rng.chance(0.25);
      if (cleanRun) bringUp(w, rng, stats, true);
      const ops = rng.int(5, 40);
      for (let i = 0; i < ops; i++) {
        const a = rng.int(100);
        if (!cleanRun && a < 35) randomAccess(w, rng, stats);
        else if (!cleanRun && a < 45) bringUp(w, rng, stats, rng.chance(0.5));
        else if (a < 75) submit(w, rng, stats);
        else if (a < 80 && !cleanRun) await resetAndWait(w, rng, stats);
        else if (a < 85) w.read32(R.STATUS);
        else if (a < 90) {
          const pending = w.read32(R.INTERRUPT_STATUS);
          w.write32(R.INTERRUPT_ACK, pending);
        } else if (a < 95) {
          if (fd.host) {
            if (rng.chance(0.5)) fd.host.input.next(rng.bytes(rng.int(1, 200)));
            else if (rng.chance(0.5)) fd.host.saturate = !fd.host.saturate;
            else fd.host.size.next({ cols: rng.int(1, 500), rows: rng.int(1, 200) });
          }
          await fd.settle(rng);
        } else {
          if (fd.file) fd.file.releaseOne(rng);
          await Promise.resolve();
        }
        w.after();
      }
      await finish(w, rng);
      w.after();
      if (w.clean) stats.count('clean driver served');
      if (w.transport.state.status & STATUS_DEVICE_NEEDS_RESET) stats.count('device needs reset');
      if (w.transport.badAccesses > 0) stats.count('bad accesses counted');
      memory.assertClean();
    } finally {
      fd.file?.pending.splice(0);
      fd.close();
    }
  },
  checkCoverage(stats) {
    stats.require('bring-up: DRIVER_OK', 'clean driver served', 'device needs reset', 'reset', 'chain: valid', 'chain: hostile',
      'queue: hostile size', 'queue: hostile address', 'queue: hostile pfn', 'features refused', 'bad accesses counted',
      ...DEVICE_KINDS.flatMap((k) => [`device: ${k}`, `device: ${k} (legacy)`]));
  },
};
