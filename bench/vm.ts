// VM runtime benchmarks on KVM: (1) process start -> first vCPU entry, measured from the
// parent's spawn to the child's first KVM_RUN; (2) the MMIO exit round trip of a guest that
// loops on an MMIO read, served by the MmioBus on the main thread (with the default adaptive
// exit polling, and with it off), beside the same loop in a small C VMM compiled here
// (exit-to-exit interval, p50/p99, and their ratio); (3) the exit round trip of port I/O
// nobody claims (served inside the vCPU thread), beside C again. Timings on a shared machine
// move with its load: compare numbers taken in the same run.
// Run directly: `npx tsx bench/vm.ts`. Needs /dev/kvm, gcc and binutils.

import { execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { KvmHypervisor } from '../framework/vm/kvm/kvm-hypervisor.ts';
import type { ExitPolling } from '../framework/vm/kvm/kvm-vcpu.ts';
import type { KvmVm } from '../framework/vm/kvm/kvm-vm.ts';
import { realModeEntry } from '../framework/vm/x86/entry-state.ts';
import { buildGuest, type GuestImage } from '../test/guests/build.ts';

export interface BenchResult {
  name: string;
  value: number;
  unit: string;
}

const ORIGIN = 0x1000;
const MMIO_SEG = 0xd000;
const RAM = 0x8_0000;
const WARMUP_EXITS = 2_000;
const MEASURED_EXITS = 20_000;
const PORT_LOOP_MS = 1_000;
const FIRST_ENTRY_RUNS = 5;

function tinyVm(hv: KvmHypervisor, image: GuestImage, exitPolling?: ExitPolling): KvmVm {
  const vm = hv.createVm({ memory: [{ base: 0, size: RAM }], exitPolling });
  vm.memory.write(image.origin, image.bytes);
  const vcpu = vm.vcpus[0]!;
  const { regs, sregs } = realModeEntry(vcpu.getSregs(), { cs: 0, ip: image.origin, sp: 0x8000 });
  vcpu.setSregs(sregs);
  vcpu.setRegs(regs);
  return vm;
}

function percentile(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!;
}

/** Exit-to-exit intervals (us) of the MMIO loop guest, taken in the MmioBus handler. */
async function jsMmioRoundTrip(hv: KvmHypervisor, image: GuestImage, exitPolling?: ExitPolling): Promise<{ p50: number; p99: number }> {
  const vm = tinyVm(hv, image, exitPolling);
  const stamps = new Float64Array(WARMUP_EXITS + MEASURED_EXITS + 1);
  let n = 0;
  let finished!: () => void;
  const done = new Promise<void>((resolve) => { finished = resolve; });
  vm.mmio.register(MMIO_SEG * 16, 0x1000, {
    read: (_offset, data) => {
      data.fill(0);
      if (n < stamps.length) stamps[n++] = performance.now();
      if (n === stamps.length) {
        n++;
        finished();
      }
    },
    write: () => {},
  }, 'bench');
  try {
    await vm.start();
    await done;
  } finally {
    await vm.close();
  }
  const intervals = new Float64Array(MEASURED_EXITS);
  for (let i = 0; i < MEASURED_EXITS; i++) intervals[i] = (stamps[WARMUP_EXITS + i + 1]! - stamps[WARMUP_EXITS + i]!) * 1000;
  intervals.sort();
  return { p50: percentile(intervals, 0.5), p99: percentile(intervals, 0.99) };
}

/** Mean exit round trip (us) of the unclaimed-port loop guest, from the vCPU's run counter. */
async function jsPortRoundTrip(hv: KvmHypervisor, image: GuestImage): Promise<number> {
  const vm = tinyVm(hv, image);
  try {
    await vm.start();
    await new Promise((r) => setTimeout(r, PORT_LOOP_MS / 5));
    const runs0 = vm.vcpus[0]!.stats().ioIgnored;
    const t0 = performance.now();
    await new Promise((r) => setTimeout(r, PORT_LOOP_MS));
    const runs = vm.vcpus[0]!.stats().ioIgnored - runs0;
    return ((performance.now() - t0) * 1000) / runs;
  } finally {
    await vm.close();
  }
}

// The same VM set-up as KvmVm (TSS, identity map, irqchip, PIT, real mode at 0:ORIGIN), one
// thread, exits answered inline. argv: guest.bin mode(mmio|port) warmup measured|ms.
const C_VMM = String.raw`
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(1); }
static double now_us(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e6 + t.tv_nsec / 1e3; }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }

int main(int argc, char **argv) {
  if (argc != 5) return 2;
  int sys = open("/dev/kvm", O_RDWR | O_CLOEXEC); if (sys < 0) die("/dev/kvm");
  int vm = ioctl(sys, KVM_CREATE_VM, 0); if (vm < 0) die("KVM_CREATE_VM");
  if (ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000) < 0) die("KVM_SET_TSS_ADDR");
  uint64_t ident = 0xfffbc000; if (ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &ident) < 0) die("KVM_SET_IDENTITY_MAP_ADDR");
  if (ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) die("KVM_CREATE_IRQCHIP");
  struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY }; if (ioctl(vm, KVM_CREATE_PIT2, &pit) < 0) die("KVM_CREATE_PIT2");
  size_t ram_size = ${RAM};
  uint8_t *ram = mmap(NULL, ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (ram == MAP_FAILED) die("mmap");
  FILE *f = fopen(argv[1], "rb"); if (!f) die(argv[1]);
  fread(ram + ${ORIGIN}, 1, 4096, f); fclose(f);
  struct kvm_userspace_memory_region region = { .slot = 0, .guest_phys_addr = 0, .memory_size = ram_size, .userspace_addr = (uint64_t)ram };
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0) die("KVM_SET_USER_MEMORY_REGION");
  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0); if (vcpu < 0) die("KVM_CREATE_VCPU");
  int run_size = ioctl(sys, KVM_GET_VCPU_MMAP_SIZE, 0);
  struct kvm_run *run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED) die("mmap kvm_run");
  struct kvm_sregs sregs; if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) die("KVM_GET_SREGS");
  sregs.cs.base = 0; sregs.cs.selector = 0;
  if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
  struct kvm_regs regs = { .rip = ${ORIGIN}, .rsp = 0x8000, .rflags = 2 };
  if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");

  int mmio = strcmp(argv[2], "mmio") == 0;
  long warmup = atol(argv[3]), measured = atol(argv[4]);
  if (mmio) {
    double *t = malloc(sizeof(double) * (warmup + measured + 1));
    for (long n = 0; n < warmup + measured + 1;) {
      if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
      if (run->exit_reason != KVM_EXIT_MMIO) { fprintf(stderr, "exit %u\n", run->exit_reason); return 1; }
      memset(run->mmio.data, 0, 8);
      t[n++] = now_us();
    }
    double *d = malloc(sizeof(double) * measured);
    for (long i = 0; i < measured; i++) d[i] = t[warmup + i + 1] - t[warmup + i];
    qsort(d, measured, sizeof(double), cmp);
    printf("%f %f\n", d[measured / 2], d[(long)(measured * 0.99)]);
  } else {
    double end = 0, start = 0; long n = 0;
    for (;;) {
      if (ioctl(vcpu, KVM_RUN, 0) < 0) die("KVM_RUN");
      if (run->exit_reason != KVM_EXIT_IO) { fprintf(stderr, "exit %u\n", run->exit_reason); return 1; }
      double t = now_us();
      if (start == 0) { if (++n == warmup) { start = t; n = 0; end = t + measured * 1000.0; } continue; }
      n++;
      if (t >= end) { printf("%f\n", (t - start) / n); break; }
    }
  }
  return 0;
}
`;

function buildCVmm(dir: string): string {
  const source = join(dir, 'vmm.c');
  const binary = join(dir, 'vmm');
  writeFileSync(source, C_VMM);
  execFileSync('gcc', ['-O2', '-o', binary, source]);
  return binary;
}

function guestFile(dir: string, name: string, image: GuestImage): string {
  const path = join(dir, `${name}.bin`);
  writeFileSync(path, image.bytes);
  return path;
}

/** Spawns a child that creates a VM and reports its first KVM_RUN entry; ms from spawn. */
function firstEntryFromSpawn(): Promise<{ fromSpawn: number; inProcess: number }> {
  // The compiled build (`npm run build`) is how a VMM process really starts; from source, tsx's
  // transpile-on-load dominates and is not what a user of rxvirt runs in production.
  const compiled = fileURLToPath(new URL('../dist/bench/vm.js', import.meta.url));
  const args = existsSync(compiled)
    ? [compiled, '--first-entry-child']
    : ['--import', 'tsx', fileURLToPath(import.meta.url), '--first-entry-child'];
  return new Promise((resolve, reject) => {
    const spawnedAt = performance.timeOrigin + performance.now();
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    child.on('close', (code) => {
      if (code !== 0) return reject(new Error(`first-entry child exited with ${code}`));
      const report = JSON.parse(out) as { firstEntryAt: number; createdAt: number };
      resolve({ fromSpawn: report.firstEntryAt - spawnedAt, inProcess: report.firstEntryAt - report.createdAt });
    });
  });
}

async function firstEntryChild(): Promise<void> {
  const createdAt = performance.timeOrigin + performance.now();
  const hv = KvmHypervisor.open();
  const vm = hv.createVm({ memory: [{ base: 0, size: RAM }] });
  vm.memory.write(ORIGIN, Uint8Array.of(0xfa, 0xf4)); // cli; hlt
  const vcpu = vm.vcpus[0]!;
  const { regs, sregs } = realModeEntry(vcpu.getSregs(), { cs: 0, ip: ORIGIN });
  vcpu.setSregs(sregs);
  vcpu.setRegs(regs);
  await vm.start();
  const firstEntryAt = vcpu.stats().firstEntryAt;
  await vm.close();
  hv.close();
  process.stdout.write(JSON.stringify({ firstEntryAt, createdAt }));
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

export async function benchVm(): Promise<BenchResult[]> {
  const results: BenchResult[] = [];
  const spawnTimes: number[] = [];
  const inProcessTimes: number[] = [];
  for (let i = 0; i < FIRST_ENTRY_RUNS; i++) {
    const t = await firstEntryFromSpawn();
    spawnTimes.push(t.fromSpawn);
    inProcessTimes.push(t.inProcess);
  }
  results.push({ name: 'vm start: process spawn -> first vCPU entry (median)', value: median(spawnTimes), unit: 'ms' });
  results.push({ name: 'vm start: open /dev/kvm -> first vCPU entry, in process (median)', value: median(inProcessTimes), unit: 'ms' });

  const dir = mkdtempSync(join(tmpdir(), 'rxvirt-bench-vm-'));
  try {
    const mmioGuest = buildGuest('mmio-loop', { origin: ORIGIN, bits: 16, symbols: { MMIO_SEG } });
    const portGuest = buildGuest('port-loop', { origin: ORIGIN, bits: 16 });
    const vmm = buildCVmm(dir);
    const hv = KvmHypervisor.open();
    try {
      const js = await jsMmioRoundTrip(hv, mmioGuest);
      const sleeping = await jsMmioRoundTrip(hv, mmioGuest, { vcpuMicros: 0, mainMicros: 0 });
      const [cP50, cP99] = execFileSync(vmm, [guestFile(dir, 'mmio', mmioGuest), 'mmio', String(WARMUP_EXITS), String(MEASURED_EXITS)], { encoding: 'utf8' })
        .trim().split(' ').map(Number) as [number, number];
      results.push(
        { name: 'MMIO exit round trip, main-thread MmioBus: p50', value: js.p50, unit: 'us' },
        { name: 'MMIO exit round trip, main-thread MmioBus: p99', value: js.p99, unit: 'us' },
        { name: 'MMIO exit round trip, exit polling off: p50', value: sleeping.p50, unit: 'us' },
        { name: 'MMIO exit round trip, exit polling off: p99', value: sleeping.p99, unit: 'us' },
        { name: 'MMIO exit round trip, C VMM inline: p50', value: cP50, unit: 'us' },
        { name: 'MMIO exit round trip, C VMM inline: p99', value: cP99, unit: 'us' },
        { name: 'MMIO exit round trip p50, rxvirt / C', value: js.p50 / cP50, unit: 'x' },
      );
      const jsPort = await jsPortRoundTrip(hv, portGuest);
      const cPort = Number(execFileSync(vmm, [guestFile(dir, 'port', portGuest), 'port', String(WARMUP_EXITS), String(PORT_LOOP_MS)], { encoding: 'utf8' }).trim());
      results.push(
        { name: 'unclaimed-port exit round trip, in the vCPU thread: mean', value: jsPort, unit: 'us' },
        { name: 'unclaimed-port exit round trip, C VMM inline: mean', value: cPort, unit: 'us' },
        { name: 'unclaimed-port exit round trip, rxvirt / C', value: jsPort / cPort, unit: 'x' },
      );
    } finally {
      hv.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  return results;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  if (process.argv[2] === '--first-entry-child') {
    await firstEntryChild();
  } else {
    const results = await benchVm();
    const w = Math.max(...results.map((r) => r.name.length));
    for (const r of results) console.log(`${r.name.padEnd(w)}  ${r.value.toFixed(r.unit === 'x' ? 2 : 1).padStart(8)} ${r.unit}`);
  }
}
