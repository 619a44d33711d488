// A block VM: a blank 32 MiB disk image on the host becomes /dev/vda in the guest, which makes
// an ext2 file system on it (busybox mke2fs), mounts it, writes a file and reads it back; the
// host then finds that file system in the image. Run with `npx tsx examples/block-vm.ts`.
// The guest's commands and the kernel log appear on this terminal (serial console).

import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureGuestImage } from '../cli/guest-image/guest-image.ts';
import { BlockDevice } from '../devices/block.ts';
import { createMachine } from '../framework/vm/machine.ts';
import { VirtioMmioTransport } from '../transports/virtio-mmio/mmio-transport.ts';

const image = await ensureGuestImage();
const dir = mkdtempSync(join(tmpdir(), 'rxvirt-block-example-'));
const diskPath = join(dir, 'disk.img');
writeFileSync(diskPath, Buffer.alloc(32 << 20));
const disk = BlockDevice.open(diskPath, { serial: 'example-disk' });

// What the guest runs (set -x echoes each command to the serial console).
const script = [
  'set -ex',
  'mke2fs -q -L example /dev/vda',
  'mkdir -p /mnt',
  'mount -t ext4 /dev/vda /mnt',
  'echo "written by the guest at $(date)" > /mnt/hello.txt',
  'ls -l /mnt',
  'cat /mnt/hello.txt',
  'df -h /mnt',
  'umount /mnt',
].join('\n');

const vm = await createMachine({ memory: '256M', transport: VirtioMmioTransport });
vm.serial$.subscribe((bytes) => process.stdout.write(bytes));
vm.attach(disk, 'disk');
console.error('booting; on a kvm_pvm host this takes a minute or two');
await vm.boot({ kernel: image.vmlinux, initrd: image.initramfs, cmdline: `rxvirt.cmd=${Buffer.from(script).toString('base64')}` });
const outcome = await vm.exited;
await vm.close();
disk.close();
console.error(`\nVM ended: ${outcome.kind}`);

// The host's view of the same bytes, if e2fsprogs is installed.
try {
  console.error(execFileSync('debugfs', ['-R', 'cat /hello.txt', diskPath], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim());
} catch {
  console.error('(install e2fsprogs to read the image on the host: debugfs -R "cat /hello.txt" disk.img)');
}
rmSync(dir, { recursive: true, force: true });
