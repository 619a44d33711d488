// rxvirt command line: dispatches subcommands. Bad input gets one line naming
// the input and what was expected, and exit code 2.

import { existsSync } from 'node:fs';
import { guestBuild } from './guest-image/command.ts';
import { parseFlags, UsageError } from './args.ts';
import { vhostUserCommand } from './vhost-user-command.ts';
import { dtbCommand } from './dtb-command.ts';
import { runCommand } from './run-command.ts';
import { startCommand } from './start-command.ts';

const USAGE = `usage: rxvirt <command> [options]

commands:
  info        show what this host offers (hypervisors, tools) and what rxvirt can run here
  start       the main job: build the guest if needed and boot it with a console (shell on hvc0) and a disk
  run --kernel K [--initrd I] [--cmdline S] [--memory 256M] [--cpus N] [--disk PATH[,readonly][,serial=ID]]...
      [--console stdio|unix:PATH|file:PATH] [--serial stdio|file:PATH] [--rng] [--hypervisor auto|kvm|gunyah]
              boot a Linux kernel on rxvirt's own VMM
  vhost-user blk --socket PATH --image FILE [--readonly] [--serial ID]
  vhost-user rng --socket PATH
  vhost-user console --socket PATH [--to stdio|unix:PATH|file:PATH]
              serve a device to a VMM (QEMU) over vhost-user until SIGINT/SIGTERM
  dtb --hypervisor gunyah [--memory SIZE] [--disk PATH[,readonly][,serial=ID]]... [--console SPEC] [--rng] [--cmdline S] -o FILE
              write the arm64 Gunyah guest device tree for inspection
  guest build [--force] [--print]
              build (or find cached) the guest Linux image: kernel + busybox initramfs
  help        this text
`;

function info(): void {
  const kvm = existsSync('/dev/kvm');
  const pvm = existsSync('/sys/module/kvm_pvm');
  const gunyah = existsSync('/dev/gunyah');
  console.log(`rxvirt ${process.env.npm_package_version ?? ''}`.trim());
  console.log(`  /dev/kvm:    ${kvm ? `present${pvm ? ' (kvm_pvm: guest kernel code is emulated)' : ''}` : 'absent'}`);
  console.log(`  /dev/gunyah: ${gunyah ? 'present' : 'absent (Gunyah is verified against its ABI and a model of the driver)'}`);
  console.log('  devices:     virtio-console, virtio-blk, virtio-rng over virtio-mmio');
}

function guest(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub !== 'build') throw new UsageError(`guest: unknown subcommand '${sub ?? ''}' (expected: guest build [--force] [--print])`);
  const { flags } = parseFlags('guest build', rest, { force: 'boolean', print: 'boolean' });
  return guestBuild({ force: flags.force ?? false, print: flags.print ?? false });
}

function main(argv: string[]): number | Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      if (rest.length) throw new UsageError(`${command}: unexpected argument '${rest[0]}' (help takes no arguments)`);
      process.stdout.write(USAGE);
      return 0;
    case 'info':
      if (rest.length) throw new UsageError(`info: unexpected argument '${rest[0]}' (info takes no arguments)`);
      info();
      return 0;
    case 'start':
      return startCommand(rest);
    case 'run':
      return runCommand(rest);
    case 'guest':
      return guest(rest);
    case 'vhost-user':
      return vhostUserCommand(rest);
    case 'dtb':
      return dtbCommand(rest);
    default:
      throw new UsageError(`unknown command '${command}' (expected one of: info, start, run, vhost-user, dtb, guest, help)`);
  }
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (err) {
  if (err instanceof UsageError) {
    console.error(`rxvirt: ${err.message}`);
    process.exitCode = 2;
  } else {
    throw err;
  }
}
