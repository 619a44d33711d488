// VMM memory: resident memory of a VMM process (and any children) excluding the guest's RAM,
// read from /proc/PID/smaps, for rxvirt's KVM VMM beside QEMU's for the same guest: 1 vCPU
// in a halt loop (the same four bytes for both), the same RAM size, COM1 and one virtio-blk
// disk on virtio-mmio with its ioeventfd and irqfd. rxvirt runs twice: from source through tsx
// (how a checkout runs it) and bundled into plain JavaScript (how a deployment would). The
// sides run alternated, several rounds.
// The vhost-user benchmark reuses memoryUse() for the two block back-ends.
// Run directly: `npx tsx bench/memory.ts [--quick]`.

import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { alternate, figure, formatTable, skipped, type Figure } from './harness.ts';
import { hasCommand, REPO_ROOT, tail } from './tools.ts';

const GROUP = 'memory';
const RAM_MIB = 256;
const SETTLE_MS = 1500;
/** cli; hlt; jmp hlt — the whole guest. */
const GUEST = [0xfa, 0xf4, 0xeb, 0xfd];
const GUEST_ORIGIN = 0x1000;
const VIRTIO_BASE = 0xd000_0000;
const VIRTIO_IRQ = 5;
/** QEMU's guest RAM as it appears in smaps (memory-backend-memfd); a vhost-user back-end maps the same fd. */
export const QEMU_GUEST_RAM = '/memfd:memory-backend-memfd (deleted)';

export interface Mapping {
  start: bigint;
  path: string;
}

export interface MemoryUse {
  /** Resident KiB, guest RAM excluded. */
  rssKiB: number;
  /**
   * Anonymous resident KiB (heaps, stacks, JIT code), guest RAM excluded: what one more such
   * process costs. Unlike Private_*, it does not depend on whether another process happens to
   * map the same binary.
   */
  anonKiB: number;
  /** Resident KiB of the mappings excluded as guest RAM. */
  guestKiB: number;
  processes: number;
}

/** The process and all its descendants (from /proc/N/stat parent ids). */
function processTree(pid: number): number[] {
  const parents = new Map<number, number[]>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const list = parents.get(ppid) ?? [];
      list.push(Number(name));
      parents.set(ppid, list);
    } catch {
      // gone meanwhile
    }
  }
  const out: number[] = [];
  const walk = (p: number) => {
    out.push(p);
    for (const c of parents.get(p) ?? []) walk(c);
  };
  walk(pid);
  return out;
}

/** Memory of `pid` and its descendants; mappings for which `isGuestRam` is true are left out. */
export function memoryUse(pid: number, isGuestRam: (m: Mapping) => boolean): MemoryUse {
  const use: MemoryUse = { rssKiB: 0, anonKiB: 0, guestKiB: 0, processes: 0 };
  for (const p of processTree(pid)) {
    let smaps: string;
    try {
      smaps = readFileSync(`/proc/${p}/smaps`, 'utf8');
    } catch {
      continue;
    }
    use.processes++;
    let guest = false;
    for (const line of smaps.split('\n')) {
      const header = /^([0-9a-f]+)-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
      if (header) {
        guest = isGuestRam({ start: BigInt(`0x${header[1]}`), path: header[2]! });
        continue;
      }
      const field = /^(Rss|Anonymous):\s+(\d+) kB/.exec(line);
      if (!field) continue;
      const kib = Number(field[2]);
      if (guest) {
        if (field[1] === 'Rss') use.guestKiB += kib;
      } else if (field[1] === 'Rss') {
        use.rssKiB += kib;
      } else {
        use.anonKiB += kib;
      }
    }
  }
  return use;
}

interface Sample {
  rss: number;
  anon: number;
}

const toMiB = (u: MemoryUse): Sample => ({ rss: u.rssKiB / 1024, anon: u.anonKiB / 1024 });

/** Starts `command`, waits for `ready` (or SETTLE_MS), measures, then stops it with SIGTERM (SIGKILL after 5 s). */
function measureProcess(command: string, args: string[], ready: (stdout: string) => boolean, isGuestRam: (out: string) => (m: Mapping) => boolean): Promise<Sample> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let measured: Sample | null = null;
    let timer: NodeJS.Timeout | null = null;
    const deadline = setTimeout(() => {
      child.kill('SIGKILL');
    }, 60_000);
    const measure = () => {
      if (timer) return;
      timer = setTimeout(() => {
        try {
          measured = toMiB(memoryUse(child.pid!, isGuestRam(stdout)));
        } catch (err) {
          reject(err);
        }
        child.kill('SIGTERM');
        setTimeout(() => child.kill('SIGKILL'), 5000).unref();
      }, SETTLE_MS);
    };
    child.stdout.on('data', (d: Buffer) => {
      stdout += d;
      if (ready(stdout)) measure();
    });
    child.stderr.on('data', (d: Buffer) => { stderr += d; });
    child.on('spawn', () => {
      if (ready('')) measure();
    });
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(deadline);
      if (measured) resolve(measured);
      else reject(new Error(`${command} ended (${code ?? signal}) before it could be measured: ${tail(stderr || stdout)}`));
    });
  });
}

/** The rxvirt VMM: this file in a child process (see vmmChild below), from source through tsx or bundled. */
function rxvirtVmm(image: string, bundle?: string): Promise<Sample> {
  const script = bundle ? [bundle] : ['--import', 'tsx', fileURLToPath(import.meta.url)];
  return measureProcess(process.execPath, [...script, '--vmm-child', image, String(RAM_MIB)],
    (out) => out.includes('\n'),
    (out) => {
      const { guestRam } = JSON.parse(out.split('\n')[0]!) as { guestRam: string[] };
      const starts = new Set(guestRam.map((a) => BigInt(a)));
      return (m) => starts.has(m.start);
    });
}

function qemuVmm(image: string, bios: string): Promise<Sample> {
  return measureProcess('qemu-system-x86_64', [
    '-M', 'microvm,x-option-roms=off,rtc=off,isa-serial=on,acpi=off,memory-backend=mem', '-accel', 'kvm',
    '-m', `${RAM_MIB}M`, '-object', `memory-backend-memfd,id=mem,size=${RAM_MIB}M`,
    '-bios', bios, '-nodefaults', '-nographic', '-serial', 'null', '-monitor', 'none',
    '-drive', `file=${image},if=none,id=d0,format=raw`, '-device', 'virtio-blk-device,drive=d0',
  ], () => true, () => (m) => m.path === QEMU_GUEST_RAM);
}

/**
 * This file bundled into one plain JavaScript module with the esbuild that tsx brings (koffi
 * stays external: it loads a native addon), i.e. rxvirt as a deployment would run it. Null
 * when esbuild is not there.
 */
function bundleSelf(): string | null {
  const esbuild = join(REPO_ROOT, 'node_modules', '.bin', 'esbuild');
  if (!existsSync(esbuild)) return null;
  const out = join(REPO_ROOT, 'bench', 'results', '.build', `memory-vmm-${process.pid}.mjs`);
  try {
    execFileSync(esbuild, [fileURLToPath(import.meta.url), '--bundle', '--platform=node', '--format=esm', '--external:koffi', `--outfile=${out}`,
      '--log-level=error', "--banner:js=import { createRequire as __createRequire } from 'node:module'; const require = __createRequire(import.meta.url);"],
    { stdio: ['ignore', 'ignore', 'pipe'] });
    return out;
  } catch {
    return null; // the bundled figures are extra: the run goes on without them
  }
}

/** The guest as a firmware image for QEMU: 64 KiB whose reset vector (offset 0xfff0) holds it. */
function firmware(dir: string): string {
  const bytes = new Uint8Array(0x10000).fill(0xf4);
  bytes.set(GUEST, 0xfff0);
  const path = join(dir, 'halt.bin');
  writeFileSync(path, bytes);
  return path;
}

export interface MemoryOptions {
  rounds?: number;
  log?: (line: string) => void;
}

export async function benchMemory(options: MemoryOptions = {}): Promise<Figure[]> {
  const rounds = options.rounds ?? 3;
  const names = ['VMM RSS excl. guest RAM', 'VMM anonymous memory excl. guest RAM'];
  const shape = { unit: 'MiB', better: 'lower' } as const;
  const missing = !existsSync('/dev/kvm') ? 'no /dev/kvm' : !hasCommand('qemu-system-x86_64') ? 'qemu-system-x86_64 not installed (Debian package qemu-system-x86)' : null;
  if (missing) return names.map((n) => skipped(GROUP, n, missing, shape));
  const dir = mkdtempSync(join(tmpdir(), 'rxvirt-bench-mem-'));
  let bundle: string | null = null;
  try {
    const image = join(dir, 'disk.img');
    writeFileSync(image, new Uint8Array(1 << 20));
    const bios = firmware(dir);
    bundle = bundleSelf();
    const sides = [() => rxvirtVmm(image), () => qemuVmm(image, bios), ...(bundle ? [() => rxvirtVmm(image, bundle!)] : [])];
    const labels = ['rxvirt (tsx)', 'QEMU', 'rxvirt (bundled)'];
    const [ours, qemu, bundled] = await alternate(rounds, sides, (s, r) => options.log?.(`memory: round ${r + 1}/${rounds} ${labels[s]}`));
    const note = `${RAM_MIB} MiB guest halted, COM1 + virtio-blk (virtio-mmio, ioeventfd/irqfd); QEMU -accel kvm microvm; measured ${SETTLE_MS} ms after start`;
    const peer = (pick: (s: Sample) => number) => ({ label: 'QEMU', samples: qemu!.map(pick) });
    const figures = [
      figure({ group: GROUP, name: names[0]!, ...shape, ours: ours!.map((s) => s.rss), peer: peer((s) => s.rss), note: `${note}; rxvirt from source (node --import tsx)` }),
      figure({ group: GROUP, name: names[1]!, ...shape, ours: ours!.map((s) => s.anon), peer: peer((s) => s.anon), note: `${note}; rxvirt from source (node --import tsx)` }),
    ];
    if (bundled) {
      const bundleNote = `${note}; rxvirt bundled into one .mjs by esbuild, plain node (no tsx)`;
      figures.push(
        figure({ group: GROUP, name: `${names[0]!}, bundled`, ...shape, ours: bundled.map((s) => s.rss), peer: peer((s) => s.rss), note: bundleNote }),
        figure({ group: GROUP, name: `${names[1]!}, bundled`, ...shape, ours: bundled.map((s) => s.anon), peer: peer((s) => s.anon), note: bundleNote }),
      );
    }
    return figures;
  } catch (err) {
    return names.map((n) => skipped(GROUP, n, (err as Error).message.split('\n')[0]!, shape));
  } finally {
    rmSync(dir, { recursive: true, force: true });
    if (bundle) rmSync(bundle, { force: true });
  }
}

/** The rxvirt side: a KVM VM as the VM runtime builds one, running until SIGTERM. Prints its guest RAM addresses. */
async function vmmChild(image: string, ramMiB: number): Promise<void> {
  const { KvmHypervisor } = await import('../framework/vm/kvm/kvm-hypervisor.ts');
  const { realModeEntry } = await import('../framework/vm/x86/entry-state.ts');
  const { BlockDevice } = await import('../devices/block.ts');
  const { EventFd } = await import('../framework/eventfd.ts');
  const { EventFdDoorbell } = await import('../framework/doorbell.ts');
  const { VirtioMmioTransport } = await import('../transports/virtio-mmio/mmio-transport.ts');
  const hv = KvmHypervisor.open();
  const vm = hv.createVm({ memory: [{ base: 0, size: ramMiB << 20 }] });
  vm.memory.write(GUEST_ORIGIN, Uint8Array.from(GUEST));
  const vcpu = vm.vcpus[0]!;
  const { regs, sregs } = realModeEntry(vcpu.getSregs(), { cs: 0, ip: GUEST_ORIGIN });
  vcpu.setSregs(sregs);
  vcpu.setRegs(regs);
  const device = BlockDevice.open(image);
  const binding = vm.addIrqFd(VIRTIO_IRQ, EventFd.create(), { level: false });
  const doorbell = new EventFdDoorbell(binding.irqfd, binding.mode, binding.resample);
  const transport = new VirtioMmioTransport(device, { base: VIRTIO_BASE, irq: VIRTIO_IRQ, memory: () => vm.memory, doorbell });
  vm.mmio.register(transport.base, transport.size, transport, 'virtio-blk');
  const kicks = transport.notifyRegistrations().map((r) => {
    const fd = EventFd.create();
    vm.addIoEventFd({ address: r.address, length: r.length, datamatch: r.datamatch }, fd);
    return { fd, sub: fd.events().subscribe(() => transport.notify(r.queueIndex)) };
  });
  await vm.start();
  const guestRam = vm.memory.regions.map((r) => `0x${r.hostAddress!.toString(16)}`);
  process.stdout.write(`${JSON.stringify({ guestRam })}\n`);
  await new Promise((resolve) => process.once('SIGTERM', resolve));
  await vm.close();
  for (const k of kicks) {
    k.sub.unsubscribe();
    k.fd.close();
  }
  doorbell.close();
  binding.irqfd.close();
  device.close();
  hv.close();
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  if (process.argv[2] === '--vmm-child') {
    await vmmChild(process.argv[3]!, Number(process.argv[4]));
  } else {
    const quick = process.argv.includes('--quick');
    console.log(formatTable(await benchMemory({ rounds: quick ? 1 : 3, log: console.error })));
  }
}
