// The guest's initramfs: a static busybox with a symlink per applet, /init,
// the boot-time scripts under /scripts, and the device nodes the kernel needs
// before /init mounts devtmpfs (it opens /dev/console for init's stdio).

import { execFile } from 'node:child_process';
import type { CpioEntry } from './cpio.ts';
import { GuestBuildError } from './errors.ts';
import type { SourceFile } from './image-key.ts';

export interface InitramfsParts {
  busybox: Uint8Array;
  /** Applet paths as `busybox --list-full` prints them, e.g. "bin/sh", "usr/sbin/arping". */
  applets: readonly string[];
  init: Uint8Array;
  /** Files to install as /scripts/<name>, e.g. { name: 'selftest.sh', ... }. */
  scripts: readonly SourceFile[];
}

const BASE_DIRS = ['bin', 'sbin', 'usr', 'usr/bin', 'usr/sbin', 'dev', 'proc', 'sys', 'tmp', 'root', 'etc', 'mnt', 'run', 'scripts'];

/** The archive's entries, directories first (parents before children), then files. */
export function initramfsEntries(parts: InitramfsParts): CpioEntry[] {
  const dirs = new Set(BASE_DIRS);
  const links: CpioEntry[] = [];
  for (const applet of parts.applets) {
    if (!/^[A-Za-z0-9_.[\]-]+(\/[A-Za-z0-9_.[\]-]+)*$/.test(applet) || applet.split('/').some((p) => p === '.' || p === '..')) {
      throw new GuestBuildError('EIO', `busybox --list-full printed an odd applet path '${applet}'`);
    }
    if (applet === 'bin/busybox') continue;
    for (let i = applet.indexOf('/'); i > 0; i = applet.indexOf('/', i + 1)) dirs.add(applet.slice(0, i));
    links.push({ type: 'symlink', path: applet, target: '/bin/busybox' });
  }
  const entries: CpioEntry[] = [...dirs].sort().map((path) => ({ type: 'dir', path, mode: path === 'tmp' ? 0o1777 : path === 'root' ? 0o700 : 0o755 }));
  entries.push(
    { type: 'chardev', path: 'dev/console', major: 5, minor: 1, mode: 0o600 },
    { type: 'chardev', path: 'dev/null', major: 1, minor: 3, mode: 0o666 },
    { type: 'file', path: 'bin/busybox', data: parts.busybox, mode: 0o755 },
    ...links,
    { type: 'file', path: 'init', data: parts.init, mode: 0o755 },
    ...parts.scripts.map((s): CpioEntry => ({ type: 'file', path: `scripts/${s.name}`, data: s.data, mode: 0o755 })),
  );
  return entries;
}

/** Runs the host's static busybox (same architecture as the guest) to list its applets. */
export function busyboxApplets(busyboxPath: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    execFile(busyboxPath, ['--list-full'], { encoding: 'utf8' }, (err, stdout) => {
      if (err) reject(new GuestBuildError('EIO', `guest build could not list busybox applets (${busyboxPath} --list-full: ${err.message})`));
      else resolve(stdout.split('\n').map((l) => l.trim()).filter((l) => l.length > 0));
    });
  });
}
