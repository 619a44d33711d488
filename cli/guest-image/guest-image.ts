// The guest image: a small x86_64 Linux kernel (bzImage and vmlinux) plus a
// busybox initramfs, built from Debian packages on first use and cached under
// the cache root by content hash. A build happens in a temporary directory next
// to the cache and appears with one rename, so a failed or interrupted build
// leaves nothing behind (a build killed outright is swept by the next one).

import { createWriteStream, type WriteStream } from 'node:fs';
import { access, copyFile, mkdir, mkdtemp, readdir, readFile, rename, rm, statfs, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gzip } from 'node:zlib';
import { bzImagePayload } from './bzimage.ts';
import { writeCpio } from './cpio.ts';
import { GuestBuildError } from './errors.ts';
import { BUSYBOX_PATH, checkHost, type HostVersions } from './host.ts';
import { BUILDER_VERSION, guestCacheRoot, guestImageDir, guestImageKey, readSourceFiles, type SourceFile } from './image-key.ts';
import { busyboxApplets, initramfsEntries } from './initramfs.ts';
import { buildKernel } from './kernel.ts';
import { formatElapsed, lineProgress, ttyProgress, type BuildProgress } from './progress.ts';

export interface GuestImage {
  dir: string;
  bzImage: string;
  vmlinux: string;
  /** Uncompressed cpio (newc), for VMMs that hand the initramfs over as is. */
  initramfs: string;
  initramfsGz: string;
}

export interface EnsureGuestImageOptions {
  /** Rebuild even if an image with the same inputs is cached. */
  force?: boolean;
  /** Progress as plain lines; without it, progress goes to stderr (one live line on a terminal). */
  onProgress?: (line: string) => void;
}

/** Disk the build needs while it runs: the extracted source (~1.5 GB) plus objects. */
const BUILD_SPACE_BYTES = 2.5 * 2 ** 30;
const IMAGE_FILES = ['bzImage', 'vmlinux', 'initramfs.cpio', 'initramfs.cpio.gz', 'manifest.json'];
const gzipAsync = promisify(gzip);

function imagePaths(dir: string): GuestImage {
  return {
    dir,
    bzImage: join(dir, 'bzImage'),
    vmlinux: join(dir, 'vmlinux'),
    initramfs: join(dir, 'initramfs.cpio'),
    initramfsGz: join(dir, 'initramfs.cpio.gz'),
  };
}

async function isComplete(dir: string): Promise<boolean> {
  try {
    await Promise.all(IMAGE_FILES.map((f) => access(join(dir, f))));
    return true;
  } catch {
    return false;
  }
}

interface Located {
  root: string;
  key: string;
  dir: string;
  versions: HostVersions;
  sources: SourceFile[];
}

async function locate(forBuild: boolean): Promise<Located> {
  const [versions, sources] = await Promise.all([checkHost(forBuild), readSourceFiles()]);
  const key = guestImageKey({ builderVersion: BUILDER_VERSION, kernelSourceVersion: versions.kernelSource, busyboxVersion: versions.busybox, files: sources });
  const root = guestCacheRoot();
  return { root, key, dir: guestImageDir(root, key), versions, sources };
}

/**
 * The cached image for this host's packages and this checkout's sources, or
 * undefined if it has not been built. Never builds; throws GuestBuildError
 * (ENOENT/ENOTSUP) when the host lacks the packages that name the image.
 */
export async function findGuestImage(): Promise<GuestImage | undefined> {
  const { dir } = await locate(false);
  return (await isComplete(dir)) ? imagePaths(dir) : undefined;
}

/** The guest image, built first if it is not cached (or `force` is set). Throws GuestBuildError. */
export async function ensureGuestImage(opts: EnsureGuestImageOptions = {}): Promise<GuestImage> {
  const cached = await locate(false);
  if (!opts.force && (await isComplete(cached.dir))) return imagePaths(cached.dir);
  const located = await locate(true);
  const progress = opts.onProgress
    ? lineProgress(opts.onProgress)
    : process.stderr.isTTY
      ? ttyProgress(process.stderr)
      : lineProgress((line) => process.stderr.write(`${line}\n`));
  try {
    return await build(located, progress);
  } finally {
    progress.end();
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Removes temporary directories of builds whose process is gone (killed before it could clean up). */
async function sweepStale(root: string): Promise<void> {
  for (const name of await readdir(root)) {
    const m = /^\.(?:build|old)-[0-9a-f]{16}-(\d+)-/.exec(name);
    if (m && Number(m[1]) !== process.pid && !pidAlive(Number(m[1]))) await rm(join(root, name), { recursive: true, force: true });
  }
}

async function checkSpace(root: string): Promise<void> {
  const fs = await statfs(root);
  const free = fs.bavail * fs.bsize;
  if (free < BUILD_SPACE_BYTES) {
    throw new GuestBuildError('ENOSPC', `guest build needs ${(BUILD_SPACE_BYTES / 2 ** 30).toFixed(1)} GiB free under ${root} (has ${(free / 2 ** 30).toFixed(1)} GiB; set XDG_CACHE_HOME to build elsewhere)`);
  }
}

function closeLog(log: WriteStream): Promise<void> {
  return new Promise((resolve) => log.end(resolve));
}

const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

async function build(at: Located, progress: BuildProgress): Promise<GuestImage> {
  const started = Date.now();
  await mkdir(at.root, { recursive: true });
  await sweepStale(at.root);
  await checkSpace(at.root);

  const tmp = await mkdtemp(join(at.root, `.build-${at.key}-${process.pid}-`));
  const out = join(tmp, 'out');
  await mkdir(out);
  const log = createWriteStream(join(out, 'build.log'));
  const abort = new AbortController();
  let interruptedBy: NodeJS.Signals | undefined;
  const onSignal = (sig: NodeJS.Signals): void => {
    interruptedBy ??= sig;
    abort.abort();
  };
  for (const sig of SIGNALS) process.on(sig, onSignal);
  const checkAbort = (): void => {
    if (abort.signal.aborted) throw new GuestBuildError('EINTR', 'guest build interrupted');
  };

  try {
    progress.stage('building initramfs');
    const [busybox, applets] = await Promise.all([readFile(BUSYBOX_PATH), busyboxApplets(BUSYBOX_PATH)]);
    const sourceFile = (name: string): Uint8Array => at.sources.find((s) => s.name === name)!.data;
    const scripts = at.sources.filter((s) => s.name.startsWith('scripts/')).map((s) => ({ name: s.name.slice('scripts/'.length), data: s.data }));
    const cpio = writeCpio(initramfsEntries({ busybox, applets, init: sourceFile('init.sh'), scripts }));
    await writeFile(join(out, 'initramfs.cpio'), cpio);
    await writeFile(join(out, 'initramfs.cpio.gz'), await gzipAsync(cpio, { level: 9 }));
    checkAbort();

    // The fragment is read from the same bytes that went into the key.
    const fragmentPath = join(tmp, 'rxvirt.config');
    await writeFile(fragmentPath, sourceFile('kernel.config'));
    const kernel = await buildKernel(tmp, fragmentPath, { log, signal: abort.signal, progress });
    checkAbort();

    progress.stage('installing');
    await Promise.all([
      copyFile(kernel.bzImage, join(out, 'bzImage')),
      copyFile(kernel.vmlinux, join(out, 'vmlinux')),
      copyFile(kernel.config, join(out, 'kernel.config')),
      copyFile(kernel.systemMap, join(out, 'System.map')),
    ]);
    const payload = bzImagePayload(await readFile(kernel.bzImage));
    const manifest = {
      key: at.key,
      builderVersion: BUILDER_VERSION,
      packages: { 'linux-source-6.1': at.versions.kernelSource, 'busybox-static': at.versions.busybox },
      kernelRelease: kernel.release,
      bzImagePayload: payload ?? null,
      builtAt: new Date().toISOString(),
      buildSeconds: Math.round((Date.now() - started) / 1000),
    };
    await writeFile(join(out, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);
    await closeLog(log);
    checkAbort();
    await install(at, out);
    progress.stage(`done in ${formatElapsed(Date.now() - started)}, cleaning up`);
    return imagePaths(at.dir);
  } catch (err) {
    if (!log.closed) await closeLog(log);
    if (interruptedBy) throw new GuestBuildError('EINTR', `guest build interrupted by ${interruptedBy}; the partial build was removed`, interruptedBy);
    const failedLog = join(at.root, `guest-${at.key}.failed.log`);
    await rename(join(out, 'build.log'), failedLog).catch(() => undefined);
    if (err instanceof GuestBuildError) throw new GuestBuildError(err.code, `${err.message}\n(full log: ${failedLog})`);
    throw err;
  } finally {
    await rm(tmp, { recursive: true, force: true });
    for (const sig of SIGNALS) process.off(sig, onSignal);
  }
}

/** Moves the finished image into place with a rename; an image already there (a concurrent build, or --force) is replaced or kept. */
async function install(at: Located, out: string): Promise<void> {
  try {
    await rename(out, at.dir);
    return;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
  }
  const old = join(at.root, `.old-${at.key}-${process.pid}-${Date.now()}`);
  await rename(at.dir, old);
  await rename(out, at.dir);
  await rm(old, { recursive: true, force: true });
}
