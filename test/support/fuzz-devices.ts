// The devices the fuzz targets attack, each with a scripted host side: virtio-rng,
// virtio-console over ScriptedHostStream, and virtio-blk (read-write and read-only) over
// MemoryBlockFile. `settle` completes whatever the device is waiting for on the host.

import { BlockDevice } from '../../devices/block.ts';
import { ConsoleDevice } from '../../devices/console.ts';
import { RngDevice } from '../../devices/rng.ts';
import type { VirtioDevice } from '../../framework/virtio/device.ts';
import { MemoryBlockFile } from './fuzz-block-file.ts';
import { ScriptedHostStream } from './fuzz-host-stream.ts';
import type { Prng } from './prng.ts';

export type DeviceKind = 'rng' | 'console' | 'blk' | 'blk-ro';
export const DEVICE_KINDS: readonly DeviceKind[] = ['rng', 'console', 'blk', 'blk-ro'];

export interface FuzzDevice {
  kind: DeviceKind;
  device: VirtioDevice;
  file: MemoryBlockFile | null;
  host: ScriptedHostStream | null;
  /** GET_ID answer of a block device (NUL-padded to 20 bytes). */
  serial: Uint8Array;
  /** Complete pending host-side work (block I/O, console saturation) in an order `rng` picks. */
  settle(rng: Prng): Promise<void>;
  close(): void;
}

export function makeDevice(kind: DeviceKind, rng: Prng): FuzzDevice {
  switch (kind) {
    case 'rng':
      return { kind, device: new RngDevice(), file: null, host: null, serial: new Uint8Array(20), settle: async () => {}, close: () => {} };
    case 'console': {
      const host = new ScriptedHostStream();
      const device = new ConsoleDevice(host, { cols: rng.int(1, 300), rows: rng.int(1, 100) });
      return {
        kind, device, file: null, host, serial: new Uint8Array(20),
        settle: async () => { host.drain(); await Promise.resolve(); },
        close: () => device.close(),
      };
    }
    case 'blk':
    case 'blk-ro': {
      const file = new MemoryBlockFile(512 * rng.int(1, 256), kind === 'blk-ro');
      const text = rng.pick(['', 'fuzz-serial', 'exactly-twenty-chars']);
      const device = new BlockDevice(file, { readOnly: kind === 'blk-ro', serial: text });
      const serial = new Uint8Array(20);
      for (let i = 0; i < text.length; i++) serial[i] = text.charCodeAt(i);
      return {
        kind, device, file, host: null, serial,
        settle: (r) => file.releaseAll(r),
        close: () => device.close(),
      };
    }
  }
}
