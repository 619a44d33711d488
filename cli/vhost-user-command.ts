// `rxvirt vhost-user <device>`: serve one rxvirt device to a vhost-user front-end
// (QEMU -device vhost-user-blk / vhost-user-rng / ...) on a unix socket, like
// qemu-storage-daemon. Arguments are checked before anything is created; SIGINT
// and SIGTERM let in-flight requests finish, flush, remove the socket and exit 0.

import { existsSync, lstatSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { BlockDevice } from '../devices/block.ts';
import { ConsoleDevice } from '../devices/console.ts';
import { RngDevice } from '../devices/rng.ts';
import { RawFile } from '../framework/io/raw-file.ts';
import { appendFileStream, connectUnixSocket, stdioStream, type ByteStream } from '../framework/io/byte-stream.ts';
import type { VirtioDevice } from '../framework/virtio/device.ts';
import { VhostUserBackend } from '../transports/vhost-user/backend.ts';
import { UsageError, parseFlags, required } from './args.ts';

export const VHOST_USER_USAGE = `usage: rxvirt vhost-user <device> --socket PATH [options]

devices:
  blk      --image FILE [--readonly] [--serial ID]   a raw disk image
  rng      (no options)                               entropy from the host CSPRNG
  console  [--to stdio|unix:PATH|file:PATH]           a virtio console bound to a host stream
`;

const DEVICES = ['blk', 'rng', 'console'] as const;
type DeviceKind = (typeof DEVICES)[number];

/** A device ready to serve, and how to release it after the back-end stopped. */
interface ServedDevice {
  device: VirtioDevice;
  release: () => Promise<void>;
}

export async function vhostUserCommand(argv: string[]): Promise<number> {
  const [kind, ...rest] = argv;
  if (kind === '--help' || kind === '-h' || kind === 'help') {
    process.stdout.write(VHOST_USER_USAGE);
    return 0;
  }
  if (kind === undefined) throw new UsageError(`vhost-user: expected a device (one of: ${DEVICES.join(', ')})`);
  if (!(DEVICES as readonly string[]).includes(kind)) {
    throw new UsageError(`vhost-user: unknown device '${kind}' (expected one of: ${DEVICES.join(', ')})`);
  }
  const command = `vhost-user ${kind}`;
  const served = await openDevice(kind as DeviceKind, command, rest);

  const backend = new VhostUserBackend(served.device, { socketPath: served.socketPath });
  try {
    backend.listen();
  } catch (err) {
    await served.release();
    process.stderr.write(`rxvirt ${command}: cannot listen on ${served.socketPath}: ${message(err)}\n`);
    return 1;
  }
  process.stderr.write(`rxvirt ${command}: serving on ${served.socketPath}\n`);
  const events = [
    backend.connected$.subscribe(() => process.stderr.write(`rxvirt ${command}: front-end connected\n`)),
    backend.disconnected$.subscribe(({ reason }) => process.stderr.write(`rxvirt ${command}: ${reason}\n`)),
  ];

  // After the first signal a second one gets Node's default action: a stuck shutdown can still be killed.
  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    const onSignal = (sig: NodeJS.Signals) => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      resolve(sig);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
  process.stderr.write(`rxvirt ${command}: ${signal}: finishing in-flight requests\n`);
  await backend.close();
  for (const s of events) s.unsubscribe();
  await served.release();
  return 0;
}

async function openDevice(kind: DeviceKind, command: string, argv: string[]): Promise<ServedDevice & { socketPath: string }> {
  switch (kind) {
    case 'blk': {
      const { flags } = parseFlags(command, argv, { socket: 'string', image: 'string', readonly: 'boolean', serial: 'string' });
      const socketPath = checkSocketPath(command, flags.socket);
      const image = required(command, 'image', flags.image, 'a raw disk image file');
      const serial = flags.serial ?? '';
      if (!/^[\x20-\x7e]*$/.test(serial) || serial.length > 20) {
        throw new UsageError(`${command}: --serial '${serial}' is not printable ASCII of at most 20 characters`);
      }
      const readOnly = flags.readonly ?? false;
      checkImage(command, image);
      let file: RawFile;
      try {
        file = RawFile.open(image, { readOnly });
      } catch (err) {
        throw new UsageError(`${command}: --image '${image}' cannot be opened${readOnly ? ' read-only' : ' read-write'}: ${message(err)}`);
      }
      let device: BlockDevice;
      try {
        device = new BlockDevice(file, { readOnly, serial });
      } catch (err) {
        file.close();
        throw new UsageError(`${command}: --image '${image}': ${message(err)}`);
      }
      return {
        socketPath,
        device,
        release: async () => {
          if (!readOnly) await file.sync().catch(() => {});
          device.close();
        },
      };
    }
    case 'rng': {
      const { flags } = parseFlags(command, argv, { socket: 'string' });
      return { socketPath: checkSocketPath(command, flags.socket), device: new RngDevice(), release: async () => {} };
    }
    case 'console': {
      const { flags } = parseFlags(command, argv, { socket: 'string', to: 'string' });
      const socketPath = checkSocketPath(command, flags.socket);
      const host = await openConsoleHost(command, flags.to ?? 'stdio');
      const device = new ConsoleDevice(host);
      return { socketPath, device, release: async () => device.close() };
    }
  }
}

/** The socket path must be creatable: its directory exists and nothing but a socket sits there. */
function checkSocketPath(command: string, value: string | undefined): string {
  const path = required(command, 'socket', value, 'where to create the vhost-user unix socket');
  const dir = dirname(path);
  if (!existsSync(dir) || !statSync(dir).isDirectory()) {
    throw new UsageError(`${command}: --socket '${path}': directory '${dir}' does not exist`);
  }
  if (existsSync(path) && !lstatSync(path).isSocket()) {
    throw new UsageError(`${command}: --socket '${path}' exists and is not a socket (refusing to replace it)`);
  }
  if (Buffer.byteLength(path) > 107) {
    throw new UsageError(`${command}: --socket '${path}' is longer than a unix socket path may be (107 bytes)`);
  }
  return path;
}

function checkImage(command: string, image: string): void {
  if (!existsSync(image)) throw new UsageError(`${command}: --image '${image}' does not exist`);
  if (!statSync(image).isFile()) throw new UsageError(`${command}: --image '${image}' is not a regular file`);
}

async function openConsoleHost(command: string, to: string): Promise<ByteStream> {
  if (to === 'stdio') return stdioStream();
  if (to.startsWith('unix:') && to.length > 5) {
    const path = to.slice(5);
    try {
      return await connectUnixSocket(path);
    } catch (err) {
      throw new UsageError(`${command}: --to '${to}': cannot connect: ${message(err)}`);
    }
  }
  if (to.startsWith('file:') && to.length > 5) {
    const path = to.slice(5);
    const dir = dirname(path);
    if (!existsSync(dir)) throw new UsageError(`${command}: --to '${to}': directory '${dir}' does not exist`);
    try {
      return appendFileStream(path);
    } catch (err) {
      throw new UsageError(`${command}: --to '${to}': cannot open for appending: ${message(err)}`);
    }
  }
  throw new UsageError(`${command}: --to '${to}' is not one of stdio, unix:PATH, file:PATH`);
}

function message(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as NodeJS.ErrnoException).code;
    return code && !err.message.includes(code) ? `${code}: ${err.message}` : err.message;
  }
  return String(err);
}
