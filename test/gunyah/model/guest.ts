// The guest side of a model VM, for test scripts: MMIO accesses made by a vCPU (they complete
// only when the VMM runs that vCPU), guest memory as the guest sees it (lent regions included),
// interrupts raised by doorbells on the SPIs the device tree gave them, and VM-level events the
// resource manager would report (exit with a type and reason, crash).

import { GuestMemory } from '../../../framework/guest-memory.ts';
import type { ModelBell, ModelVm } from './model-vm.ts';

export class ModelGuest {
  private cpu = 0;

  constructor(readonly vm: ModelVm) {}

  /** The vCPU (by id) later accesses are made on. Default 0. */
  on(vcpuId: number): this {
    this.cpu = vcpuId;
    return this;
  }

  private vcpu(id = this.cpu) {
    const v = this.vm.vcpus.find((c) => c.id === id);
    if (!v) throw new Error(`guest: no vCPU ${id}`);
    return v;
  }

  read(addr: number, len: 1 | 2 | 4 | 8): Promise<bigint> {
    return this.vcpu().access('read', BigInt(addr), len);
  }

  async write(addr: number, len: 1 | 2 | 4 | 8, value: number | bigint): Promise<void> {
    await this.vcpu().access('write', BigInt(addr), len, BigInt(value));
  }

  async read32(addr: number): Promise<number> {
    return Number(await this.read(addr, 4));
  }

  write32(addr: number, value: number): Promise<void> {
    return this.write(addr, 4, value >>> 0);
  }

  /** Guest RAM as the guest sees it: every region, lent or not (the pinned pages themselves). */
  get memory(): GuestMemory {
    return new GuestMemory(this.vm.mappings.map((m) => ({ base: Number(m.guestPhysAddr), size: Number(m.size), bytes: m.bytes })));
  }

  /** The SPI the device tree gives the virtio-mmio device at `base` (what Linux would use). */
  deviceSpi(base: number): number {
    const spi = this.vm.config?.virtioDevices.get(base);
    if (spi === undefined) throw new Error(`guest: no virtio,mmio node at 0x${base.toString(16)} in the device tree`);
    return spi;
  }

  /** The doorbell that raises `spi` (the guest's interrupt line), if the VM config has one. */
  line(spi: number): ModelBell {
    for (const bell of this.vm.bells.values()) if (bell.spi === spi) return bell;
    throw new Error(`guest: no doorbell raises SPI ${spi}`);
  }

  /** Waits until `spi` is pending, then takes it (the GIC acknowledges; the doorbell clears). */
  async interrupt(spi: number, timeoutMs = 2000): Promise<void> {
    const bell = this.line(spi);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      bell.whenPending(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`guest: no interrupt on SPI ${spi} within ${timeoutMs} ms`)), timeoutMs);
      }),
    ]).finally(() => clearTimeout(timer));
    bell.take();
  }

  exit(type: number, reason?: Uint8Array): void {
    this.vm.exit(type, reason);
  }

  crash(): void {
    this.vm.crash();
  }
}
