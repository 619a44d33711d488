// native/kvm.ts against the running kernel: every ioctl number and argument encoding is accepted
// by /dev/kvm with the intended effect, and a real-mode guest's port and MMIO exits decode as
// the instructions it ran. The test binds the few libc calls it needs itself (native/libc.ts
// belongs to another layer and is not what is under test here).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { accessSync, constants } from 'node:fs';
import { Worker } from 'node:worker_threads';
import koffi from 'koffi';
import * as kvm from '../../native/kvm.ts';

const O_RDWR = 2;
const O_CLOEXEC = 0o2000000;
const PROT_RW = 1 | 2;
const MAP_SHARED = 0x01;
const MAP_PRIVATE = 0x02;
const MAP_ANONYMOUS = 0x20;
const EFD_NONBLOCK = 0o4000;
const MAP_FAILED = 0xffff_ffff_ffff_ffffn;

function devKvmSkipReason(): string | undefined {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return undefined;
  } catch (e) {
    return `/dev/kvm: ${(e as NodeJS.ErrnoException).code}`;
  }
}

const skip = devKvmSkipReason();
if (skip) console.log(`SKIP: live KVM checks (${skip})`);

const libc = skip ? undefined : koffi.load('libc.so.6');
const sys = libc && {
  open: libc.func('open', 'int', ['str', 'int']),
  close: libc.func('close', 'int', ['int']),
  read: libc.func('read', 'intptr_t', ['int', 'void *', 'size_t']),
  ioctlPtr: libc.func('ioctl', 'int', ['int', 'unsigned long', 'void *']),
  ioctlInt: libc.func('ioctl', 'int', ['int', 'unsigned long', 'unsigned long']),
  mmap: libc.func('mmap', 'void *', ['void *', 'size_t', 'int', 'int', 'int', 'int64_t']),
  munmap: libc.func('munmap', 'int', ['void *', 'size_t']),
  eventfd: libc.func('eventfd', 'int', ['unsigned int', 'int']),
};

const errnoNames = new Map(Object.entries(koffi.os.errno).map(([k, v]) => [v as number, k]));

function check(result: number | bigint, what: string): number {
  if (Number(result) < 0) {
    const err = new Error(`${what}: ${errnoNames.get(koffi.errno()) ?? koffi.errno()}`) as Error & { code?: string };
    err.code = errnoNames.get(koffi.errno());
    throw err;
  }
  return Number(result);
}

const ioctl = (fd: number, request: number, arg: Uint8Array | number | bigint, what: string): number =>
  check(arg instanceof Uint8Array ? sys!.ioctlPtr(fd, request, arg) : sys!.ioctlInt(fd, request, arg), what);

// Guest: 16-bit real mode at 0x1000, RAM 0..64 KiB, MMIO window at 0x20000 (ds = 0x2000).
const CODE = [
  0xba, 0xf8, 0x03, //       mov dx, 0x3f8
  0xb0, 0x41, //             mov al, 'A'
  0xee, //                   out dx, al          -> IO out, 1 byte
  0xec, //                   in al, dx           -> IO in, answered 0x5a
  0xbb, 0x00, 0x20, //       mov bx, 0x2000
  0x8e, 0xdb, //             mov ds, bx
  0xa2, 0x10, 0x00, //       mov [0x10], al      -> MMIO write 0x20010, 1 byte (0x5a)
  0xa1, 0x20, 0x00, //       mov ax, [0x20]      -> MMIO read 0x20020, 2 bytes, answered 0xbeef
  0xa3, 0x30, 0x00, //       mov [0x30], ax      -> MMIO write 0x20030, 2 bytes (0xbeef)
  0xa3, 0x40, 0x00, //       mov [0x40], ax      -> ioeventfd 0x20040 datamatch 0xbeef: no exit
  0xba, 0xf9, 0x03, //       mov dx, 0x3f9
  0xee, //                   out dx, al          -> IO out: done (hlt would block with the in-kernel LAPIC)
];
const RAM_SIZE = 0x10000;
const CODE_AT = 0x1000;

interface Vm { sysFd: number; vmFd: number; vcpuFd: number; ram: bigint; run: bigint; runSize: number; view: DataView; fds: number[] }
let vm: Vm | undefined;

function setUp(): Vm {
  const s = sys!;
  const fds: number[] = [];
  const sysFd = check(s.open('/dev/kvm', O_RDWR | O_CLOEXEC), 'open /dev/kvm');
  fds.push(sysFd);
  const vmFd = ioctl(sysFd, kvm.KVM_CREATE_VM, 0, 'KVM_CREATE_VM');
  fds.push(vmFd);
  ioctl(vmFd, kvm.KVM_SET_TSS_ADDR, 0xfffb_d000, 'KVM_SET_TSS_ADDR');
  const identity = new Uint8Array(8);
  new DataView(identity.buffer).setBigUint64(0, 0xfffb_c000n, true);
  ioctl(vmFd, kvm.KVM_SET_IDENTITY_MAP_ADDR, identity, 'KVM_SET_IDENTITY_MAP_ADDR');
  ioctl(vmFd, kvm.KVM_CREATE_IRQCHIP, 0, 'KVM_CREATE_IRQCHIP');
  ioctl(vmFd, kvm.KVM_CREATE_PIT2, kvm.encodeKvmPitConfig({ flags: kvm.KVM_PIT_SPEAKER_DUMMY }), 'KVM_CREATE_PIT2');

  const ram = s.mmap(null, RAM_SIZE, PROT_RW, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) as bigint;
  if (ram === MAP_FAILED) check(-1, 'mmap guest RAM');
  new Uint8Array(koffi.view(ram, RAM_SIZE)).set(CODE, CODE_AT);
  ioctl(vmFd, kvm.KVM_SET_USER_MEMORY_REGION, kvm.encodeKvmUserMemRegion({
    slot: 0, flags: 0, guestPhysAddr: 0, memorySize: RAM_SIZE, userspaceAddr: ram,
  }), 'KVM_SET_USER_MEMORY_REGION');

  const vcpuFd = ioctl(vmFd, kvm.KVM_CREATE_VCPU, 0, 'KVM_CREATE_VCPU');
  fds.push(vcpuFd);
  const runSize = ioctl(sysFd, kvm.KVM_GET_VCPU_MMAP_SIZE, 0, 'KVM_GET_VCPU_MMAP_SIZE');
  const run = s.mmap(null, runSize, PROT_RW, MAP_SHARED, vcpuFd, 0) as bigint;
  if (run === MAP_FAILED) check(-1, 'mmap kvm_run');
  return { sysFd, vmFd, vcpuFd, ram, run, runSize, view: new DataView(koffi.view(run, runSize)), fds };
}

function runVcpu(v: Vm): kvm.KvmExit {
  ioctl(v.vcpuFd, kvm.KVM_RUN, 0, 'KVM_RUN');
  return kvm.readKvmExit(v.view);
}

if (skip) {
  test.skip('live /dev/kvm');
} else {
  // A guest that never exits would block KVM_RUN (and this thread's timers) forever: a worker
  // kills the process after 60 s so the runner reports a failure instead of hanging.
  const watchdog = new Worker(`setTimeout(() => {
    console.error('kvm-live: watchdog: KVM_RUN did not return within 60 s');
    process.kill(process.pid, 'SIGKILL');
  }, 60000);`, { eval: true });
  watchdog.unref();
  test.before(() => { vm = setUp(); });
  test.after(() => {
    void watchdog.terminate();
    if (!vm) return;
    sys!.munmap(vm.run, vm.runSize);
    sys!.munmap(vm.ram, RAM_SIZE);
    for (const fd of vm.fds.reverse()) sys!.close(fd);
  });

  test('/dev/kvm speaks API 12 and has the capabilities the runtime relies on', () => {
    const v = vm!;
    assert.is(ioctl(v.sysFd, kvm.KVM_GET_API_VERSION, 0, 'KVM_GET_API_VERSION'), kvm.KVM_API_VERSION);
    for (const cap of [kvm.KVM_CAP_USER_MEMORY, kvm.KVM_CAP_IOEVENTFD, kvm.KVM_CAP_IRQFD, kvm.KVM_CAP_IMMEDIATE_EXIT]) {
      assert.ok(ioctl(v.sysFd, kvm.KVM_CHECK_EXTENSION, cap, 'KVM_CHECK_EXTENSION') > 0, `cap ${cap}`);
    }
    assert.ok(v.runSize >= (kvm.kvmRunLayout.size), `mmap size ${v.runSize}`);
  });

  test('CPUID: KVM_GET_SUPPORTED_CPUID decodes, KVM_SET_CPUID2 takes it back', () => {
    const v = vm!;
    const buf = kvm.allocKvmCpuid2(256);
    ioctl(v.sysFd, kvm.KVM_GET_SUPPORTED_CPUID, buf, 'KVM_GET_SUPPORTED_CPUID');
    const entries = kvm.decodeKvmCpuid2(buf);
    assert.ok(entries.length > 0 && entries.length < 256);
    const leaf0 = entries.find((e) => e.function === 0);
    assert.ok(leaf0 && leaf0.eax > 0, 'leaf 0 reports the highest basic leaf');
    ioctl(v.vcpuFd, kvm.KVM_SET_CPUID2, kvm.encodeKvmCpuid2(entries), 'KVM_SET_CPUID2');
  });

  test('registers: GET/SET of regs, sregs, fpu, msrs, vcpu events and lapic round-trip', () => {
    const v = vm!;
    const sregsBuf = new Uint8Array(koffi.sizeof(kvm.kvm_sregs));
    ioctl(v.vcpuFd, kvm.KVM_GET_SREGS, sregsBuf, 'KVM_GET_SREGS');
    const sregs = kvm.decodeKvmSregs(sregsBuf);
    assert.is(sregs.cs.selector, 0xf000, 'reset CS');
    sregs.cs = { ...sregs.cs, base: 0n, selector: 0 };
    ioctl(v.vcpuFd, kvm.KVM_SET_SREGS, kvm.encodeKvmSregs(sregs), 'KVM_SET_SREGS');
    ioctl(v.vcpuFd, kvm.KVM_GET_SREGS, sregsBuf, 'KVM_GET_SREGS');
    assert.equal(kvm.decodeKvmSregs(sregsBuf), sregs);

    const regs = Object.fromEntries(kvm.kvmRegNames.map((n) => [n, 0n])) as kvm.KvmRegs;
    regs.rip = BigInt(CODE_AT);
    regs.rflags = 2n;
    regs.rsi = 0x1122_3344_5566_7788n;
    ioctl(v.vcpuFd, kvm.KVM_SET_REGS, kvm.encodeKvmRegs(regs), 'KVM_SET_REGS');
    const regsBuf = new Uint8Array(koffi.sizeof(kvm.kvm_regs));
    ioctl(v.vcpuFd, kvm.KVM_GET_REGS, regsBuf, 'KVM_GET_REGS');
    assert.equal(kvm.decodeKvmRegs(regsBuf), regs);

    ioctl(v.vcpuFd, kvm.KVM_SET_FPU, kvm.encodeKvmFpu({ fcw: 0x37f, mxcsr: 0x1f80 }), 'KVM_SET_FPU');
    const fpuBuf = new Uint8Array(koffi.sizeof(kvm.kvm_fpu));
    ioctl(v.vcpuFd, kvm.KVM_GET_FPU, fpuBuf, 'KVM_GET_FPU');
    // No value check: on this host (kvm_pvm) KVM_GET_FPU does not reliably return what
    // KVM_SET_FPU wrote (mxcsr reads 0; from C even fcw does). Acceptance proves the numbers.
    assert.is(kvm.decodeKvmFpu(fpuBuf).fpr.length, 128);

    const IA32_SYSENTER_CS = 0x174;
    assert.is(ioctl(v.vcpuFd, kvm.KVM_SET_MSRS, kvm.encodeKvmMsrs([{ index: IA32_SYSENTER_CS, data: 0x10 }]), 'KVM_SET_MSRS'), 1);
    const msrs = kvm.encodeKvmMsrs([{ index: IA32_SYSENTER_CS, data: 0 }]);
    assert.is(ioctl(v.vcpuFd, kvm.KVM_GET_MSRS, msrs, 'KVM_GET_MSRS'), 1);
    assert.equal(kvm.decodeKvmMsrs(msrs), [{ index: IA32_SYSENTER_CS, data: 0x10n }]);

    const events = new Uint8Array(koffi.sizeof(kvm.kvm_vcpu_events));
    ioctl(v.vcpuFd, kvm.KVM_GET_VCPU_EVENTS, events, 'KVM_GET_VCPU_EVENTS');
    ioctl(v.vcpuFd, kvm.KVM_SET_VCPU_EVENTS, events, 'KVM_SET_VCPU_EVENTS');
    const lapic = new Uint8Array(koffi.sizeof(kvm.kvm_lapic_state));
    ioctl(v.vcpuFd, kvm.KVM_GET_LAPIC, lapic, 'KVM_GET_LAPIC');
    ioctl(v.vcpuFd, kvm.KVM_SET_LAPIC, lapic, 'KVM_SET_LAPIC');

    const tr = kvm.encodeKvmTranslation(CODE_AT + 4);
    ioctl(v.vcpuFd, kvm.KVM_TRANSLATE, tr, 'KVM_TRANSLATE');
    const t = kvm.decodeKvmTranslation(tr);
    assert.equal([t.valid, t.physicalAddress], [true, BigInt(CODE_AT + 4)]);
  });

  test('irqfd (with resample), IRQ line and ioeventfd registrations are accepted and removable', () => {
    const v = vm!;
    const irq = check(sys!.eventfd(0, EFD_NONBLOCK), 'eventfd');
    const resample = check(sys!.eventfd(0, EFD_NONBLOCK), 'eventfd');
    v.fds.push(irq, resample);
    ioctl(v.vmFd, kvm.KVM_IRQFD, kvm.encodeKvmIrqfd({ fd: irq, gsi: 5, resamplefd: resample }), 'KVM_IRQFD resample');
    ioctl(v.vmFd, kvm.KVM_IRQFD, kvm.encodeKvmIrqfd({ fd: irq, gsi: 5, deassign: true }), 'KVM_IRQFD deassign');
    ioctl(v.vmFd, kvm.KVM_IRQ_LINE, kvm.encodeKvmIrqLevel({ irq: 4, level: 1 }), 'KVM_IRQ_LINE');
    ioctl(v.vmFd, kvm.KVM_IRQ_LINE, kvm.encodeKvmIrqLevel({ irq: 4, level: 0 }), 'KVM_IRQ_LINE');

    const notify = check(sys!.eventfd(0, EFD_NONBLOCK), 'eventfd');
    v.fds.push(notify);
    const pio = { addr: 0x604, len: 2, fd: notify, pio: true };
    ioctl(v.vmFd, kvm.KVM_IOEVENTFD, kvm.encodeKvmIoeventfd(pio), 'KVM_IOEVENTFD pio');
    assert.throws(() => ioctl(v.vmFd, kvm.KVM_IOEVENTFD, kvm.encodeKvmIoeventfd(pio), 'again'), /EEXIST/);
    ioctl(v.vmFd, kvm.KVM_IOEVENTFD, kvm.encodeKvmIoeventfd({ ...pio, deassign: true }), 'KVM_IOEVENTFD deassign');
    ioctl(v.vmFd, kvm.KVM_IOEVENTFD, kvm.encodeKvmIoeventfd({ addr: 0x2_0040, len: 2, fd: notify, datamatch: 0xbeef }), 'KVM_IOEVENTFD mmio');
  });

  test('immediate_exit makes KVM_RUN return EINTR without running the guest', () => {
    const v = vm!;
    kvm.setKvmImmediateExit(v.view, true);
    assert.throws(() => runVcpu(v), /EINTR/);
    kvm.setKvmImmediateExit(v.view, false);
  });

  test('a real-mode guest: port and MMIO exits decode as the instructions it ran', () => {
    const v = vm!;
    const out = runVcpu(v);
    assert.equal(out.kind === 'io' && [out.direction, out.port, out.size, out.count, [...out.data]], ['out', 0x3f8, 1, 1, [0x41]]);

    const inp = runVcpu(v);
    assert.equal(inp.kind === 'io' && [inp.direction, inp.port, inp.size], ['in', 0x3f8, 1]);
    kvm.writeKvmIoInValue(v.view, 0x5a);

    const w1 = runVcpu(v);
    assert.equal(w1.kind === 'mmio' && [w1.physAddr, w1.len, w1.isWrite, [...w1.data]], [0x2_0010, 1, true, [0x5a]], 'IN answer reached AL');

    const r = runVcpu(v);
    assert.equal(r.kind === 'mmio' && [r.physAddr, r.len, r.isWrite], [0x2_0020, 2, false]);
    kvm.writeKvmMmioReadValue(v.view, 0xbeef);

    const w2 = runVcpu(v);
    assert.equal(w2.kind === 'mmio' && [w2.physAddr, w2.len, w2.isWrite, [...w2.data]], [0x2_0030, 2, true, [0xef, 0xbe]], 'MMIO answer reached AX');

    const done = runVcpu(v);
    assert.equal(done.kind === 'io' && done.port, 0x3f9, 'the datamatched ioeventfd write did not exit');
    const notify = v.fds[v.fds.length - 1]!;
    const counter = new Uint8Array(8);
    assert.is(check(sys!.read(notify, counter, 8), 'read eventfd'), 8);
    assert.is(new DataView(counter.buffer).getBigUint64(0, true), 1n, 'the ioeventfd was signalled once');
  });
}

test.run();
