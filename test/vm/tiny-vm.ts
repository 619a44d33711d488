// Test support for the VM runtime tests: skip detection, a KVM VM with a tiny guest loaded and
// its vCPU pointed at it, and a scriptable MMIO test window that records every access.

import { existsSync } from 'node:fs';
import { KvmHypervisor } from '../../framework/vm/kvm/kvm-hypervisor.ts';
import type { KvmVm, KvmVmConfig } from '../../framework/vm/kvm/kvm-vm.ts';
import { longModeEntry, realModeEntry } from '../../framework/vm/x86/entry-state.ts';
import type { MmioHandler } from '../../framework/mmio-bus.ts';
import { buildGuest, toolchainMissing, type GuestBuild, type GuestImage } from '../guests/build.ts';

/** Why KVM tests cannot run here ('no /dev/kvm', a missing tool), or undefined. */
export function kvmSkipReason(): string | undefined {
  if (!existsSync('/dev/kvm') || !KvmHypervisor.available()) return 'no /dev/kvm';
  return toolchainMissing();
}

export const GUEST_ORIGIN = 0x1000;
export const RAM_SIZE = 0x8_0000; // 512 KiB: below the test window
/** Test MMIO window: real-mode segment 0xd000, i.e. guest-physical 0xd0000. */
export const MMIO_SEG = 0xd000;
export const MMIO_BASE = MMIO_SEG * 16;

let hypervisor: KvmHypervisor | undefined;
export function kvmHypervisor(): KvmHypervisor {
  return (hypervisor ??= KvmHypervisor.open());
}

export interface TinyVm {
  vm: KvmVm;
  image: GuestImage;
}

/** A 1-vCPU VM with `name` built from test/guests, loaded at GUEST_ORIGIN, entered in its mode. */
export function tinyVm(name: string, build: Omit<GuestBuild, 'origin'>, config: Partial<KvmVmConfig> = {}): TinyVm {
  const image = buildGuest(name, { origin: GUEST_ORIGIN, ...build });
  const vm = kvmHypervisor().createVm({ memory: [{ base: 0, size: RAM_SIZE }], ...config });
  try {
    vm.memory.write(image.origin, image.bytes);
    const vcpu = vm.vcpus[0]!;
    if (build.bits === 16) {
      const { regs, sregs } = realModeEntry(vcpu.getSregs(), { cs: 0, ip: image.origin, sp: 0x8000 });
      vcpu.setSregs(sregs);
      vcpu.setRegs(regs);
    } else {
      vcpu.setSregs(longModeEntry(vm.memory, vcpu.getSregs(), { gdt: 0x500, pageTables: 0x2_0000 }));
      const regs = vcpu.getRegs();
      vcpu.setRegs({ ...regs, rip: BigInt(image.origin), rsp: 0x8000n, rflags: 2n });
    }
  } catch (e) {
    void vm.close();
    throw e;
  }
  return { vm, image };
}

export interface Access {
  offset: number;
  isWrite: boolean;
  /** The written value, or the value answered to a read (little-endian). */
  value: bigint;
  width: number;
}

/** An MMIO window that answers reads with `reader(offset, width)` and records everything. */
export class TestWindow implements MmioHandler {
  readonly accesses: Access[] = [];
  private waiters: { match: (a: Access) => boolean; resolve: (a: Access) => void }[] = [];

  constructor(private readonly reader: (offset: number, width: number) => bigint = () => 0n,
    private readonly onWrite: (offset: number, value: bigint) => void = () => {}) {}

  read(offset: number, data: Uint8Array): void {
    const value = this.reader(offset, data.length);
    for (let i = 0; i < data.length; i++) data[i] = Number((value >> BigInt(8 * i)) & 0xffn);
    this.record({ offset, isWrite: false, value, width: data.length });
  }

  write(offset: number, data: Uint8Array): void {
    let value = 0n;
    for (let i = data.length - 1; i >= 0; i--) value = (value << 8n) | BigInt(data[i]!);
    this.record({ offset, isWrite: true, value, width: data.length });
    this.onWrite(offset, value);
  }

  writes(offset: number): bigint[] {
    return this.accesses.filter((a) => a.isWrite && a.offset === offset).map((a) => a.value);
  }

  /** Resolves at the first write to `offset` (past or future). */
  nextWrite(offset: number, timeoutMs = 5000): Promise<Access> {
    const match = (a: Access) => a.isWrite && a.offset === offset;
    const seen = this.accesses.find(match);
    if (seen) return Promise.resolve(seen);
    return withTimeout(new Promise((resolve) => this.waiters.push({ match, resolve })), timeoutMs, `write to +0x${offset.toString(16)}`);
  }

  private record(a: Access): void {
    this.accesses.push(a);
    this.waiters = this.waiters.filter((w) => (w.match(a) ? (w.resolve(a), false) : true));
  }
}

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms); }),
  ]);
}
