// `rxvirt dtb --hypervisor gunyah ... -o FILE`: writes the device tree a Gunyah guest with the
// given devices would boot with, for inspection (`dtc -I dtb -O dts FILE`). Device flags mean
// what they mean for `run`: every --disk in order, then the console, then the rng, each on the
// next virtio-mmio slot of the arm64 layout (framework/vm/gunyah/arm64-layout.ts).

import { renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import {
  ARM64_RAM_BASE, DTB_REGION_SIZE, ramRegion, virtioMmioSlots, type VirtioMmioSlot,
} from '../framework/vm/gunyah/arm64-layout.ts';
import { buildGunyahDeviceTree } from '../framework/vm/gunyah/device-tree.ts';
import { UsageError, parseFlags, parseSize, required } from './args.ts';

export const DTB_USAGE = `usage: rxvirt dtb --hypervisor gunyah [options] -o FILE

Writes the device tree of an arm64 Gunyah guest (inspect it with: dtc -I dtb -O dts FILE).

options:
  --memory SIZE                         guest RAM at 0x${ARM64_RAM_BASE.toString(16)} (default 256M; a multiple of 2M)
  --disk PATH[,readonly][,serial=ID]    a virtio-blk disk (repeatable)
  --console stdio|unix:PATH|file:PATH   a virtio console
  --rng                                 a virtio-rng device
  --cmdline S                           kernel command line (default: console=hvc0 with a console,
                                        root=/dev/vda with a disk)
  -o, --output FILE                     where to write the blob
`;

const DEFAULT_MEMORY = '256M';
const SERIAL_MAX = 20;

export interface DiskSpec {
  readonly path: string;
  readonly readOnly: boolean;
  readonly serial?: string;
}

export type ConsoleSpec = { readonly kind: 'stdio' } | { readonly kind: 'unix' | 'file'; readonly path: string };

/** The guest's devices in slot order, as `run` and `dtb` both read them from the flags. */
export interface GuestDevicePlan {
  readonly disks: readonly DiskSpec[];
  readonly console: ConsoleSpec | null;
  readonly rng: boolean;
}

/** `PATH[,readonly][,serial=ID]`; the image must exist. */
export function parseDiskSpec(command: string, text: string): DiskSpec {
  const [path, ...options] = text.split(',');
  if (!path) throw new UsageError(`${command}: --disk '${text}' has no path (expected PATH[,readonly][,serial=ID])`);
  let readOnly = false;
  let serial: string | undefined;
  for (const o of options) {
    if (o === 'readonly') readOnly = true;
    else if (o.startsWith('serial=')) {
      serial = o.slice('serial='.length);
      if (serial.length === 0 || serial.length > SERIAL_MAX || !/^[\x20-\x7e]+$/.test(serial)) {
        throw new UsageError(`${command}: --disk serial '${serial}' must be 1 to ${SERIAL_MAX} printable ASCII characters`);
      }
    } else {
      throw new UsageError(`${command}: --disk option '${o}' is unknown (expected readonly or serial=ID)`);
    }
  }
  let isFile = false;
  try {
    const st = statSync(path);
    isFile = st.isFile() || st.isBlockDevice();
  } catch {
    throw new UsageError(`${command}: --disk '${path}' does not exist`);
  }
  if (!isFile) throw new UsageError(`${command}: --disk '${path}' is not a file or block device`);
  return { path, readOnly, serial };
}

/** `stdio`, `unix:PATH` or `file:PATH`. */
export function parseConsoleSpec(command: string, text: string): ConsoleSpec {
  if (text === 'stdio') return { kind: 'stdio' };
  const m = /^(unix|file):(.+)$/.exec(text);
  if (!m) throw new UsageError(`${command}: --console '${text}' is not stdio, unix:PATH or file:PATH`);
  return { kind: m[1] as 'unix' | 'file', path: m[2]! };
}

/** The virtio-mmio slot of every planned device, in plan order (disks, console, rng). */
export function planSlots(plan: GuestDevicePlan, ramEnd: number): { name: string; slot: VirtioMmioSlot }[] {
  const names = [...plan.disks.map((_, i) => `disk${i}`), ...(plan.console ? ['console'] : []), ...(plan.rng ? ['rng'] : [])];
  const slots = virtioMmioSlots(ramEnd, names.length);
  return names.map((name, i) => ({ name, slot: slots[i]! }));
}

export function defaultCmdline(plan: GuestDevicePlan): string {
  return [...(plan.console ? ['console=hvc0'] : []), ...(plan.disks.length > 0 ? ['root=/dev/vda'] : [])].join(' ');
}

export async function dtbCommand(argv: string[]): Promise<number> {
  const command = 'dtb';
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(DTB_USAGE);
    return 0;
  }
  const { flags } = parseFlags(command, argv.map((a) => (a === '-o' ? '--output' : a)), {
    hypervisor: 'string', memory: 'string', disk: 'list', console: 'string', rng: 'boolean', cmdline: 'string', output: 'string',
  });
  const hypervisor = required(command, 'hypervisor', flags.hypervisor, 'gunyah');
  if (hypervisor !== 'gunyah') {
    throw new UsageError(`${command}: --hypervisor '${hypervisor}' has no device tree (expected gunyah; x86 KVM guests learn their devices from the command line)`);
  }
  const output = flags.output;
  if (output === undefined || output === '') throw new UsageError(`${command}: -o FILE is required (where to write the device tree)`);
  const memoryText = flags.memory ?? DEFAULT_MEMORY;
  const memorySize = parseSize(command, 'memory', memoryText);
  let ram: { base: number; size: number };
  try {
    ram = ramRegion(memorySize);
  } catch {
    throw new UsageError(`${command}: --memory '${memoryText}' must be a multiple of 2M and at least 4M`);
  }
  const plan: GuestDevicePlan = {
    disks: (flags.disk ?? []).map((d) => parseDiskSpec(command, d)),
    console: flags.console === undefined ? null : parseConsoleSpec(command, flags.console),
    rng: flags.rng ?? false,
  };
  const devices = planSlots(plan, ram.base + ram.size);
  const blob = buildGunyahDeviceTree({
    memory: [ram],
    vcpus: 1,
    cmdline: flags.cmdline ?? defaultCmdline(plan),
    devices: devices.map((d) => d.slot),
  });
  if (blob.length > DTB_REGION_SIZE) throw new UsageError(`${command}: the device tree (${blob.length} bytes) exceeds ${DTB_REGION_SIZE} bytes`);
  // Written beside the target and renamed into place: a failure leaves nothing half-written.
  const partial = `${output}.${process.pid}.partial`;
  try {
    writeFileSync(partial, blob, { flag: 'wx' });
    renameSync(partial, output);
  } catch (err) {
    rmSync(partial, { force: true });
    const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
    throw new UsageError(`${command}: -o '${output}' cannot be written (${code}; expected a file path in an existing directory)`);
  }
  const list = devices.map((d) => `${d.name} 0x${d.slot.base.toString(16)} spi ${d.slot.spi}`).join(', ');
  process.stdout.write(`wrote ${output} (${blob.length} bytes): ${memorySize} bytes of RAM at 0x${ram.base.toString(16)}${list ? `; ${list}` : ''}\n`);
  return 0;
}
