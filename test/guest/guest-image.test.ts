// The guest image builder: the cpio writer (read back by our reader and by the
// system cpio), the cache key and cache root, the kernel config check, the
// progress and CLI output; then, when an image is cached (or
// RXVIRT_GUEST_BUILD=1 builds one) and QEMU is installed, real boots under TCG.

import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { bzImagePayload } from '../../cli/guest-image/bzimage.ts';
import { printAssignments } from '../../cli/guest-image/command.ts';
import { CpioError, readCpio, writeCpio, type CpioEntry } from '../../cli/guest-image/cpio.ts';
import { GuestBuildError } from '../../cli/guest-image/errors.ts';
import { ensureGuestImage, findGuestImage, type GuestImage } from '../../cli/guest-image/guest-image.ts';
import { checkHost, missingPackagesMessage } from '../../cli/guest-image/host.ts';
import { BUILDER_VERSION, guestCacheRoot, guestImageKey, readSourceFiles, type GuestImageInputs } from '../../cli/guest-image/image-key.ts';
import { initramfsEntries } from '../../cli/guest-image/initramfs.ts';
import { configMismatches, kbuildStep } from '../../cli/guest-image/kernel.ts';
import { lineProgress } from '../../cli/guest-image/progress.ts';

const root = new URL('../../', import.meta.url).pathname;
const bytes = (n: number, seed: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff);
const hasCommand = (cmd: string): boolean => spawnSync('sh', ['-c', `command -v ${cmd}`]).status === 0;

// ---------------------------------------------------------------- cpio

const sample: CpioEntry[] = [
  { type: 'dir', path: 'bin', mode: 0o755 },
  { type: 'dir', path: 'tmp', mode: 0o1777 },
  { type: 'dir', path: 'dev', mode: 0o755 },
  { type: 'chardev', path: 'dev/console', major: 5, minor: 1, mode: 0o600 },
  ...[0, 1, 2, 3, 4, 5, 4099].map((n): CpioEntry => ({ type: 'file', path: `bin/f${n}`, data: bytes(n, n), mode: 0o755 })),
  { type: 'symlink', path: 'bin/sh', target: '/bin/busybox' },
  { type: 'file', path: 'init', data: new TextEncoder().encode('#!/bin/sh\necho hi\n'), mode: 0o755 },
];

test('cpio: what is written reads back entry for entry, bytes and modes included', () => {
  const archive = writeCpio(sample);
  assert.equal(archive.length % 4, 0);
  const back = readCpio(archive);
  assert.equal(back.length, sample.length);
  sample.forEach((want, i) => {
    const got = back[i]!;
    assert.equal(got.type, want.type, want.path);
    assert.equal(got.path, want.path);
    if (want.type === 'file' && got.type === 'file') {
      assert.equal(got.mode, want.mode);
      assert.ok(Buffer.from(got.data).equals(Buffer.from(want.data)), `${want.path} data`);
    }
    if (want.type === 'symlink' && got.type === 'symlink') assert.equal(got.target, want.target);
    if (want.type === 'chardev' && got.type === 'chardev') assert.equal([got.major, got.minor, got.mode], [want.major, want.minor, want.mode]);
    if (want.type === 'dir' && got.type === 'dir') assert.equal(got.mode, want.mode);
  });
});

test('cpio: every header starts 4-aligned with the newc magic, and output is deterministic', () => {
  const archive = writeCpio(sample);
  assert.ok(archive.equals(writeCpio(sample)));
  let count = 0;
  for (let off = archive.indexOf('070701'); off >= 0; off = archive.indexOf('070701', off + 1)) {
    assert.equal(off % 4, 0, `header at ${off}`);
    count++;
  }
  assert.ok(count >= sample.length + 1); // + trailer (file data could contain the magic too, ours does not)
  assert.ok(archive.includes('TRAILER!!!\0'));
});

test('cpio: the system cpio lists the same names and types', () => {
  if (!hasCommand('cpio')) {
    console.log('SKIP: no cpio command to cross-check with');
    return;
  }
  const listing = execFileSync('cpio', ['-itv', '--quiet'], { input: writeCpio(sample), encoding: 'utf8' });
  const lines = listing.trim().split('\n');
  assert.equal(lines.length, sample.length);
  sample.forEach((e, i) => {
    const line = lines[i]!;
    const kind = { dir: 'd', file: '-', symlink: 'l', chardev: 'c' }[e.type];
    assert.ok(line.startsWith(kind), `${e.path}: ${line}`);
    assert.ok(line.includes(e.path), line);
    if (e.type === 'file') assert.ok(new RegExp(`\\s${e.data.length}\\s`).test(line), line);
  });
});

test('cpio: writer rejects paths the kernel would misplace', () => {
  const bad: CpioEntry[][] = [
    [{ type: 'dir', path: '/abs' }],
    [{ type: 'dir', path: 'a/../b' }],
    [{ type: 'dir', path: 'a/' }],
    [{ type: 'dir', path: 'TRAILER!!!' }],
    [{ type: 'dir', path: 'a' }, { type: 'dir', path: 'a' }],
    [{ type: 'file', path: 'nodir/f', data: bytes(1, 0) }],
    [{ type: 'file', path: 'f', data: bytes(1, 0), mode: 0o100644 }],
  ];
  for (const entries of bad) assert.throws(() => writeCpio(entries), (e: unknown) => e instanceof CpioError && e.code === 'EINVAL', entries.map((e) => e.path).join(','));
});

test('cpio: reader rejects truncated and corrupted archives instead of reading past the end', () => {
  const archive = writeCpio(sample);
  for (const cut of [0, 50, 200, archive.length - 8]) {
    assert.throws(() => readCpio(archive.subarray(0, cut)), (e: unknown) => e instanceof CpioError, `cut at ${cut}`);
  }
  const corrupt = Buffer.from(archive);
  corrupt.write('99999999', 6 + 6 * 8, 'latin1'); // first entry's filesize: far past the end
  assert.throws(() => readCpio(corrupt), (e: unknown) => e instanceof CpioError);
  const badMagic = Buffer.from(archive);
  badMagic.write('070707', 0, 'latin1');
  assert.throws(() => readCpio(badMagic), /bad magic/);
});

// ---------------------------------------------------------------- cache key and root

const inputs: GuestImageInputs = {
  builderVersion: 1,
  kernelSourceVersion: '6.1.1-1',
  busyboxVersion: '1:1.35.0-4',
  files: [
    { name: 'kernel.config', data: Buffer.from('CONFIG_64BIT=y\n') },
    { name: 'init.sh', data: Buffer.from('#!/bin/sh\n') },
    { name: 'scripts/selftest.sh', data: Buffer.from('echo ok\n') },
  ],
};

test('cache key: stable, 16 hex digits, independent of file order', () => {
  const key = guestImageKey(inputs);
  assert.match(key, /^[0-9a-f]{16}$/);
  assert.is(guestImageKey({ ...inputs, files: [...inputs.files].reverse() }), key);
});

test('cache key: changes with every input that decides the image', () => {
  const key = guestImageKey(inputs);
  const variants: GuestImageInputs[] = [
    { ...inputs, builderVersion: 2 },
    { ...inputs, kernelSourceVersion: '6.1.1-2' },
    { ...inputs, busyboxVersion: '1:1.35.0-5' },
    { ...inputs, files: inputs.files.map((f, i) => (i === 0 ? { ...f, data: Buffer.from('CONFIG_64BIT=n\n') } : f)) },
    { ...inputs, files: inputs.files.map((f, i) => (i === 2 ? { ...f, name: 'scripts/other.sh' } : f)) },
    { ...inputs, files: [...inputs.files, { name: 'scripts/shell.sh', data: Buffer.from('') }] },
    { ...inputs, files: inputs.files.slice(0, 2) },
  ];
  const keys = new Set(variants.map(guestImageKey));
  assert.is(keys.size, variants.length);
  assert.not.ok(keys.has(key));
});

test('cache key: moving bytes between a file name and its content is a different key', () => {
  const a = guestImageKey({ ...inputs, files: [{ name: 'scripts/ab', data: Buffer.from('c') }] });
  const b = guestImageKey({ ...inputs, files: [{ name: 'scripts/a', data: Buffer.from('bc') }] });
  assert.is.not(a, b);
});

test('cache key: the repo sources feed it (kernel.config, init.sh, scripts)', async () => {
  const names = (await readSourceFiles()).map((f) => f.name);
  assert.ok(names.includes('kernel.config') && names.includes('init.sh'));
  assert.ok(names.includes('scripts/selftest.sh') && names.includes('scripts/shell.sh'));
  assert.is(BUILDER_VERSION > 0, true);
});

test('cache root: $XDG_CACHE_HOME when absolute, else ~/.cache', () => {
  assert.is(guestCacheRoot({ XDG_CACHE_HOME: '/var/cache/me' }, '/home/u'), '/var/cache/me/rxvirt');
  assert.is(guestCacheRoot({ XDG_CACHE_HOME: 'relative/dir' }, '/home/u'), '/home/u/.cache/rxvirt');
  assert.is(guestCacheRoot({}, '/home/u'), '/home/u/.cache/rxvirt');
  assert.is(guestCacheRoot({ XDG_CACHE_HOME: '' }, '/home/u'), '/home/u/.cache/rxvirt');
});

// ---------------------------------------------------------------- kernel config, kbuild output, initramfs layout

test('kernel config check: reports fragment lines Kconfig dropped, accepts absent symbols as not set', () => {
  const fragment = '# comment\nCONFIG_A=y\nCONFIG_N=8\n# CONFIG_PCI is not set\n# CONFIG_GONE is not set\nCONFIG_B=y\n';
  const final = 'CONFIG_A=y\nCONFIG_N=4\nCONFIG_PCI=y\n# CONFIG_B is not set\n';
  assert.equal(configMismatches(fragment, final), ['CONFIG_N: wanted 8, got 4', 'CONFIG_PCI: wanted n, got y', 'CONFIG_B: wanted y, got n']);
  assert.equal(configMismatches(fragment, 'CONFIG_A=y\nCONFIG_N=8\nCONFIG_B=y\n'), []);
});

test('kernel config: the repo fragment turns off what must stay off and asks for the virtio drivers', () => {
  const fragment = readFileSync(join(root, 'cli/guest-image/kernel.config'), 'utf8');
  const wanted = configMismatches(fragment, ''); // against an empty config: every "=y" line shows up
  for (const sym of ['VIRTIO_MMIO', 'VIRTIO_MMIO_CMDLINE_DEVICES', 'VIRTIO_BLK', 'VIRTIO_CONSOLE', 'HW_RANDOM_VIRTIO', 'SERIAL_8250_CONSOLE', 'BLK_DEV_INITRD', 'DEVTMPFS']) {
    assert.ok(wanted.includes(`CONFIG_${sym}: wanted y, got n`), sym);
  }
  for (const sym of ['PCI', 'ACPI', 'MODULES', 'HYPERVISOR_GUEST']) {
    assert.equal(configMismatches(fragment, `CONFIG_${sym}=y\n`).filter((m) => m.startsWith(`CONFIG_${sym}:`)), [`CONFIG_${sym}: wanted n, got y`]);
  }
});

test('kbuild step lines are recognised, other output is not', () => {
  assert.is(kbuildStep('  CC      kernel/fork.o'), 'CC kernel/fork.o');
  assert.is(kbuildStep('  LD      vmlinux'), 'LD vmlinux');
  assert.is(kbuildStep('  HOSTCC  scripts/basic/fixdep'), 'HOSTCC scripts/basic/fixdep');
  assert.is(kbuildStep('kernel/fork.c:12: warning: unused variable'), undefined);
  assert.is(kbuildStep('make[1]: Entering directory'), undefined);
  assert.is(kbuildStep('Kernel: arch/x86/boot/bzImage is ready  (#1)'), undefined);
});

test('initramfs layout: console node, executable /init, scripts, applets linked to busybox', () => {
  const entries = initramfsEntries({
    busybox: bytes(100, 1),
    applets: ['bin/sh', 'usr/bin/base64', 'sbin/poweroff', 'usr/bin/[[', 'bin/busybox'],
    init: Buffer.from('#!/bin/sh\n'),
    scripts: [{ name: 'selftest.sh', data: Buffer.from('echo ok\n') }],
  });
  const back = readCpio(writeCpio(entries)); // also proves parents come before children
  const byPath = new Map(back.map((e) => [e.path, e]));
  assert.equal(byPath.get('dev/console'), { type: 'chardev', path: 'dev/console', major: 5, minor: 1, mode: 0o600 });
  const init = byPath.get('init');
  assert.ok(init?.type === 'file' && init.mode === 0o755);
  assert.ok(byPath.get('scripts/selftest.sh')?.type === 'file');
  for (const applet of ['bin/sh', 'usr/bin/base64', 'sbin/poweroff', 'usr/bin/[[']) {
    assert.equal(byPath.get(applet), { type: 'symlink', path: applet, target: '/bin/busybox' });
  }
  assert.is(byPath.get('bin/busybox')?.type, 'file');
  assert.throws(() => initramfsEntries({ busybox: bytes(1, 0), applets: ['../etc/x'], init: bytes(1, 0), scripts: [] }), (e: unknown) => e instanceof GuestBuildError);
});

// ---------------------------------------------------------------- bzImage header, progress, CLI output, host messages

test('bzImage payload: found through the setup header, compressor named by its magic', () => {
  const image = new Uint8Array(8192);
  const view = new DataView(image.buffer);
  image[0x1f1] = 3; // setup sectors: protected-mode code at (3 + 1) * 512
  view.setUint32(0x202, 0x53726448, true);
  view.setUint16(0x206, 0x020f, true);
  view.setUint32(0x248, 100, true);
  view.setUint32(0x24c, 1000, true);
  image.set([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], 2048 + 100);
  assert.equal(bzImagePayload(image), { offset: 2148, length: 1000, compression: 'xz' });
  image.set([0x1f, 0x8b, 0, 0, 0, 0], 2048 + 100);
  assert.is(bzImagePayload(image)?.compression, 'gzip');
  view.setUint32(0x24c, 100_000, true); // payload past the end of the file
  assert.is(bzImagePayload(image), undefined);
  assert.is(bzImagePayload(new Uint8Array(4096)), undefined);
});

test('progress lines: every stage, and a step count at most once per interval', () => {
  let t = 0;
  const lines: string[] = [];
  const p = lineProgress((l) => lines.push(l), 10_000, () => t);
  p.stage('building kernel');
  for (let i = 0; i < 300; i++) {
    t += 100;
    p.step(`CC f${i}.o`);
  }
  p.end();
  assert.equal(lines, [
    'guest build: building kernel (0s)',
    'guest build: building kernel, 100 steps (10s)',
    'guest build: building kernel, 200 steps (20s)',
    'guest build: building kernel, 300 steps (30s)',
  ]);
});

test('guest build --print: shell assignments that survive eval, odd paths included', () => {
  const dir = "/tmp/it's a dir";
  const image: GuestImage = { dir, bzImage: `${dir}/bzImage`, vmlinux: '/x/vmlinux', initramfs: '/x/initramfs.cpio', initramfsGz: '/x/initramfs.cpio.gz' };
  const out = execFileSync('sh', ['-c', 'eval "$1"; printf "%s|%s|%s" "$dir" "$bzImage" "$initramfsGz"', 'sh', printAssignments(image)], { encoding: 'utf8' });
  assert.is(out, `${dir}|${dir}/bzImage|/x/initramfs.cpio.gz`);
});

test('missing packages: one line naming them and the apt-get command', () => {
  assert.is(missingPackagesMessage(['linux-source-6.1']), 'guest build needs Debian package linux-source-6.1 (apt-get install linux-source-6.1)');
  assert.is(missingPackagesMessage(['flex', 'bison']), 'guest build needs Debian packages flex, bison (apt-get install flex bison)');
});

// ---------------------------------------------------------------- on a host that can build: interrupting leaves nothing behind

async function hostCannotBuild(): Promise<string | undefined> {
  try {
    await checkHost(true);
    return undefined;
  } catch (err) {
    if (err instanceof GuestBuildError) return err.message;
    throw err;
  }
}

test('guest build interrupted by SIGINT: exit 130, no image and no temporary directory left', async () => {
  const why = await hostCannotBuild();
  if (why) {
    console.log(`SKIP: ${why}`);
    return;
  }
  // Beside the real cache: the same file system a real build would use (it checks for free space).
  const parent = dirname(guestCacheRoot());
  mkdirSync(parent, { recursive: true });
  const cache = mkdtempSync(join(parent, 'rxvirt-sigint-test-'));
  try {
    const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'cli/main.ts'), 'guest', 'build'], {
      cwd: root, env: { ...process.env, XDG_CACHE_HOME: cache }, stdio: ['ignore', 'pipe', 'pipe'],
    });
    let err = '';
    const interrupted = new Promise<void>((resolve) => {
      child.stderr.on('data', (d: Buffer) => {
        err += d;
        if (err.includes('extracting kernel source')) resolve();
      });
    });
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    await Promise.race([interrupted, exited]);
    await new Promise((r) => setTimeout(r, 500)); // let tar write some of the tree
    child.kill('SIGINT');
    const code = await exited;
    assert.is(code, 130, err);
    assert.match(err, /interrupted by SIGINT/);
    assert.equal(readdirSync(join(cache, 'rxvirt')), []);
  } finally {
    rmSync(cache, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------- real boots under QEMU TCG

async function bootableImage(): Promise<GuestImage | string> {
  if (!hasCommand('qemu-system-x86_64')) return 'qemu-system-x86_64 not installed (Debian package qemu-system-x86)';
  try {
    if (process.env.RXVIRT_GUEST_BUILD === '1') return await ensureGuestImage({ onProgress: (l) => console.log(l) });
    return (await findGuestImage()) ?? 'guest image not built (run `npm run rxvirt -- guest build`, or set RXVIRT_GUEST_BUILD=1)';
  } catch (err) {
    if (err instanceof GuestBuildError) return err.message;
    throw err;
  }
}

interface Boot {
  output: string;
  code: number | null;
  seconds: number;
}

/** Boots under QEMU TCG on a microvm with only a serial port (plus `extra` QEMU arguments). */
function boot(image: GuestImage, initrd: string, append: string, extra: string[] = [], timeoutMs = 60_000): Promise<Boot> {
  return new Promise((resolve) => {
    const started = Date.now();
    const qemu = spawn('qemu-system-x86_64', [
      '-M', 'microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off', '-accel', 'tcg', '-m', '256M',
      '-nographic', '-no-reboot', '-nodefaults', '-serial', 'stdio', '-monitor', 'none',
      '-kernel', image.bzImage, '-initrd', initrd,
      '-append', `console=ttyS0 ${append}`, ...extra,
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    qemu.stdout.on('data', (d: Buffer) => { output += d; });
    qemu.stderr.on('data', (d: Buffer) => { output += d; });
    const timer = setTimeout(() => qemu.kill('SIGKILL'), timeoutMs);
    qemu.on('close', (code) => {
      clearTimeout(timer);
      resolve({ output: output.replace(/\r/g, ''), code, seconds: (Date.now() - started) / 1000 });
    });
  });
}

const b64 = (cmd: string): string => Buffer.from(cmd).toString('base64');

test('QEMU TCG: rxvirt.cmd= runs the command, prints its status, and the VM exits cleanly (gzip initramfs)', async () => {
  const image = await bootableImage();
  if (typeof image === 'string') {
    console.log(`SKIP: ${image}`);
    return;
  }
  const nonce = randomBytes(6).toString('hex');
  const r = await boot(image, image.initramfsGz, `panic=-1 reboot=t rxvirt.cmd=${b64(`echo "nonce=${nonce} sum=$((6 * 7))"; exit 3`)}`);
  assert.ok(r.output.includes(`nonce=${nonce} sum=42`), r.output);
  assert.ok(r.output.includes('rxvirt.exit=3'), r.output);
  assert.is(r.code, 0, r.output);
  assert.ok(r.seconds < 20, `boot took ${r.seconds} s`);
});

test('QEMU TCG: selftest from the uncompressed initramfs on 2 vCPUs; exits with no reboot=/panic= given', async () => {
  const image = await bootableImage();
  if (typeof image === 'string') {
    console.log(`SKIP: ${image}`);
    return;
  }
  const r = await boot(image, image.initramfs, 'rxvirt.script=selftest', ['-smp', '2']);
  assert.match(r.output, /rxvirt-selftest: ok kernel=\S+ cpus=2 virtio-devices=0/);
  assert.ok(r.output.includes('rxvirt.exit=0'), r.output);
  assert.is(r.code, 0, r.output);
});

test('QEMU TCG: a virtio-mmio block device and rng from the command line are usable in the guest', async () => {
  const image = await bootableImage();
  if (typeof image === 'string') {
    console.log(`SKIP: ${image}`);
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'rxvirt-guest-disk-'));
  try {
    const disk = join(dir, 'disk.img');
    const content = randomBytes(4096);
    writeFileSync(disk, content);
    const want = execFileSync('sha256sum', [disk], { encoding: 'utf8' }).split(' ')[0];
    const cmd = 'sha256sum /dev/vda; head -c 64 /dev/hwrng | wc -c; cat /sys/class/misc/hw_random/rng_current';
    const r = await boot(image, image.initramfsGz, `rxvirt.cmd=${b64(cmd)}`, [
      '-global', 'virtio-mmio.force-legacy=false',
      '-drive', `file=${disk},format=raw,if=none,id=d0`, '-device', 'virtio-blk-device,drive=d0',
      '-device', 'virtio-rng-device',
    ]);
    assert.ok(r.output.includes(`${want}  /dev/vda`), r.output);
    assert.match(r.output, /\n64\n/);
    assert.match(r.output, /virtio_rng/);
    assert.is(r.code, 0, r.output);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
