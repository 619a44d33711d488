// Block over vhost-user: rxvirt's back-end (`rxvirt vhost-user blk`) against
// qemu-storage-daemon, each serving the same raw image to the same QEMU TCG guest (the
// cli/guest-image kernel and initramfs plus bench/c/blk-guest-bench.c appended as a second
// cpio archive). The guest measures sequential 1 MiB O_DIRECT read and write (MiB/s) and
// 4 KiB random O_DIRECT reads at queue depth 1 and 32 (IOPS). The two back-ends run
// alternated, one guest boot per run, several rounds; each back-end's memory (guest RAM
// excluded) is sampled while the guest runs the QD32 test.
// Run directly: `npx tsx bench/vhost-user-blk.ts [--quick]`.

import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { writeCpio } from '../cli/guest-image/cpio.ts';
import { GuestBuildError } from '../cli/guest-image/errors.ts';
import { ensureGuestImage, findGuestImage, type GuestImage } from '../cli/guest-image/guest-image.ts';
import { alternate, figure, formatTable, skipped, type Figure, type Target } from './harness.ts';
import { memoryUse, QEMU_GUEST_RAM, type MemoryUse } from './memory.ts';
import { compileC, hasCommand, REPO_ROOT, run, tail } from './tools.ts';

const GROUP = 'vhost-user-blk';
const GUEST_RAM = '512M';
const GUEST_TOOL = 'blk-guest-bench'; // at the root: the strict cpio writer wants a directory entry before its files
const TARGET: Target = { on: 'ratio', op: '>=', bound: 1 };

interface Test {
  key: string;
  name: string;
  unit: string;
}

const TESTS: Test[] = [
  { key: 'seqread', name: 'sequential read, 1 MiB O_DIRECT', unit: 'MiB/s' },
  { key: 'seqwrite', name: 'sequential write, 1 MiB O_DIRECT', unit: 'MiB/s' },
  { key: 'randread-qd1', name: '4 KiB random read, QD1', unit: 'IOPS' },
  { key: 'randread-qd32', name: '4 KiB random read, QD32', unit: 'IOPS' },
];

export interface VhostUserBlkOptions {
  rounds?: number;
  /** Seconds each guest test runs. */
  seconds?: number;
  /** Image size in MiB. */
  imageMiB?: number;
  /** Build the guest image when it is not cached (takes minutes). */
  buildGuest?: boolean;
  log?: (line: string) => void;
}

interface RunSample {
  values: Record<string, number>;
  memory: MemoryUse | null;
}

/** How to start rxvirt's back-end: the CLI, compiled (`npm run build`, as deployed) when dist/ exists. */
interface Launcher {
  args: (socket: string, image: string) => string[];
  note?: string;
}

async function rxvirtLauncher(): Promise<Launcher | string> {
  const compiled = join(REPO_ROOT, 'dist', 'cli', 'main.js');
  const cli = existsSync(compiled) ? [compiled] : ['--import', 'tsx', 'cli/main.ts'];
  const help = await run(process.execPath, [...cli, 'vhost-user', '--help'], { cwd: REPO_ROOT, timeoutMs: 30_000 });
  if (help.code !== 0 || !help.stdout.includes('rxvirt vhost-user')) return 'rxvirt vhost-user --help failed';
  return {
    args: (socket, image) => [...cli, 'vhost-user', 'blk', '--socket', socket, '--image', image],
    note: existsSync(compiled) ? 'rxvirt back-end: compiled CLI (dist/)' : 'rxvirt back-end: CLI from source (tsx)',
  };
}

/** A back-end process, started, with its socket in place. */
interface Backend {
  proc: ChildProcess;
  output: () => string;
}

function startBackend(command: string, args: string[], socket: string): Promise<Backend> {
  return new Promise((resolve, reject) => {
    const proc = spawn(command, args, { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => { out += d; });
    proc.stderr!.on('data', (d: Buffer) => { out += d; });
    const started = Date.now();
    const poll = setInterval(() => {
      if (existsSync(socket)) {
        clearInterval(poll);
        resolve({ proc, output: () => out });
      } else if (proc.exitCode !== null || proc.signalCode !== null || Date.now() - started > 30_000) {
        clearInterval(poll);
        proc.kill('SIGKILL');
        reject(new Error(`${command} did not create its socket: ${tail(out)}`));
      }
    }, 10);
  });
}

async function stopBackend(b: Backend): Promise<void> {
  if (b.proc.exitCode !== null || b.proc.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => b.proc.once('close', () => resolve()));
  b.proc.kill('SIGTERM');
  const timer = setTimeout(() => b.proc.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/** Boots the guest against the back-end on `socket`; calls `duringQd32` once the guest starts its QD32 test. */
function bootGuest(image: GuestImage, initrd: string, socket: string, seconds: number, duringQd32: () => void): Promise<Record<string, number>> {
  const cmd = `${'/' + GUEST_TOOL} /dev/vda ${seconds}`;
  const append = `console=ttyS0 quiet panic=-1 reboot=t rxvirt.cmd=${Buffer.from(cmd).toString('base64')}`;
  const args = [
    '-M', 'microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off,memory-backend=mem', '-accel', 'tcg',
    '-m', GUEST_RAM, '-object', `memory-backend-memfd,id=mem,size=${GUEST_RAM},share=on`,
    '-global', 'virtio-mmio.force-legacy=false',
    '-chardev', `socket,id=c0,path=${socket}`, '-device', 'vhost-user-blk,chardev=c0',
    '-kernel', image.bzImage, '-initrd', initrd, '-append', append,
    '-nographic', '-no-reboot', '-nodefaults', '-serial', 'stdio', '-monitor', 'none',
  ];
  return new Promise((resolve, reject) => {
    const qemu = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let sampled = false;
    const onData = (d: Buffer) => {
      out += d;
      if (!sampled && out.includes('blkbench randread-qd1 ')) {
        sampled = true;
        setTimeout(duringQd32, 500 + (seconds * 1000) / 2);
      }
    };
    qemu.stdout.on('data', onData);
    qemu.stderr.on('data', onData);
    const timer = setTimeout(() => qemu.kill('SIGKILL'), 120_000 + seconds * 8_000);
    qemu.on('error', reject);
    qemu.on('close', (code) => {
      clearTimeout(timer);
      const text = out.replace(/\r/g, '');
      const values: Record<string, number> = {};
      for (const m of text.matchAll(/^blkbench (\S+) ([\d.]+) /gm)) values[m[1]!] = Number(m[2]);
      const missing = TESTS.filter((t) => !(t.key in values));
      if (missing.length > 0 || !text.includes('rxvirt.exit=0')) {
        reject(new Error(`guest run failed (qemu exit ${code}; no ${missing.map((t) => t.key).join(', ') || 'exit status'}): ${tail(text, 4)}`));
        return;
      }
      resolve(values);
    });
  });
}

/** The guest image's initramfs with the benchmark tool appended as a second cpio archive. */
function benchInitrd(image: GuestImage, dir: string, tool: string): string {
  const path = join(dir, 'initrd.cpio');
  const fd = openSync(path, 'w');
  try {
    writeSync(fd, readFileSync(image.initramfs));
    writeSync(fd, writeCpio([{ type: 'file', path: GUEST_TOOL, data: readFileSync(tool), mode: 0o755 }]));
  } finally {
    closeSync(fd);
  }
  return path;
}

/** A raw image filled with non-zero data (no sparse holes), written once through the page cache. */
function makeImage(dir: string, mib: number): string {
  const path = join(dir, 'disk.img');
  const fd = openSync(path, 'w');
  const chunk = new Uint8Array(1 << 20);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 31 + 7) & 0xff;
  try {
    for (let i = 0; i < mib; i++) writeSync(fd, chunk);
  } finally {
    closeSync(fd);
  }
  return path;
}

async function guestImage(build: boolean, log?: (line: string) => void): Promise<GuestImage | string> {
  try {
    if (build) return await ensureGuestImage({ onProgress: (l) => log?.(`guest image: ${l}`) });
    return (await findGuestImage()) ?? 'guest image not built (run `npm run rxvirt -- guest build`, or a full `npm run bench`)';
  } catch (err) {
    if (err instanceof GuestBuildError) return `guest image: ${err.message.split('\n')[0]}`;
    throw err;
  }
}

export async function benchVhostUserBlk(options: VhostUserBlkOptions = {}): Promise<Figure[]> {
  const rounds = options.rounds ?? 3;
  const seconds = options.seconds ?? 3;
  const imageMiB = options.imageMiB ?? 256;
  const log = options.log;
  const all = (why: string) => [
    ...TESTS.map((t) => skipped(GROUP, t.name, why, { unit: t.unit, better: 'higher', target: TARGET })),
    skipped(GROUP, 'back-end RSS excl. guest RAM', why, { unit: 'MiB', better: 'lower' }),
    skipped(GROUP, 'back-end anonymous memory excl. guest RAM', why, { unit: 'MiB', better: 'lower' }),
  ];
  if (!hasCommand('qemu-system-x86_64')) return all('qemu-system-x86_64 not installed (Debian package qemu-system-x86)');
  if (!hasCommand('qemu-storage-daemon')) return all('qemu-storage-daemon not installed (Debian package qemu-system-common)');
  if (!hasCommand('gcc')) return all('gcc not installed (Debian packages gcc libc6-dev)');
  let tool: string;
  try {
    tool = compileC('blk-guest-bench', ['-static']);
  } catch (err) {
    return all(`${(err as Error).message} (a static guest tool needs libc6-dev's libc.a)`);
  }
  const image = await guestImage(options.buildGuest ?? false, log);
  if (typeof image === 'string') return all(image);
  const launcher = await rxvirtLauncher();
  if (typeof launcher === 'string') return all(launcher);

  const dir = mkdtempSync(join(tmpdir(), 'rxvirt-bench-vub-'));
  try {
    const initrd = benchInitrd(image, dir, tool);
    const disk = makeImage(dir, imageMiB);
    const socket = join(dir, 'blk.sock');
    const backends: { label: string; command: string; args: string[] }[] = [
      { label: 'rxvirt', command: process.execPath, args: launcher.args(socket, disk) },
      {
        label: 'qemu-storage-daemon',
        command: 'qemu-storage-daemon',
        args: [
          '--blockdev', `driver=file,node-name=disk0,filename=${disk},cache.direct=off`,
          '--export', `type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=${socket},writable=on`,
        ],
      },
    ];
    const once = (b: (typeof backends)[number]) => async (): Promise<RunSample> => {
      rmSync(socket, { force: true });
      const backend = await startBackend(b.command, b.args, socket);
      let memory: MemoryUse | null = null;
      try {
        const values = await bootGuest(image, initrd, socket, seconds, () => {
          try {
            memory = memoryUse(backend.proc.pid!, (m) => m.path === QEMU_GUEST_RAM);
          } catch {
            memory = null;
          }
        });
        return { values, memory };
      } catch (err) {
        throw new Error(`${b.label}: ${(err as Error).message}${backend.output() ? ` [back-end: ${tail(backend.output(), 3)}]` : ''}`);
      } finally {
        await stopBackend(backend);
      }
    };
    // A boot that fails (a timeout on a machine under load) costs its round, not the benchmark.
    const tolerant = (f: () => Promise<RunSample>, label: string) => () => f().catch((err: Error) => {
      log?.(`vhost-user-blk: ${label} run failed: ${err.message.split('\n')[0]}`);
      return err;
    });
    const [oursRuns, peerRuns] = await alternate(rounds, backends.map((b) => tolerant(once(b), b.label)), (s, r) => log?.(`vhost-user-blk: round ${r + 1}/${rounds} ${backends[s]!.label}`));
    const ok = (xs: (RunSample | Error)[]) => xs.filter((x): x is RunSample => !(x instanceof Error));
    const ours = ok(oursRuns!);
    const peer = ok(peerRuns!);
    if (ours.length === 0 || peer.length === 0) throw (ours.length === 0 ? oursRuns! : peerRuns!).find((x) => x instanceof Error)!;
    const failed = rounds * 2 - ours.length - peer.length;
    const note = `QEMU ${GUEST_RAM} TCG guest, 1 vCPU, ${imageMiB} MiB raw image in the host page cache, ${seconds} s per test, ${rounds} boot${rounds === 1 ? '' : 's'} per back-end alternated${
      failed > 0 ? ` (${failed} failed, left out)` : ''}${launcher.note ? `; ${launcher.note}` : ''}`;
    const figures = TESTS.map((t) => figure({
      group: GROUP, name: t.name, unit: t.unit, better: 'higher', target: TARGET, note,
      ours: ours.map((s) => s.values[t.key]!), peer: { label: 'qemu-storage-daemon', samples: peer.map((s) => s.values[t.key]!) },
    }));
    const mib = (xs: RunSample[], pick: (m: MemoryUse) => number) => xs.flatMap((s) => (s.memory ? [pick(s.memory) / 1024] : []));
    for (const [name, pick] of [['back-end RSS excl. guest RAM', (m: MemoryUse) => m.rssKiB], ['back-end anonymous memory excl. guest RAM', (m: MemoryUse) => m.anonKiB]] as const) {
      if (mib(ours, pick).length === 0 || mib(peer, pick).length === 0) continue;
      figures.push(figure({
        group: GROUP, name, unit: 'MiB', better: 'lower', ours: mib(ours, pick), peer: { label: 'qemu-storage-daemon', samples: mib(peer, pick) },
        note: `sampled during the QD32 test; rxvirt ${existsSync(join(REPO_ROOT, 'dist', 'cli', 'main.js')) ? 'compiled (dist/)' : 'from source (node --import tsx)'}`,
      }));
    }
    return figures;
  } catch (err) {
    return all((err as Error).message.split('\n')[0]!);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const quick = process.argv.includes('--quick');
  const figures = await benchVhostUserBlk({ rounds: quick ? 1 : 3, seconds: quick ? 1 : 3, imageMiB: quick ? 128 : 256, log: console.error });
  console.log(formatTable(figures));
}
