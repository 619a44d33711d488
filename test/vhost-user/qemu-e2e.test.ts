// End to end under QEMU (TCG): a real Linux guest drives rxvirt devices through
// QEMU's vhost-user-blk and vhost-user-rng front-ends, with guest RAM in a shared
// memfd. One boot exercises three disks (raw O_DIRECT I/O with many writes in
// flight, a filesystem, a read-only export) and the entropy device; the host then
// checks the image files. Skipped (with the reason) without qemu-system-x86_64
// or a cached guest image (`rxvirt guest build`).

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findGuestImage, type GuestImage } from '../../cli/guest-image/guest-image.ts';
import { BlockDevice } from '../../devices/block.ts';
import { RngDevice } from '../../devices/rng.ts';
import type { VirtioDevice } from '../../framework/virtio/device.ts';
import { VhostUserBackend } from '../../transports/vhost-user/backend.ts';

const MiB = 1 << 20;
const sha256 = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

/** Why the QEMU test cannot run here, or null. */
async function unavailable(): Promise<{ reason: string } | { image: GuestImage }> {
  const help = spawnSync('qemu-system-x86_64', ['-device', 'help'], { encoding: 'utf8' });
  if (help.error) return { reason: 'qemu-system-x86_64 not installed (Debian package qemu-system-x86)' };
  if (!/"vhost-user-blk"/.test(help.stdout + help.stderr)) return { reason: 'this QEMU has no vhost-user-blk device' };
  try {
    const image = await findGuestImage();
    if (!image) return { reason: 'no cached guest image (run `rxvirt guest build` first)' };
    return { image };
  } catch (err) {
    return { reason: `guest image unavailable: ${err instanceof Error ? err.message : String(err)}` };
  }
}

// The guest program. The kernel command line is too short for it, so it travels in the
// first 4 KiB of the read-only disk and rxvirt.cmd only finds that disk and runs it.
const GUEST_SCRIPT = `
dev() { for d in /sys/block/vd*; do [ "$(cat $d/serial)" = "$1" ] && echo /dev/\${d##*/}; done; }
D=$(dev rx-data); F=$(dev rx-fs); R=$(dev rx-ro)
echo "SERIALS=$(for d in /sys/block/vd*; do printf '%s,' "$(cat $d/serial)"; done)"
dd if=/dev/urandom of=/tmp/pat bs=65536 count=32 2>/dev/null
dd if=/tmp/pat of=$D bs=65536 oflag=direct conv=fsync 2>/dev/null; echo "WRITE_RC=$?"
echo "WRITE_SHA=$(sha256sum /tmp/pat | cut -d' ' -f1)"
echo "READ_SHA=$(dd if=$D bs=65536 count=32 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
dd if=/dev/urandom of=/tmp/small bs=4096 count=1024 2>/dev/null
for i in $(seq 0 31); do
  dd if=/tmp/small of=$D bs=4096 count=32 skip=$((i*32)) seek=$((1024 + i*32)) oflag=direct 2>/dev/null &
done
wait; sync
echo "SMALL_SHA=$(sha256sum /tmp/small | cut -d' ' -f1)"
echo "SMALL_READ_SHA=$(dd if=$D bs=4096 skip=1024 count=1024 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
mke2fs -q $F && echo MKFS_OK
mkdir -p /mnt && mount -t ext4 $F /mnt && echo MOUNT_OK
echo hello-from-the-guest > /mnt/hello.txt
dd if=/dev/urandom of=/mnt/blob bs=4096 count=256 2>/dev/null
echo "BLOB_SHA=$(sha256sum /mnt/blob | cut -d' ' -f1)"
umount /mnt && echo UMOUNT_OK
echo "RO_FLAG=$(cat /sys/block/\${R##*/}/ro)"
if dd if=/dev/zero of=$R bs=4096 seek=1 count=1 oflag=direct 2>/dev/null; then echo RO_WRITE=accepted; else echo RO_WRITE=refused; fi
echo "RO_SHA=$(dd if=$R bs=4096 skip=1 count=255 iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
echo "RNG=$(cat /sys/class/misc/hw_random/rng_current)"
echo "RNG_BYTES=$(dd if=/dev/hwrng bs=64 count=8 2>/dev/null | wc -c)"
echo "RNG_SHA=$(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | sha256sum | cut -d' ' -f1)"
echo "RNG_SHA2=$(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | sha256sum | cut -d' ' -f1)"
echo E2E_DONE
`;

const BOOT_CMD = 'for d in /sys/block/vd*; do [ "$(cat $d/serial)" = rx-ro ] && ' +
  'dd if=/dev/${d##*/} bs=4096 count=1 2>/dev/null | tr -d "\\000" > /s.sh; done; sh /s.sh';

const available = await unavailable();

if ('reason' in available) {
  console.log(`SKIP: QEMU vhost-user end-to-end (${available.reason})`);
  test.skip('QEMU guest drives vhost-user-blk and vhost-user-rng', () => {});
} else {
  const image = available.image;
  const dir = mkdtempSync(join(tmpdir(), 'rxvirt-vu-qemu-'));
  const files = { data: join(dir, 'data.img'), fs: join(dir, 'fs.img'), ro: join(dir, 'ro.img') };
  writeFileSync(files.data, new Uint8Array(16 * MiB));
  writeFileSync(files.fs, new Uint8Array(16 * MiB));
  const roImage = new Uint8Array(MiB).map((_, i) => (i * 131 + (i >> 12)) & 0xff);
  roImage.fill(0, 0, 4096);
  roImage.set(new TextEncoder().encode(GUEST_SCRIPT), 0);
  writeFileSync(files.ro, roImage);
  const roBefore = sha256(readFileSync(files.ro));

  const devices: { name: string; device: VirtioDevice; qemu: string }[] = [
    { name: 'data', device: BlockDevice.open(files.data, { serial: 'rx-data' }), qemu: 'vhost-user-blk' },
    { name: 'fs', device: BlockDevice.open(files.fs, { serial: 'rx-fs' }), qemu: 'vhost-user-blk' },
    { name: 'ro', device: BlockDevice.open(files.ro, { serial: 'rx-ro', readOnly: true }), qemu: 'vhost-user-blk' },
    { name: 'rng', device: new RngDevice(), qemu: 'vhost-user-rng' },
  ];
  const closes: string[] = [];
  const backends = devices.map((d) => new VhostUserBackend(d.device, {
    socketPath: join(dir, `${d.name}.sock`),
    onConnectionClosed: (reason) => closes.push(`${d.name}: ${reason}`),
  }));
  for (const b of backends) b.listen();

  let output = '';
  let exitCode: number | null = null;
  let secondOutput = '';
  const field = (name: string, text = output) => new RegExp(`^${name}=(.*)$`, 'm').exec(text)?.[1]?.trim();

  /** Boot the guest with every device attached; resolves with QEMU's output and exit code. */
  async function boot(cmd: string): Promise<{ output: string; code: number | null }> {
    const args = [
      '-M', 'microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off,memory-backend=mem',
      '-accel', 'tcg', '-m', '256M', '-object', 'memory-backend-memfd,id=mem,size=256M,share=on',
      '-nographic', '-no-reboot', '-kernel', image.bzImage, '-initrd', image.initramfsGz,
      '-append', `console=ttyS0 panic=-1 reboot=t quiet rxvirt.cmd=${Buffer.from(cmd).toString('base64')}`,
      '-global', 'virtio-mmio.force-legacy=false',
    ];
    devices.forEach((d, i) => {
      args.push('-chardev', `socket,id=vu${i},path=${backends[i]!.socketPath}`, '-device', `${d.qemu},chardev=vu${i}`);
    });
    const qemu = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let text = '';
    qemu.stdout.on('data', (d) => { text += d; });
    qemu.stderr.on('data', (d) => { text += d; });
    const timer = setTimeout(() => qemu.kill('SIGKILL'), 90_000);
    const code = await new Promise<number | null>((resolve) => qemu.on('exit', resolve));
    clearTimeout(timer);
    return { output: text, code };
  }

  test.before(async () => {
    ({ output, code: exitCode } = await boot(BOOT_CMD));
    // QEMU restarted: the same back-ends (never restarted) serve the new front-ends.
    const again = 'for d in /sys/block/vd*; do [ "$(cat $d/serial)" = rx-data ] && echo "AGAIN_SHA=$(dd if=/dev/${d##*/} ' +
      'bs=65536 count=32 iflag=direct 2>/dev/null | sha256sum | cut -d" " -f1)"; done; ' +
      'echo "RNG_AGAIN=$(dd if=/dev/hwrng bs=64 count=2 2>/dev/null | wc -c)"';
    secondOutput = (await boot(again)).output;
    for (const b of backends) await b.close();
    for (const d of devices) if (d.device instanceof BlockDevice) d.device.close();
  });

  test('the guest ran the whole script and QEMU exited cleanly', () => {
    if (process.env.RXVIRT_E2E_VERBOSE) console.log(output);
    assert.ok(output.includes('E2E_DONE'), output.slice(-3000));
    assert.is(exitCode, 0, output.slice(-2000));
    assert.match(output, /rxvirt\.exit=0/);
  });

  test('GET_ID serials are visible in /sys/block/vd*/serial', () => {
    assert.equal(field('SERIALS')!.split(',').filter(Boolean).sort(), ['rx-data', 'rx-fs', 'rx-ro']);
  });

  test('O_DIRECT writes reach the image and read back identically', () => {
    assert.is(field('WRITE_RC'), '0');
    const written = field('WRITE_SHA');
    assert.match(written ?? '', /^[0-9a-f]{64}$/);
    assert.is(field('READ_SHA'), written);
    assert.is(sha256(readFileSync(files.data).subarray(0, 2 * MiB)), written);
  });

  test('32 concurrent O_DIRECT writers: every 4 KiB block lands where it should', () => {
    const small = field('SMALL_SHA');
    assert.match(small ?? '', /^[0-9a-f]{64}$/);
    assert.is(field('SMALL_READ_SHA'), small);
    assert.is(sha256(readFileSync(files.data).subarray(4 * MiB, 8 * MiB)), small);
  });

  test('a filesystem made, mounted, written and unmounted in the guest checks clean on the host', () => {
    for (const marker of ['MKFS_OK', 'MOUNT_OK', 'UMOUNT_OK']) assert.ok(output.includes(marker), marker);
    const fsck = spawnSync('e2fsck', ['-fn', files.fs], { encoding: 'utf8' });
    if (fsck.error) {
      console.log('SKIP: host filesystem check (e2fsck not installed: Debian package e2fsprogs)');
      return;
    }
    assert.is(fsck.status, 0, fsck.stdout + fsck.stderr);
    const hello = spawnSync('debugfs', ['-R', 'cat /hello.txt', files.fs], { encoding: 'utf8' });
    assert.is(hello.stdout, 'hello-from-the-guest\n');
    const blob = join(dir, 'blob');
    spawnSync('debugfs', ['-R', `dump /blob ${blob}`, files.fs]);
    assert.is(sha256(readFileSync(blob)), field('BLOB_SHA'));
  });

  test('the read-only export refuses writes and its file is unchanged', () => {
    assert.is(field('RO_FLAG'), '1');
    assert.is(field('RO_WRITE'), 'refused');
    assert.is(field('RO_SHA'), sha256(roImage.subarray(4096, 256 * 4096)));
    assert.is(sha256(readFileSync(files.ro)), roBefore);
  });

  test('the guest reads entropy from /dev/hwrng through virtio-rng', () => {
    assert.match(field('RNG') ?? '', /^virtio_rng/);
    assert.is(field('RNG_BYTES'), '512');
    assert.not.equal(field('RNG_SHA'), field('RNG_SHA2'));
  });

  test('a restarted QEMU is served by the same back-ends and sees the data written before', () => {
    assert.is(field('AGAIN_SHA', secondOutput), field('WRITE_SHA'), secondOutput.slice(-2000));
    assert.is(field('RNG_AGAIN', secondOutput), '128');
    for (const b of backends) assert.is(b.connections, 2);
  });

  test('every front-end connection ended by QEMU hanging up, not by a protocol fault', () => {
    assert.is(closes.length, 2 * devices.length, closes.join('; '));
    for (const c of closes) assert.match(c, /front-end disconnected|back-end shutting down/);
  });

  test.after(() => rmSync(dir, { recursive: true, force: true }));
}

test.run();
