// `rxvirt start` / `npm start`, the main job: builds the default guest if it is not cached, makes
// a scratch disk (ext4, when the host has mkfs.ext4) under the cache directory, and boots the
// guest on rxvirt's own VMM with a shell on the virtio console (hvc0) on this terminal, that
// disk as /dev/vda and an entropy device. The kernel's log comes through the serial console.

import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, openSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ensureGuestImage, findGuestImage } from './guest-image/guest-image.ts';
import { GuestBuildError } from './guest-image/errors.ts';
import { guestCacheRoot } from './guest-image/image-key.ts';
import { isKvmPvm } from '../framework/vm/kvm/pvm-quirks.ts';
import { runCommand } from './run-command.ts';
import { parseFlags } from './args.ts';

export const SCRATCH_DISK_NAME = 'scratch.img';
export const SCRATCH_DISK_BYTES = 64 << 20;

/**
 * The scratch disk at `path`: made once (sparse, 64 MiB) and formatted ext4 when mkfs.ext4 is
 * available; kept across runs so what the guest stores there stays. Returns whether it holds a
 * file system.
 */
export function ensureScratchDisk(path: string, log: (line: string) => void): { formatted: boolean } {
  if (existsSync(path)) return { formatted: !spawnSync('blkid', ['-p', path]).status };
  const tmp = `${path}.${process.pid}.tmp`;
  const fd = openSync(tmp, 'w');
  try {
    ftruncateSync(fd, SCRATCH_DISK_BYTES);
  } finally {
    closeSync(fd);
  }
  // No journal: less to write through an emulated guest kernel. Features the 6.1 guest lacks
  // (orphan_file) stay off.
  const mkfs = spawnSync('mkfs.ext4', ['-q', '-F', '-L', 'rxvirt-scratch', '-O', '^has_journal', tmp], { encoding: 'utf8' });
  const formatted = mkfs.status === 0;
  if (!formatted) {
    log(`rxvirt start: mkfs.ext4 ${mkfs.error ? 'is not available' : `failed (${mkfs.stderr.trim()})`}: the scratch disk is blank (format it in the guest: mke2fs /dev/vda)`);
  }
  try {
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
  return { formatted };
}

export async function startCommand(argv: readonly string[]): Promise<number> {
  parseFlags('start', argv, {});
  const log = (line: string) => process.stderr.write(`${line}\n`);
  let image;
  try {
    const cached = await findGuestImage();
    if (!cached) log('rxvirt start: building the guest Linux image first (one time, about 5 minutes)...');
    image = cached ?? (await ensureGuestImage());
  } catch (e) {
    if (e instanceof GuestBuildError) {
      log(`rxvirt start: ${e.message}`);
      return 1;
    }
    throw e;
  }
  const disk = join(guestCacheRoot(), SCRATCH_DISK_NAME);
  const { formatted } = ensureScratchDisk(disk, log);
  const slow = isKvmPvm();
  log([
    `rxvirt start: booting ${image.dir}`,
    `  disk: ${disk} as /dev/vda (${formatted ? 'ext4: mount -t ext4 /dev/vda /mnt' : 'blank'}); console: hvc0 on this terminal`,
    slow
      ? '  this host\'s KVM is kvm_pvm (guest kernel code is emulated): the guest takes about 80-100 s to reach its shell'
      : '  the guest reaches its shell in a few seconds',
    '  leave with `exit` in the shell (the VM ends), or Ctrl-A x to stop it',
  ].join('\n'));
  return runCommand([
    '--kernel', image.vmlinux,
    '--initrd', image.initramfs,
    '--memory', '256M',
    '--disk', `${disk},serial=rxvirt-scratch`,
    '--console', 'stdio',
    '--rng',
    '--cmdline', 'rxvirt.script=shell',
  ]);
}
