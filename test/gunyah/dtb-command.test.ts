// `rxvirt dtb`: the tree it writes (parsed back, and judged by dtc) and one-line usage errors.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UsageError } from '../../cli/args.ts';
import { dtbCommand } from '../../cli/dtb-command.ts';
import { parseFdt } from '../../framework/fdt/fdt-reader.ts';
import { readNumber } from '../../framework/fdt/fdt-values.ts';
import { ARM64_RAM_BASE } from '../../framework/vm/gunyah/arm64-layout.ts';
import { decompile, dtcAvailable, warningChecks } from './support/dtc.ts';

const dir = mkdtempSync(join(tmpdir(), 'rxvirt-dtb-'));
const disk = join(dir, 'disk.img');
writeFileSync(disk, new Uint8Array(4096));
const out = join(dir, 'guest.dtb');

/** Runs the command with stdout captured. */
async function run(argv: string[]): Promise<{ code: number; stdout: string }> {
  const write = process.stdout.write;
  let stdout = '';
  process.stdout.write = ((chunk: string) => { stdout += chunk; return true; }) as typeof process.stdout.write;
  try {
    return { code: await dtbCommand(argv), stdout };
  } finally {
    process.stdout.write = write;
  }
}

async function usage(argv: string[], message: RegExp): Promise<void> {
  try {
    await run(argv);
  } catch (e) {
    assert.instance(e, UsageError);
    assert.match((e as Error).message, message);
    assert.not.match((e as Error).message, /\n/, 'one line');
    return;
  }
  assert.unreachable(`expected a usage error for ${argv.join(' ')}`);
}

test('writes the tree of the guest the flags describe: RAM, disks then console then rng, command line', async () => {
  const { code, stdout } = await run(['--hypervisor', 'gunyah', '--memory', '512M', '--disk', `${disk},readonly,serial=boot`,
    '--disk', disk, '--console', 'stdio', '--rng', '-o', out]);
  assert.is(code, 0);
  assert.match(stdout, /wrote .*guest\.dtb .* disk0 0x[0-9a-f]+ spi 16, disk1 0x[0-9a-f]+ spi 17, console 0x[0-9a-f]+ spi 18, rng 0x[0-9a-f]+ spi 19/);
  const root = parseFdt(readFileSync(out)).root;
  const reg = root.find('memory')!.cells('reg')!;
  assert.equal([readNumber(reg, 0, 2), readNumber(reg, 2, 2)], [BigInt(ARM64_RAM_BASE), 512n << 20n]);
  const virtio = root.children.filter((c) => c.string('compatible') === 'virtio,mmio');
  assert.equal(virtio.map((v) => v.cells('interrupts')![1]), [16, 17, 18, 19]);
  assert.is(root.find('gunyah-vm-config/vdevices')!.children.length, 4);
  assert.is(root.find('chosen')!.string('bootargs'), 'console=hvc0 root=/dev/vda');
  await run(['--hypervisor=gunyah', '--rng', '--cmdline', 'quiet', '--output', out]);
  const small = parseFdt(readFileSync(out)).root;
  assert.is(small.find('chosen')!.string('bootargs'), 'quiet');
  assert.is(small.children.filter((c) => c.string('compatible') === 'virtio,mmio').length, 1);
  assert.equal(small.find('memory')!.cells('reg'), [0, ARM64_RAM_BASE, 0, 256 << 20], 'default 256M');
});

test('dtc accepts what the command writes', async () => {
  if (!dtcAvailable()) {
    console.log('SKIP: dtc not installed (Debian package device-tree-compiler)');
    return;
  }
  await run(['--hypervisor', 'gunyah', '--disk', disk, '--console', 'file:/tmp/x', '--rng', '-o', out]);
  const r = decompile(readFileSync(out));
  assert.is(r.status, 0);
  assert.equal(warningChecks(r.messages).filter((c) => c !== 'label_is_string' && c !== 'unit_address_vs_reg'), []);
});

test('bad input is one line naming the flag and what was expected', async () => {
  await usage(['--memory', '64M', '-o', out], /--hypervisor is required/);
  await usage(['--hypervisor', 'kvm', '-o', out], /--hypervisor 'kvm' has no device tree \(expected gunyah/);
  await usage(['--hypervisor', 'gunyah'], /-o FILE is required/);
  await usage(['--hypervisor', 'gunyah', '--memory', '3M', '-o', out], /--memory '3M' must be a multiple of 2M and at least 4M/);
  await usage(['--hypervisor', 'gunyah', '--memory', 'lots', '-o', out], /--memory 'lots' is not a size/);
  await usage(['--hypervisor', 'gunyah', '--disk', join(dir, 'missing.img'), '-o', out], /--disk '.*missing\.img' does not exist/);
  await usage(['--hypervisor', 'gunyah', '--disk', dir, '-o', out], /is not a file or block device/);
  await usage(['--hypervisor', 'gunyah', '--disk', `${disk},fast`, '-o', out], /--disk option 'fast' is unknown/);
  await usage(['--hypervisor', 'gunyah', '--disk', `${disk},serial=${'x'.repeat(21)}`, '-o', out], /serial .* 1 to 20 printable ASCII/);
  await usage(['--hypervisor', 'gunyah', '--console', 'tcp:1', '-o', out], /--console 'tcp:1' is not stdio, unix:PATH or file:PATH/);
  await usage(['--hypervisor', 'gunyah', '--bogus', '-o', out], /unknown option '--bogus'/);
});

test('--help prints the usage', async () => {
  const { code, stdout } = await run(['--help']);
  assert.is(code, 0);
  assert.match(stdout, /usage: rxvirt dtb --hypervisor gunyah/);
});

test.after(() => rmSync(dir, { recursive: true, force: true }));
test.run();
