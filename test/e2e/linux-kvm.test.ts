// Linux on rxvirt's own VMM, end to end: the cached guest image booted on KVM through the
// composition API with virtio console, block and rng. One boot (about a minute or two on a
// kvm_pvm host) runs a guest script that answers a question asked on hvc0, reads a sector the
// host wrote, writes one the host checks afterwards, and reads the hardware RNG; the guest
// then reboots, which must end the VM as a clean 'reset'.
import { randomBytes, randomInt } from 'node:crypto';
import { createHash } from 'node:crypto';
import { mkdtempSync, openSync, readSync, rmSync, writeFileSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Subject } from 'rxjs';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { findGuestImage, type GuestImage } from '../../cli/guest-image/guest-image.ts';
import { BlockDevice } from '../../devices/block.ts';
import { ConsoleDevice } from '../../devices/console.ts';
import { RngDevice } from '../../devices/rng.ts';
import type { ByteStream } from '../../framework/io/byte-stream.ts';
import { KvmHypervisor } from '../../framework/vm/kvm/kvm-hypervisor.ts';
import { createMachine } from '../../framework/vm/machine.ts';
import { VirtioMmioTransport } from '../../transports/virtio-mmio/mmio-transport.ts';

async function skipReason(): Promise<string | undefined> {
  if (!KvmHypervisor.available()) return 'no /dev/kvm';
  try {
    return (await findGuestImage()) ? undefined : 'the guest image is not built (rxvirt guest build)';
  } catch (e) {
    return `no guest image on this host (${(e as Error).message})`;
  }
}

const skip = await skipReason();
if (skip) console.log(`SKIP: ${skip}`);
const linuxTest = skip ? test.skip : test;

/** Text arriving on a stream, with waits for a pattern. */
class TextSink {
  text = '';
  private waiters: { re: RegExp; resolve: (m: RegExpMatchArray) => void }[] = [];

  push(bytes: Uint8Array): void {
    this.text += Buffer.from(bytes).toString('latin1');
    this.waiters = this.waiters.filter((w) => {
      const m = this.text.match(w.re);
      if (m) w.resolve(m);
      return !m;
    });
  }

  wait(re: RegExp): Promise<RegExpMatchArray> {
    const m = this.text.match(re);
    return m ? Promise.resolve(m) : new Promise((resolve) => this.waiters.push({ re, resolve }));
  }
}

const SECTOR = 512;
const DISK_BYTES = 8 << 20;
const HOST_SECTOR = 3;
const GUEST_SECTOR = 9;
const BOOT_TIMEOUT_MS = 8 * 60_000;

linuxTest('Linux boots with virtio console, block and rng; all three work both ways and the guest ends cleanly', async () => {
  const image = (await findGuestImage()) as GuestImage;
  const dir = mkdtempSync(join(tmpdir(), 'rxvirt-e2e-'));
  const diskPath = join(dir, 'disk.img');
  const hostData = randomBytes(SECTOR);
  const disk = Buffer.alloc(DISK_BYTES);
  hostData.copy(disk, HOST_SECTOR * SECTOR);
  writeFileSync(diskPath, disk);
  const guestText = `rxvirt-guest-wrote-${randomInt(1e9)}`;
  const [a, b] = [randomInt(1000, 9999), randomInt(1000, 9999)];
  const serialNumber = `e2e-${randomInt(1e6)}`;

  const hvcInput = new Subject<Uint8Array>();
  const hvc = new TextSink();
  const serial = new TextSink();
  const consoleHost: ByteStream = { input$: hvcInput, output: (bytes) => hvc.push(bytes), close() {} };
  const block = BlockDevice.open(diskPath, { serial: serialNumber });
  const rng = new RngDevice();

  // The guest's side, run by /init: everything it finds goes to the serial console as key=value.
  const script = [
    // One open for the whole exchange: input that reaches a tty while its last opener is
    // closing it is dropped with it.
    'exec 3<>/dev/hvc0',
    'echo hvc-ready >&3',
    'read -r x y <&3',
    'echo "hvc-answer=$((x * y))" >&3',
    'exec 3>&-',
    'echo "blk-serial=$(cat /sys/block/vda/serial)"',
    'echo "blk-size=$(cat /sys/block/vda/size)"',
    `echo "blk-read=$(dd if=/dev/vda bs=512 skip=${HOST_SECTOR} count=1 2>/dev/null | md5sum | cut -c1-32)"`,
    `printf %s ${guestText} | dd of=/dev/vda bs=512 seek=${GUEST_SECTOR} conv=notrunc,fsync 2>/dev/null`,
    'echo "blk-write=$?"',
    'echo "rng-name=$(cat /sys/class/misc/hw_random/rng_current)"',
    'echo "rng-bytes=$(head -c 64 /dev/hwrng | wc -c)"',
  ].join('\n');

  const vm = await createMachine({ memory: '256M', cpus: 1, transport: VirtioMmioTransport });
  const started = performance.now();
  try {
    vm.serial$.subscribe((bytes) => serial.push(bytes));
    const consoleDevice = vm.attach(new ConsoleDevice(consoleHost), 'console');
    const blockDevice = vm.attach(block, 'block');
    const rngDevice = vm.attach(rng, 'rng');
    await vm.boot({
      kernel: image.vmlinux,
      initrd: image.initramfs,
      cmdline: `rxvirt.cmd=${Buffer.from(script).toString('base64')}`,
    });
    assert.match(vm.cmdline, /virtio_mmio\.device=512@0xd0000000:5 virtio_mmio\.device=512@0xd0001000:6 virtio_mmio\.device=512@0xd0002000:7/);

    const timeout = new Promise<never>((_, reject) => {
      const t = setTimeout(() => reject(new Error(`no clean end within ${BOOT_TIMEOUT_MS / 1000} s; serial so far:\n${serial.text.slice(-3000)}`)), BOOT_TIMEOUT_MS);
      void vm.exited.finally(() => clearTimeout(t));
    });
    const conversation = (async () => {
      await hvc.wait(/hvc-ready/);
      const initAt = serial.text.indexOf('Run /init');
      console.log(`guest /init answered on hvc0 ${((performance.now() - started) / 1000).toFixed(1)} s after boot (init line seen: ${initAt >= 0})`);
      hvcInput.next(Buffer.from(`${a} ${b}\n`));
      return hvc.wait(/hvc-answer=(\d+)/);
    })();
    const answer = await Promise.race([conversation, timeout]);
    const outcome = await Promise.race([vm.exited, timeout]);
    const seconds = (performance.now() - started) / 1000;
    console.log(`guest ended after ${seconds.toFixed(1)} s: ${outcome.kind}`);

    assert.is(Number(answer[1]), a * b, 'the guest read our question on hvc0 and answered it there');
    const field = (name: string) => serial.text.match(new RegExp(`${name}=(\\S*)`))?.[1];
    assert.is(field('rxvirt.exit'), '0', `guest script status; serial:\n${serial.text.slice(-2000)}`);
    assert.is(field('blk-serial'), serialNumber);
    assert.is(Number(field('blk-size')), DISK_BYTES / SECTOR);
    assert.is(field('blk-read'), createHash('md5').update(hostData).digest('hex'), 'the guest read the sector the host wrote');
    assert.is(field('blk-write'), '0');
    const written = Buffer.alloc(guestText.length);
    const fd = openSync(diskPath, 'r');
    try {
      readSync(fd, written, 0, written.length, GUEST_SECTOR * SECTOR);
    } finally {
      closeSync(fd);
    }
    assert.is(written.toString(), guestText, 'the host finds what the guest wrote, at the sector it wrote it to');
    assert.match(field('rng-name') ?? '', /^virtio_rng/);
    assert.is(field('rng-bytes'), '64');
    assert.ok(rngDevice.notifications[0]! > 0, 'rng requests arrived through the ioeventfd');
    assert.ok(blockDevice.notifications[0]! > 0, 'block requests arrived through the ioeventfd');
    assert.ok(consoleDevice.notifications[1]! > 0, 'console output arrived through the ioeventfd');
    assert.is(outcome.kind, 'reset', 'the guest rebooted: a clean end for rxvirt guests');
  } finally {
    await vm.close();
    block.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
