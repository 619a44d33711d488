// `rxvirt run`: boot a Linux kernel on rxvirt's own VMM with virtio disks, a virtio console and
// an entropy device. Every argument is checked before anything is created (one line naming the
// input, exit 2). The platform serial console (COM1) goes to stdout unless told otherwise;
// stdin feeds the virtio console when it is on stdio, else the serial console; on a terminal,
// Ctrl-A x stops the VM. Exit status: 0 when the guest powers off or reboots, 1 with one line
// of reason when it crashes or the VMM fails, 128+n after signal n.

import { existsSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { constants } from 'node:os';
import { dirname } from 'node:path';
import { filter as rxFilter, map, Subject, type Subscription } from 'rxjs';
import { BlockDevice } from '../devices/block.ts';
import { ConsoleDevice } from '../devices/console.ts';
import { RngDevice } from '../devices/rng.ts';
import { appendFileStream, connectUnixSocket, stdioStream, type ByteStream } from '../framework/io/byte-stream.ts';
import { BootError } from '../framework/vm/boot/boot-error.ts';
import { isBzImage, parseSetupHeader } from '../framework/vm/boot/bzimage.ts';
import { isElf, parseElfKernel } from '../framework/vm/boot/elf.ts';
import type { VmOutcome } from '../framework/vm/hypervisor.ts';
import { createMachine, resolveHypervisor, type HypervisorChoice, type Machine } from '../framework/vm/machine.ts';
import { VmError } from '../framework/vm/vm-error.ts';
import { VirtioMmioTransport } from '../transports/virtio-mmio/mmio-transport.ts';
import { parseFlags, parseIntInRange, parseSize, required, UsageError } from './args.ts';

export const RUN_USAGE = `usage: rxvirt run --kernel FILE [options]

  --kernel FILE          vmlinux (ELF) or bzImage (gzip/xz payload) for x86_64; arm64 Image on Gunyah
  --initrd FILE          initramfs (cpio, as the kernel accepts it)
  --cmdline TEXT         appended to the kernel command line rxvirt composes
  --memory SIZE          guest RAM, e.g. 256M (default), 1G
  --cpus N               vCPUs (default 1)
  --disk PATH[,readonly][,serial=ID]
                         a raw disk image as virtio-blk (repeatable: vda, vdb, ...)
  --console stdio|unix:PATH|file:PATH
                         a virtio console (hvc0) bound to this stream
  --serial stdio|file:PATH
                         where the serial console (ttyS0) goes (default stdio)
  --rng                  a virtio entropy device (/dev/hwrng)
  --hypervisor auto|kvm|gunyah
                         default auto: /dev/gunyah if present, else /dev/kvm
`;

const COMMAND = 'run';
const MAX_CPUS = 64;
const MIN_MEMORY = 16 << 20;
const CTRL_A = 0x01;

interface DiskSpec {
  path: string;
  readOnly: boolean;
  serial: string;
}

type StreamSpec = { kind: 'stdio' } | { kind: 'unix'; path: string } | { kind: 'file'; path: string };

export interface RunSpec {
  kernel: string;
  initrd?: string;
  cmdline: string;
  memory: number;
  cpus: number;
  disks: DiskSpec[];
  console?: StreamSpec;
  serial: StreamSpec;
  rng: boolean;
  hypervisor: HypervisorChoice;
}

/** Parses and checks `argv`; throws UsageError naming the first bad input. Creates nothing. */
export function parseRunArgs(argv: readonly string[]): RunSpec {
  const { flags } = parseFlags(COMMAND, argv, {
    kernel: 'string', initrd: 'string', cmdline: 'string', memory: 'string', cpus: 'string', disk: 'list',
    console: 'string', serial: 'string', rng: 'boolean', hypervisor: 'string',
  });
  const kernel = checkFile('kernel', required(COMMAND, 'kernel', flags.kernel, 'the guest kernel: vmlinux or bzImage'));
  const initrd = flags.initrd === undefined ? undefined : checkFile('initrd', flags.initrd);
  const memory = parseSize(COMMAND, 'memory', flags.memory ?? '256M');
  if (memory < MIN_MEMORY || memory % 4096 !== 0) {
    throw new UsageError(`${COMMAND}: --memory '${flags.memory}' must be a multiple of 4K and at least 16M`);
  }
  const cpus = parseIntInRange(COMMAND, 'cpus', flags.cpus ?? '1', 1, MAX_CPUS);
  const disks = (flags.disk ?? []).map(parseDisk);
  const console = flags.console === undefined ? undefined : parseStream('console', flags.console, true);
  const serial = parseStream('serial', flags.serial ?? 'stdio', false);
  const hypervisor = flags.hypervisor ?? 'auto';
  if (hypervisor !== 'auto' && hypervisor !== 'kvm' && hypervisor !== 'gunyah') {
    throw new UsageError(`${COMMAND}: --hypervisor '${hypervisor}' is not one of auto, kvm, gunyah`);
  }
  const cmdline = flags.cmdline ?? '';
  if (cmdline.includes('\0') || cmdline.includes('\n')) throw new UsageError(`${COMMAND}: --cmdline must be one line of text`);
  return { kernel, ...(initrd ? { initrd } : {}), cmdline, memory, cpus, disks, ...(console ? { console } : {}), serial, rng: flags.rng ?? false, hypervisor };
}

function checkFile(name: string, path: string): string {
  if (!existsSync(path)) throw new UsageError(`${COMMAND}: --${name} '${path}' does not exist`);
  if (!statSync(path).isFile()) throw new UsageError(`${COMMAND}: --${name} '${path}' is not a regular file`);
  return path;
}

function parseDisk(text: string): DiskSpec {
  const [path = '', ...options] = text.split(',');
  if (path === '') throw new UsageError(`${COMMAND}: --disk '${text}' has no path (expected PATH[,readonly][,serial=ID])`);
  let readOnly = false;
  let serial = '';
  for (const option of options) {
    if (option === 'readonly') readOnly = true;
    else if (option.startsWith('serial=')) serial = option.slice('serial='.length);
    else throw new UsageError(`${COMMAND}: --disk '${text}': unknown option '${option}' (expected readonly or serial=ID)`);
  }
  if (!/^[\x20-\x7e]*$/.test(serial) || serial.length > 20) {
    throw new UsageError(`${COMMAND}: --disk '${text}': serial '${serial}' is not printable ASCII of at most 20 characters`);
  }
  if (!existsSync(path)) throw new UsageError(`${COMMAND}: --disk '${path}' does not exist`);
  const st = statSync(path);
  if (!st.isFile() && !st.isBlockDevice()) throw new UsageError(`${COMMAND}: --disk '${path}' is not a regular file or block device`);
  if (st.isFile() && st.size % 512 !== 0) throw new UsageError(`${COMMAND}: --disk '${path}' is ${st.size} bytes, not a multiple of 512`);
  return { path, readOnly, serial };
}

function parseStream(name: 'console' | 'serial', text: string, unixAllowed: boolean): StreamSpec {
  const expected = unixAllowed ? 'stdio, unix:PATH, file:PATH' : 'stdio, file:PATH';
  if (text === 'stdio') return { kind: 'stdio' };
  if (unixAllowed && text.startsWith('unix:') && text.length > 5) {
    const path = text.slice(5);
    if (!existsSync(path) || !statSync(path).isSocket()) throw new UsageError(`${COMMAND}: --${name} '${text}': no unix socket at '${path}'`);
    return { kind: 'unix', path };
  }
  if (text.startsWith('file:') && text.length > 5) {
    const path = text.slice(5);
    const dir = dirname(path);
    if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new UsageError(`${COMMAND}: --${name} '${text}': directory '${dir}' does not exist`);
    return { kind: 'file', path };
  }
  throw new UsageError(`${COMMAND}: --${name} '${text}' is not one of ${expected}`);
}

/** Reads the kernel's headers (not the payload) so a wrong file is a usage error, before any VM exists. */
async function checkKernel(path: string, hypervisor: 'kvm' | 'gunyah'): Promise<void> {
  if (hypervisor !== 'kvm') return; // the arm64 loader checks its Image itself
  const image = new Uint8Array(await readFile(path));
  try {
    if (isElf(image)) parseElfKernel(image, path);
    else if (isBzImage(image)) {
      const header = parseSetupHeader(image, path);
      const c = header.payload.compression;
      if (c !== 'gzip' && c !== 'xz' && c !== 'none') throw new BootError('ENOTSUP', `${path}: kernel payload is compressed with ${c}; rxvirt decompresses gzip and xz (or pass the vmlinux ELF)`);
    } else throw new BootError('ENOEXEC', `${path}: neither an ELF kernel (vmlinux) nor a bzImage`);
  } catch (e) {
    if (e instanceof BootError) throw new UsageError(`${COMMAND}: --kernel ${e.message}`);
    throw e;
  }
}

/** One line saying how the VM ended, and the exit status that goes with it. */
export function describeOutcome(outcome: VmOutcome): { status: number; line: string } {
  switch (outcome.kind) {
    case 'poweroff':
    case 'reset':
      return { status: 0, line: `guest ${outcome.kind === 'reset' ? 'rebooted' : 'powered off'} (${outcome.reason})` };
    case 'stopped':
      return { status: 0, line: 'VM stopped' };
    case 'crash': {
      const f = outcome.fault;
      const where = f ? ` at rip 0x${(f.registers.rip ?? 0n).toString(16)}${f.instruction ? ` [${Buffer.from(f.instruction).toString('hex').match(/../g)!.join(' ')}]` : ''} (${f.exit})` : '';
      return { status: 1, line: `guest crashed: ${outcome.reason}${where}` };
    }
    case 'error':
      return { status: 1, line: `VMM failed: ${outcome.error.message}` };
  }
}

async function openStream(spec: StreamSpec, what: string, raw: boolean): Promise<ByteStream> {
  switch (spec.kind) {
    case 'stdio':
      return stdioStream({ raw });
    case 'file':
      return appendFileStream(spec.path);
    case 'unix':
      try {
        return await connectUnixSocket(spec.path);
      } catch (e) {
        throw new UsageError(`${COMMAND}: --${what} 'unix:${spec.path}': cannot connect: ${(e as Error).message}`);
      }
  }
}

/**
 * Host input with the Ctrl-A x escape taken out: `onEscape` runs on Ctrl-A x; Ctrl-A Ctrl-A sends
 * one Ctrl-A; anything else after Ctrl-A goes through as typed.
 */
export function escapeFilter(onEscape: () => void): (bytes: Uint8Array) => Uint8Array {
  let armed = false;
  return (bytes) => {
    const out: number[] = [];
    for (const b of bytes) {
      if (armed) {
        armed = false;
        if (b === 0x78 /* x */) {
          onEscape();
          continue;
        }
        if (b !== CTRL_A) out.push(CTRL_A);
        out.push(b);
      } else if (b === CTRL_A) {
        armed = true;
      } else {
        out.push(b);
      }
    }
    return Uint8Array.from(out);
  };
}

/** Output bytes gathered and written once per event-loop turn (the UART hands over one byte at a time). */
function batchedWriter(write: (bytes: Uint8Array) => unknown): (bytes: Uint8Array) => void {
  let pending: Uint8Array[] = [];
  let scheduled = false;
  return (bytes) => {
    pending.push(bytes);
    if (scheduled) return;
    scheduled = true;
    setImmediate(() => {
      scheduled = false;
      const chunk = Buffer.concat(pending);
      pending = [];
      write(chunk);
    });
  };
}

export interface RunOptions {
  /** Called once the VM runs, with the machine (tests, start). */
  onBoot?: (machine: Machine) => void;
  /** Lines rxvirt itself prints (default stderr). */
  log?: (line: string) => void;
}

/** Runs the command; returns the exit status. */
export async function runCommand(argv: readonly string[], options: RunOptions = {}): Promise<number> {
  if (argv[0] === '--help' || argv[0] === '-h') {
    process.stdout.write(RUN_USAGE);
    return 0;
  }
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const spec = parseRunArgs(argv);
  let hypervisor: 'kvm' | 'gunyah';
  try {
    hypervisor = resolveHypervisor(spec.hypervisor);
  } catch (e) {
    if (e instanceof VmError) {
      log(`rxvirt run: ${e.message}`);
      return 1;
    }
    throw e;
  }
  await checkKernel(spec.kernel, hypervisor);

  const releases: (() => void | Promise<void>)[] = [];
  const subscriptions: Subscription[] = [];
  const onSignal = (signal: NodeJS.Signals) => {
    stoppedBy ??= signal;
    void machine?.stop();
  };
  let stoppedBy: NodeJS.Signals | undefined;
  let machine: Machine | undefined;
  const stdinOwner = spec.console?.kind === 'stdio' ? 'console' : spec.serial.kind === 'stdio' ? 'serial' : null;
  const interactive = stdinOwner !== null && process.stdin.isTTY === true;
  const escape = escapeFilter(() => {
    stoppedBy ??= 'SIGINT';
    log('\r\nrxvirt run: Ctrl-A x: stopping the VM');
    void machine?.stop();
  });
  try {
    // Host streams and devices first: a socket that refuses or a disk that cannot be opened
    // must fail before a VM exists.
    let consoleHost: ByteStream | undefined;
    if (spec.console) {
      consoleHost = await openStream(spec.console, 'console', true);
      releases.push(() => consoleHost!.close());
      if (stdinOwner === 'console' && interactive) consoleHost = withInputFilter(consoleHost, escape);
    }
    const disks = spec.disks.map((d) => {
      try {
        const device = BlockDevice.open(d.path, { readOnly: d.readOnly, serial: d.serial });
        releases.push(() => device.close());
        return device;
      } catch (e) {
        throw new UsageError(`${COMMAND}: --disk '${d.path}' cannot be opened${d.readOnly ? ' read-only' : ' read-write'}: ${(e as Error).message}`);
      }
    });
    let serialInput$: Subject<Uint8Array> | undefined;
    let serialOut: (bytes: Uint8Array) => void;
    if (spec.serial.kind === 'stdio') {
      serialOut = batchedWriter((b) => process.stdout.write(b));
      if (stdinOwner === 'serial') {
        const stdio = stdioStream({ raw: true });
        releases.push(() => stdio.close());
        serialInput$ = new Subject<Uint8Array>();
        const input$ = serialInput$;
        subscriptions.push(stdio.input$.subscribe((b) => input$.next(interactive ? escape(b) : b)));
      }
    } else {
      const file = appendFileStream(spec.serial.path);
      releases.push(() => file.close());
      serialOut = batchedWriter((b) => file.output(b));
    }

    machine = await createMachine({
      memory: spec.memory, cpus: spec.cpus, hypervisor, transport: VirtioMmioTransport,
      ...(serialInput$ ? { serialInput$ } : {}),
    });
    subscriptions.push(machine.serial$.subscribe(serialOut));
    for (const [i, disk] of disks.entries()) machine.attach(disk, `disk${i}`);
    if (consoleHost) machine.attach(new ConsoleDevice(consoleHost), 'console');
    if (spec.rng) machine.attach(new RngDevice(), 'rng');

    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    if (interactive) log('rxvirt run: Ctrl-A x stops the VM');
    await machine.boot({ kernel: spec.kernel, ...(spec.initrd ? { initrd: spec.initrd } : {}), cmdline: spec.cmdline });
    options.onBoot?.(machine);
    const outcome = await machine.exited;
    await flushed();
    if (stoppedBy) {
      log(`rxvirt run: stopped by ${stoppedBy}`);
      return 128 + (constants.signals[stoppedBy] ?? 0);
    }
    const { status, line } = describeOutcome(outcome);
    if (status !== 0) log(`rxvirt run: ${line}`);
    return status;
  } catch (e) {
    if (e instanceof UsageError) throw e;
    if (e instanceof BootError || e instanceof VmError) {
      log(`rxvirt run: ${e.message}`);
      return 1;
    }
    log(`rxvirt run: VMM failed: ${(e as Error).message ?? String(e)}`);
    return 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    for (const s of subscriptions) s.unsubscribe();
    await machine?.close();
    for (const release of releases.reverse()) await release();
  }
}

/** The same stream with `filter` applied to its input. */
function withInputFilter(stream: ByteStream, filter: (bytes: Uint8Array) => Uint8Array): ByteStream {
  return {
    ...stream,
    input$: stream.input$.pipe(map(filter), rxFilter((b) => b.length > 0)),
    output: (b) => stream.output(b),
    close: () => stream.close(),
  };
}

/** Lets batched output written in this turn reach stdout before we print or exit. */
function flushed(): Promise<void> {
  return new Promise((resolve) => setImmediate(() => setImmediate(resolve)));
}
