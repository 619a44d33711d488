// A Gunyah guest for tests: the model driver, a GunyahHypervisor on it, a VM with virtio block,
// console and rng attached to the arm64 layout, a small stand-in kernel Image, and the guest
// side (ModelGuest, one GuestVirtioDriver per device). Everything is released by `close()`.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Subject } from 'rxjs';
import { BlockDevice } from '../../../devices/block.ts';
import { ConsoleDevice } from '../../../devices/console.ts';
import { RngDevice } from '../../../devices/rng.ts';
import type { ByteStream } from '../../../framework/io/byte-stream.ts';
import { ARM64_RAM_BASE, virtioMmioSlots, type VirtioMmioSlot } from '../../../framework/vm/gunyah/arm64-layout.ts';
import { GunyahHypervisor } from '../../../framework/vm/gunyah/gunyah-hypervisor.ts';
import type { GunyahRegionConfig, GunyahVm } from '../../../framework/vm/gunyah/gunyah-vm.ts';
import { loadLinux, type LinuxBootLayout } from '../../../framework/vm/gunyah/linux-loader.ts';
import { GunyahModel, type GunyahModelOptions } from '../model/gunyah-model.ts';
import { ModelGuest } from '../model/guest.ts';
import type { ModelVm } from '../model/model-vm.ts';
import { attachVirtioMmio, type AttachedDevice } from './attach.ts';
import { GuestVirtioDriver } from './guest-virtio.ts';

export const RAM_SIZE = 16 << 20;
export const DISK_SECTORS = 64;

/** An arm64 Image header (64 bytes, ARM\x64 magic, text_offset 0) followed by `body` bytes. */
export function fakeKernel(body = 4096, imageSize = 0): Uint8Array {
  const k = new Uint8Array(64 + body);
  const v = new DataView(k.buffer);
  v.setBigUint64(16, BigInt(imageSize), true);
  v.setUint32(56, 0x644d5241, true);
  for (let i = 64; i < k.length; i++) k[i] = i & 0xff;
  return k;
}

/** A console host held in memory. */
export function memoryConsoleHost() {
  const input = new Subject<Uint8Array>();
  const output: Uint8Array[] = [];
  const stream: ByteStream = { input$: input, output: (bytes) => void output.push(bytes), close() {} };
  return { stream, input, text: () => output.map((b) => new TextDecoder().decode(b)).join('') };
}

export interface FixtureOptions {
  readonly model?: GunyahModelOptions;
  /** Extra regions after the RAM region (label 1, 2...). */
  readonly extraMemory?: readonly GunyahRegionConfig[];
  readonly level?: boolean;
  readonly vcpus?: number;
  readonly cmdline?: string;
}

export interface GunyahFixture {
  readonly model: GunyahModel;
  readonly hv: GunyahHypervisor;
  readonly vm: GunyahVm;
  readonly slots: readonly VirtioMmioSlot[];
  readonly block: AttachedDevice;
  readonly console: AttachedDevice;
  readonly rng: AttachedDevice;
  readonly consoleHost: ReturnType<typeof memoryConsoleHost>;
  readonly kernel: Uint8Array;
  readonly initrd: Uint8Array;
  readonly layout: LinuxBootLayout;
  readonly diskPath: string;
  /** Valid after start. */
  modelVm(): ModelVm;
  guest(): ModelGuest;
  /** A guest driver for a device, with its own 1 MiB of guest RAM for rings and buffers. */
  driver(which: 'block' | 'console' | 'rng'): GuestVirtioDriver;
  close(): Promise<void>;
}

/** Creates the VM, attaches block, console and rng, loads the kernel: everything up to start. */
export function gunyahFixture(options: FixtureOptions = {}): GunyahFixture {
  const model = new GunyahModel(options.model);
  const hv = GunyahHypervisor.open({ driver: model });
  const memory: GunyahRegionConfig[] = [{ base: ARM64_RAM_BASE, size: RAM_SIZE }, ...(options.extraMemory ?? [])];
  const vm = hv.createVm({ memory, vcpus: options.vcpus ?? 1 });
  const dir = mkdtempSync(join(tmpdir(), 'rxvirt-gunyah-'));
  const diskPath = join(dir, 'disk.img');
  writeFileSync(diskPath, new Uint8Array(DISK_SECTORS * 512));
  const slots = virtioMmioSlots(ARM64_RAM_BASE + RAM_SIZE, 3, options.level ?? true);
  const consoleHost = memoryConsoleHost();
  const blockDevice = BlockDevice.open(diskPath, { serial: 'gunyah-disk' });
  const consoleDevice = new ConsoleDevice(consoleHost.stream);
  const block = attachVirtioMmio(vm, blockDevice, slots[0]!, 'block');
  const console = attachVirtioMmio(vm, consoleDevice, slots[1]!, 'console');
  const rng = attachVirtioMmio(vm, new RngDevice(), slots[2]!, 'rng');
  const kernel = fakeKernel();
  const initrd = new TextEncoder().encode('070701 a stand-in initramfs');
  const layout = loadLinux(vm, { kernel, initrd, cmdline: options.cmdline ?? 'console=hvc0 root=/dev/vda', devices: slots });
  const areas = { block: 1, console: 2, rng: 3 } as const;
  let guest: ModelGuest | null = null;
  let closed = false;
  const fixture: GunyahFixture = {
    model, hv, vm, slots, block, console, rng, consoleHost, kernel, initrd, layout, diskPath,
    modelVm: () => model.vms[0]!,
    guest: () => (guest ??= new ModelGuest(model.vms[0]!)),
    driver(which) {
      const g = fixture.guest();
      const start = ARM64_RAM_BASE + areas[which] * (1 << 20);
      const device = { block, console, rng }[which];
      return new GuestVirtioDriver(g, device.slot.base, g.memory, { start, end: start + (1 << 20) });
    },
    async close() {
      if (closed) return;
      closed = true;
      await vm.close();
      for (const d of [block, console, rng]) d.close();
      blockDevice.close();
      consoleDevice.close();
      hv.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return fixture;
}

/** Runs `body` on a fresh fixture and always closes it (a failed test must not leave watches behind). */
export async function withFixture(options: FixtureOptions, body: (f: GunyahFixture) => Promise<void>): Promise<void> {
  const f = gunyahFixture(options);
  try {
    await body(f);
  } finally {
    await f.close();
  }
}
