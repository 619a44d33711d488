// `rxvirt run` and `rxvirt start`'s pieces: every bad argument is one UsageError line and
// creates nothing; a guest that writes to its serial console and reboots exits 0 with that
// output where --serial says; a guest that crashes exits 1 with one line naming the fault;
// the Ctrl-A x escape; the scratch disk made once and formatted.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { UsageError } from '../../cli/args.ts';
import { describeOutcome, escapeFilter, runCommand } from '../../cli/run-command.ts';
import { ensureScratchDisk, SCRATCH_DISK_BYTES } from '../../cli/start-command.ts';
import { assembleKernel, serialWrite } from '../support/stand-in-kernel.ts';
import { kvmSkipReason } from './tiny-vm.ts';

const skip = kvmSkipReason();
if (skip) console.log(`SKIP (guest runs): ${skip}`);
const kvmTest = skip ? test.skip : test;

function tempDir(): { dir: string; done(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'rxvirt-run-'));
  return { dir, done: () => rmSync(dir, { recursive: true, force: true }) };
}

async function usageError(argv: string[], message: RegExp): Promise<void> {
  const lines: string[] = [];
  const outcome = await runCommand(argv, { log: (l) => lines.push(l) }).then((status) => ({ status }), (e: unknown) => ({ error: e }));
  assert.ok('error' in outcome, `expected a usage error for ${argv.join(' ')}, got status ${'status' in outcome ? outcome.status : ''}`);
  const e = (outcome as { error: unknown }).error;
  assert.instance(e, UsageError, String(e));
  assert.match((e as Error).message, message);
  assert.not.match((e as Error).message, /\n/, 'one line');
}

test('bad arguments are one line each, and nothing is created before they are all checked', async () => {
  const { dir, done } = tempDir();
  try {
    const kernel = join(dir, 'vmlinux');
    writeFileSync(kernel, 'not a kernel at all');
    const serialLog = join(dir, 'serial.log');
    const image = join(dir, 'disk.img');
    writeFileSync(image, Buffer.alloc(4096));
    writeFileSync(join(dir, 'odd.img'), Buffer.alloc(1000));
    await usageError([], /--kernel is required/);
    await usageError(['--kernel', join(dir, 'missing')], /--kernel '.*missing' does not exist/);
    await usageError(['--kernel', dir], /is not a regular file/);
    await usageError(['--kernel', kernel, '--bogus'], /unknown option '--bogus'/);
    await usageError(['--kernel', kernel, '--memory', 'lots'], /--memory 'lots' is not a size/);
    await usageError(['--kernel', kernel, '--memory', '8M'], /at least 16M/);
    await usageError(['--kernel', kernel, '--cpus', '0'], /--cpus '0' is not a whole number from 1 to 64/);
    await usageError(['--kernel', kernel, '--hypervisor', 'xen'], /--hypervisor 'xen' is not one of auto, kvm, gunyah/);
    await usageError(['--kernel', kernel, '--serial', `file:${serialLog}`, '--disk', join(dir, 'none.img')], /--disk '.*none\.img' does not exist/);
    await usageError(['--kernel', kernel, '--disk', `${image},fast`], /unknown option 'fast'/);
    await usageError(['--kernel', kernel, '--disk', `${image},serial=${'x'.repeat(21)}`], /at most 20 characters/);
    await usageError(['--kernel', kernel, '--disk', join(dir, 'odd.img')], /1000 bytes, not a multiple of 512/);
    await usageError(['--kernel', kernel, '--console', 'tcp:1234'], /--console 'tcp:1234' is not one of stdio, unix:PATH, file:PATH/);
    await usageError(['--kernel', kernel, '--console', `unix:${join(dir, 'nosock')}`], /no unix socket/);
    await usageError(['--kernel', kernel, '--serial', 'unix:/x'], /--serial 'unix:\/x' is not one of stdio, file:PATH/);
    await usageError(['--kernel', kernel, '--serial', 'file:/nonexistent-dir/serial.log'], /directory '\/nonexistent-dir' does not exist/);
    await usageError(['--kernel', kernel, '--cmdline', 'a\nb'], /one line/);
    if (!skip) {
      await usageError(['--kernel', kernel, '--serial', `file:${serialLog}`], /--kernel .*neither an ELF kernel \(vmlinux\) nor a bzImage/);
    }
    assert.not.ok(existsSync(serialLog), 'no serial log was created');
  } finally {
    done();
  }
});

kvmTest('a guest that prints on the serial console and reboots: exit 0, its output in the --serial file', async () => {
  const { dir, done } = tempDir();
  try {
    const kernel = join(dir, 'vmlinux');
    writeFileSync(kernel, assembleKernel(`${serialWrite('hello from the stand-in kernel\n')}\nud2`));
    const serialLog = join(dir, 'serial.log');
    const lines: string[] = [];
    const status = await runCommand(['--kernel', kernel, '--memory', '32M', '--serial', `file:${serialLog}`, '--rng', '--cmdline', 'x=1'], { log: (l) => lines.push(l) });
    assert.is(status, 0, lines.join('\n'));
    assert.equal(lines, [], 'nothing to report on a clean end');
    assert.is(readFileSync(serialLog, 'utf8'), 'hello from the stand-in kernel\n');
  } finally {
    done();
  }
});

kvmTest('a guest that crashes: exit 1 and one line naming the fault', async () => {
  const { dir, done } = tempDir();
  try {
    const kernel = join(dir, 'vmlinux');
    // Executing from an address with no RAM behind it: KVM cannot fetch the instruction.
    writeFileSync(kernel, assembleKernel('movabs $0xd8000000, %rax\njmp *%rax'));
    const lines: string[] = [];
    const status = await runCommand(['--kernel', kernel, '--memory', '32M', '--serial', `file:${join(dir, 'serial.log')}`], { log: (l) => lines.push(l) });
    assert.is(status, 1);
    assert.is(lines.length, 1, lines.join('\n'));
    assert.match(lines[0]!, /^rxvirt run: guest crashed: .* at rip 0xd8000000/);
  } finally {
    done();
  }
});

test('outcome lines and statuses', () => {
  assert.equal(describeOutcome({ kind: 'reset', reason: 'triple fault' }), { status: 0, line: 'guest rebooted (triple fault)' });
  assert.equal(describeOutcome({ kind: 'poweroff', reason: 'system event: shutdown' }), { status: 0, line: 'guest powered off (system event: shutdown)' });
  assert.equal(describeOutcome({ kind: 'error', error: new Error('KVM_RUN: EFAULT') }), { status: 1, line: 'VMM failed: KVM_RUN: EFAULT' });
  const crash = describeOutcome({
    kind: 'crash', reason: 'internal error: emulation failure',
    fault: { vcpu: 0, exit: 'KVM_EXIT_INTERNAL_ERROR', registers: { rip: 0xffffffff81000010n }, instructionAddress: 0x1000010, instruction: Uint8Array.of(0x0f, 0xae, 0x2f), data: [] },
  });
  assert.equal(crash, { status: 1, line: 'guest crashed: internal error: emulation failure at rip 0xffffffff81000010 [0f ae 2f] (KVM_EXIT_INTERNAL_ERROR)' });
});

test('Ctrl-A x stops; Ctrl-A Ctrl-A sends one Ctrl-A; other bytes pass, across chunk boundaries', () => {
  let stops = 0;
  const filter = escapeFilter(() => stops++);
  assert.equal([...filter(Buffer.from('ls\r'))], [...Buffer.from('ls\r')]);
  assert.equal([...filter(Uint8Array.of(1))], []);
  assert.equal([...filter(Uint8Array.of(1))], [1], 'Ctrl-A Ctrl-A');
  assert.equal([...filter(Uint8Array.of(1, 0x61))], [1, 0x61], 'Ctrl-A then another key: both go through');
  assert.is(stops, 0);
  assert.equal([...filter(Uint8Array.of(0x65, 1))], [0x65]);
  assert.equal([...filter(Buffer.from('x'))], []);
  assert.is(stops, 1);
});

test('the scratch disk is made once, 64 MiB and sparse, ext4 when mkfs.ext4 exists, and kept', () => {
  const { dir, done } = tempDir();
  try {
    const path = join(dir, 'scratch.img');
    const logs: string[] = [];
    const first = ensureScratchDisk(path, (l) => logs.push(l));
    assert.is(statSync(path).size, SCRATCH_DISK_BYTES);
    const hasMkfs = spawnSync('mkfs.ext4', ['-V']).status === 0;
    assert.is(first.formatted, hasMkfs, logs.join('\n'));
    if (hasMkfs) {
      assert.match(spawnSync('blkid', ['-p', '-o', 'value', '-s', 'TYPE', path], { encoding: 'utf8' }).stdout, /ext4/);
    } else {
      assert.match(logs[0] ?? '', /mkfs\.ext4 is not available/);
    }
    writeFileSync(path, Buffer.from('kept'), { flag: 'r+' });
    ensureScratchDisk(path, () => {});
    assert.is(readFileSync(path).subarray(0, 4).toString(), 'kept', 'an existing disk is reused as is');
    assert.equal(readdirSync(dir).sort(), ['scratch.img'], 'no temporary file left');
  } finally {
    done();
  }
});

test.run();
