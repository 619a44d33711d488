// `rxvirt vhost-user`: bad arguments are one-line UsageErrors that leave nothing behind;
// a running back-end serves a front-end and ends cleanly on SIGTERM/SIGINT (exit 0,
// acknowledged writes in the image, console output flushed, socket removed).

import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { UsageError } from '../../cli/args.ts';
import { vhostUserCommand } from '../../cli/vhost-user-command.ts';
import { DriverQueue } from '../support/driver-queue.ts';
import { FrontendMemory, VhostUserFrontend, kickAndCollect } from '../support/vhost-user-frontend.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'rxvirt-vu-cli-'));
const sock = join(dir, 'cli.sock');
const plainFile = join(dir, 'plain.txt');
writeFileSync(plainFile, 'not a socket');
const oddImage = join(dir, 'odd.img');
writeFileSync(oddImage, new Uint8Array(1000));

const badArguments: [string[], RegExp][] = [
  [[], /vhost-user: expected a device \(one of: blk, rng, console\)/],
  [['disk'], /unknown device 'disk'/],
  [['rng'], /--socket is required/],
  [['rng', '--socket', join(dir, 'missing-dir', 'x.sock')], /--socket .*directory .* does not exist/],
  [['rng', '--socket', plainFile], /--socket .* exists and is not a socket/],
  [['rng', '--socket', sock, '--image', 'x'], /unknown option '--image'/],
  [['blk', '--socket', sock], /--image is required/],
  [['blk', '--socket', sock, '--image', join(dir, 'nope.img')], /--image .* does not exist/],
  [['blk', '--socket', sock, '--image', dir], /--image .* is not a regular file/],
  [['blk', '--socket', sock, '--image', oddImage], /--image .*not a multiple of 512/],
  [['blk', '--socket', sock, '--image', oddImage, '--serial', 'x'.repeat(21)], /--serial .* at most 20/],
  [['blk', '--socket', sock, '--image', oddImage, '--readonly=yes'], /--readonly takes no value/],
  [['console', '--socket', sock, '--to', 'tcp:1234'], /--to 'tcp:1234' is not one of stdio, unix:PATH, file:PATH/],
  [['console', '--socket', sock, '--to', `unix:${join(dir, 'nobody.sock')}`], /--to .* cannot connect/],
  [['console', '--socket', sock, '--to', `file:${join(dir, 'no', 'out.txt')}`], /--to .* directory .* does not exist/],
];

for (const [argv, expected] of badArguments) {
  test(`bad arguments: ${argv.join(' ') || '(none)'}`, async () => {
    const before = readdirSync(dir).sort();
    try {
      await vhostUserCommand(argv);
      assert.unreachable('should have thrown');
    } catch (err) {
      assert.instance(err, UsageError);
      assert.match((err as Error).message, expected);
      assert.not.match((err as Error).message, /\n/, 'one line');
    }
    assert.equal(readdirSync(dir).sort(), before, 'nothing created');
  });
}

interface Child {
  proc: ChildProcess;
  stderr: () => string;
  exit: Promise<number | null>;
}

const RUNNER = `
import { UsageError } from './cli/args.ts';
import { vhostUserCommand } from './cli/vhost-user-command.ts';
try {
  process.exitCode = await vhostUserCommand(process.argv.slice(1));
} catch (err) {
  if (!(err instanceof UsageError)) throw err;
  console.error('rxvirt: ' + err.message);
  process.exitCode = 2;
}`;

const children: ChildProcess[] = [];

async function start(argv: string[]): Promise<Child> {
  const proc = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', RUNNER, ...argv], {
    cwd: root, stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(proc);
  let err = '';
  proc.stderr!.on('data', (d) => { err += d; });
  const exit = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  const deadline = Date.now() + 15000;
  while (!err.includes('serving on')) {
    if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`back-end did not start: ${err}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return { proc, stderr: () => err, exit };
}

function blkHeader(type: number, sector: number): Uint8Array {
  const h = new Uint8Array(16);
  const v = new DataView(h.buffer);
  v.setUint32(0, type, true);
  v.setBigUint64(8, BigInt(sector), true);
  return h;
}

test('rng: serves a front-end, then SIGTERM exits 0 and removes the socket', async () => {
  const child = await start(['rng', '--socket', sock]);
  const mem = FrontendMemory.create(1 << 20);
  const f = VhostUserFrontend.connect(sock);
  await f.negotiate();
  await f.setMemTable([mem]);
  const q = new DriverQueue(mem.guest, { size: 8 });
  const ring = await f.setupRing(0, q, mem);
  q.addChain([{ writableLen: 32 }]);
  assert.equal((await kickAndCollect(q, ring, 1)).map((u) => u.len), [32]);
  child.proc.kill('SIGTERM');
  await f.closed(5000);
  assert.is(await child.exit, 0, child.stderr());
  assert.not.ok(existsSync(sock), 'socket removed');
  assert.match(child.stderr(), /front-end connected/);
  f.close();
  mem.close();
});

test('blk: SIGINT with writes in flight exits 0; every acknowledged write is in the image', async () => {
  const image = join(dir, 'disk.img');
  writeFileSync(image, new Uint8Array(4 << 20));
  const child = await start(['blk', '--socket', sock, '--image', image, '--serial', 'cli-test']);
  const mem = FrontendMemory.create(8 << 20);
  const f = VhostUserFrontend.connect(sock);
  await f.negotiate();
  await f.setMemTable([mem]);
  const q = new DriverQueue(mem.guest, { size: 128 });
  const ring = await f.setupRing(0, q, mem);
  const requests = new Map<number, { sector: number; data: Uint8Array }>();
  for (let i = 0; i < 32; i++) {
    const data = new Uint8Array(64 * 1024).fill(i + 1);
    const sector = i * 128;
    requests.set(q.addChain([{ data: blkHeader(1, sector) }, { data }, { writableLen: 1 }]), { sector, data });
  }
  const first = await kickAndCollect(q, ring, 1);
  child.proc.kill('SIGINT');
  assert.is(await child.exit, 0, child.stderr());
  const used = [...first, ...q.takeUsed()];
  assert.ok(used.length >= 1);
  const disk = readFileSync(image);
  for (const u of used) {
    const r = requests.get(u.id)!;
    assert.is(u.written[0], 0, 'VIRTIO_BLK_S_OK');
    assert.equal(disk.subarray(r.sector * 512, r.sector * 512 + r.data.length), Buffer.from(r.data), `write ${u.id} on disk`);
  }
  assert.not.ok(existsSync(sock));
  f.close();
  mem.close();
});

test('console --to file: guest output lands in the file by the time SIGTERM has exited', async () => {
  const out = join(dir, 'console.txt');
  const child = await start(['console', '--socket', sock, '--to', `file:${out}`]);
  const mem = FrontendMemory.create(1 << 20);
  const f = VhostUserFrontend.connect(sock);
  await f.negotiate();
  await f.setMemTable([mem]);
  const tx = new DriverQueue(mem.guest, { size: 8, base: 512 << 10 });
  const ring = await f.setupRing(1, tx, mem);
  const text = new TextEncoder().encode('hello from the guest\n');
  tx.addChain([{ data: text }]);
  assert.equal((await kickAndCollect(tx, ring, 1)).map((u) => u.len), [0]);
  child.proc.kill('SIGTERM');
  assert.is(await child.exit, 0, child.stderr());
  assert.is(readFileSync(out, 'utf8'), 'hello from the guest\n');
  f.close();
  mem.close();
});

test('a live socket is not stolen: a second back-end on the same path exits 1', async () => {
  const child = await start(['rng', '--socket', sock]);
  const second = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', RUNNER, 'rng', '--socket', sock], {
    cwd: root, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let err = '';
  second.stderr!.on('data', (d) => { err += d; });
  const code = await new Promise<number | null>((resolve) => second.on('exit', resolve));
  assert.is(code, 1);
  assert.match(err, /cannot listen on .*EADDRINUSE/);
  child.proc.kill('SIGTERM');
  assert.is(await child.exit, 0);
  assert.not.ok(existsSync(sock));
});

test.after.each(() => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

test.after(() => rmSync(dir, { recursive: true, force: true }));

test.run();
