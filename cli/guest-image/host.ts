// What the guest build needs from the host, checked up front: an x86_64 Debian
// host with the packages below installed (the builder never installs them).
// Answers the two package versions that go into the image's cache key.

import { execFile } from 'node:child_process';
import { open } from 'node:fs/promises';
import { GuestBuildError } from './errors.ts';

export const KERNEL_SOURCE_PACKAGE = 'linux-source-6.1';
export const KERNEL_SOURCE_TARBALL = '/usr/src/linux-source-6.1.tar.xz';
export const BUSYBOX_PACKAGE = 'busybox-static';
export const BUSYBOX_PATH = '/bin/busybox';

/** Every Debian package the build uses (besides essential ones: tar, perl-base, coreutils). */
export const REQUIRED_PACKAGES: readonly string[] = [
  KERNEL_SOURCE_PACKAGE, BUSYBOX_PACKAGE,
  'make', 'gcc', 'libc6-dev', 'flex', 'bison', 'bc', 'libelf-dev', 'xz-utils',
];

export interface HostVersions {
  kernelSource: string;
  busybox: string;
}

function dpkgQuery(packages: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('dpkg-query', ['-W', '-f=${Package}\t${db:Status-Abbrev}\t${Version}\n', ...packages],
      { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } },
      (err, stdout) => {
        // Exit status 1 only means some package is unknown; the others are still listed.
        if (err && (err as NodeJS.ErrnoException).code === 'ENOENT') reject(err);
        else resolve(stdout);
      });
  });
}

/** Installed versions of `packages`; a package absent or not fully installed has no entry. */
export async function installedPackages(packages: readonly string[]): Promise<Map<string, string>> {
  let out: string;
  try {
    out = await dpkgQuery(packages);
  } catch {
    throw new GuestBuildError('ENOTSUP',
      `guest build needs a Debian 12 (bookworm) host: it builds from Debian packages (${REQUIRED_PACKAGES.join(' ')}) and this host has no dpkg-query`);
  }
  const installed = new Map<string, string>();
  for (const line of out.split('\n')) {
    const [name, status, version] = line.split('\t');
    if (name && version && status?.startsWith('ii')) installed.set(name.replace(/:.*$/, ''), version);
  }
  return installed;
}

export function missingPackagesMessage(missing: readonly string[]): string {
  const noun = missing.length === 1 ? 'package' : 'packages';
  return `guest build needs Debian ${noun} ${missing.join(', ')} (apt-get install ${missing.join(' ')})`;
}

/** True when the ELF file at `path` has no program interpreter, i.e. is statically linked. */
async function isStaticElf(path: string): Promise<boolean> {
  const file = await open(path, 'r');
  try {
    const head = Buffer.alloc(64);
    await file.read(head, 0, 64, 0);
    if (head.readUInt32BE(0) !== 0x7f454c46 || head[4] !== 2 || head[5] !== 1) return false; // ELF64 LE
    const phoff = Number(head.readBigUInt64LE(0x20));
    const phentsize = head.readUInt16LE(0x36);
    const phnum = head.readUInt16LE(0x38);
    if (phentsize < 4 || phnum === 0 || phnum > 64) return false;
    const table = Buffer.alloc(phentsize * phnum);
    const { bytesRead } = await file.read(table, 0, table.length, phoff);
    if (bytesRead !== table.length) return false;
    for (let i = 0; i < phnum; i++) if (table.readUInt32LE(i * phentsize) === 3 /* PT_INTERP */) return false;
    return true;
  } finally {
    await file.close();
  }
}

/**
 * Checks the host can build the guest, or throws a one-line GuestBuildError
 * naming what is missing. `forBuild: false` checks only what the cache key
 * needs (the two package versions), for looking up an already built image.
 */
export async function checkHost(forBuild: boolean): Promise<HostVersions> {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    throw new GuestBuildError('ENOTSUP', `guest build needs an x86_64 Debian Linux host (this is ${process.platform}/${process.arch})`);
  }
  const wanted = forBuild ? REQUIRED_PACKAGES : [KERNEL_SOURCE_PACKAGE, BUSYBOX_PACKAGE];
  const installed = await installedPackages(wanted);
  const missing = wanted.filter((p) => !installed.has(p));
  if (missing.length) throw new GuestBuildError('ENOENT', missingPackagesMessage(missing));
  if (forBuild) {
    const tarball = await open(KERNEL_SOURCE_TARBALL, 'r').then((f) => f.close().then(() => true), () => false);
    if (!tarball) {
      throw new GuestBuildError('ENOENT', `guest build needs ${KERNEL_SOURCE_TARBALL}, which package ${KERNEL_SOURCE_PACKAGE} should have installed (apt-get install --reinstall ${KERNEL_SOURCE_PACKAGE})`);
    }
    if (!(await isStaticElf(BUSYBOX_PATH).catch(() => false))) {
      throw new GuestBuildError('ENOENT', `guest build needs a statically linked x86_64 ${BUSYBOX_PATH} from package ${BUSYBOX_PACKAGE} (apt-get install --reinstall ${BUSYBOX_PACKAGE})`);
    }
  }
  return { kernelSource: installed.get(KERNEL_SOURCE_PACKAGE)!, busybox: installed.get(BUSYBOX_PACKAGE)! };
}
