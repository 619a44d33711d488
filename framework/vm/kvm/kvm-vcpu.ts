// One KVM vCPU seen from the main thread: its fd and run page, register access while it is not
// running, its run on a pooled thread (vcpu-thread.ts) and the serving of the exits that thread
// hands over. MMIO exits go to the MmioBus and claimed port I/O to the PortBus, answered in
// place in the run page while the thread waits; every other exit ends the run and becomes the
// VM's outcome through the host, unless the host intercepts such exits (interceptExit: it may
// complete one, with register access, and resume). Serving allocates nothing for 1/2/4/8-byte
// accesses.

import * as libc from '../../../native/libc.ts';
import * as kvm from '../../../native/kvm.ts';
import { NativeError } from '../../../native/errors.ts';
import { installKickHandler, kickThread } from '../../../native/signals.ts';
import koffi from 'koffi';
import type { GuestMemory } from '../../guest-memory.ts';
import type { MmioBus } from '../../mmio-bus.ts';
import type { Vcpu, VcpuStats, VmOutcome } from '../hypervisor.ts';
import { VmError } from '../vm-error.ts';
import type { PortBus } from '../x86/port-bus.ts';
import { kvmExitOutcome } from './kvm-exit-outcome.ts';
import { CONTROL, VCPU_STATE, type VcpuThreadData, type VcpuThreadMessage } from './vcpu-thread.ts';
import { acquireVcpuThread, releaseVcpuThread, type VcpuThread } from './vcpu-thread-pool.ts';

/**
 * Polling of handed-over exits, as KVM polls before halting: a thread that has just handed
 * over an exit (vCPU) or served one (main) keeps checking for the answer, or the next exit, for
 * a few microseconds before it sleeps, because the two futex wake-ups of a sleeping hand-over
 * cost more than most MMIO handlers take. Polling pays only when both threads have a core:
 * after two polls in a row come back empty a side stops polling for the next 64 hand-overs,
 * doubling up to 4096 while it keeps failing, so an idle guest or a shared core costs about
 * one poll per thousands of exits. 0 turns a side off.
 */
export interface ExitPolling {
  /** vCPU thread: longest wait for the main thread's answer before sleeping. Default 30 us. */
  readonly vcpuMicros?: number;
  /** Main thread: longest wait for the next exit after serving one. Default 30 us. */
  readonly mainMicros?: number;
  /** Main thread: longest stretch of serving and polling before it yields to the event loop. Default 1000 us. */
  readonly burstMicros?: number;
}

/**
 * Completes an exit the hypervisor could not (an instruction its emulator rejects...). It runs
 * on the main thread while the vCPU thread waits, so the vCPU's registers may be read and set.
 */
export type ExitInterceptor = (exit: kvm.KvmExit, vcpu: KvmVcpu, memory: GuestMemory) => boolean;

/** What a vCPU needs from its VM. */
export interface KvmVcpuHost {
  readonly memory: GuestMemory;
  readonly mmio: MmioBus;
  readonly ports: PortBus;
  readonly exitPolling: ExitPolling;
  /**
   * Sees, on the main thread, every exit that would end a run (see KvmVmConfig.interceptExit):
   * true = handled, the vCPU resumes; false = the exit ends the run as usual.
   */
  readonly interceptExit?: ExitInterceptor;
  /** The run ended by itself (outcome), or because it was asked to stop (null). */
  vcpuEnded(vcpu: KvmVcpu, outcome: VmOutcome | null): void;
}

const RUN_L = kvm.kvmRunLayout;
const DEFAULT_POLL_MICROS = 30;
const DEFAULT_BURST_MICROS = 1000;
const POLL_BACKOFF_MIN = 64;
const POLL_BACKOFF_MAX = 4096;

/** Atomics.waitAsync (ES2024, in Node since 16), typed here because the project's lib is ES2022. */
const waitAsync = (Atomics as unknown as {
  waitAsync(array: Int32Array, index: number, value: number): { async: false; value: 'not-equal' | 'timed-out' } | { async: true; value: Promise<'ok' | 'timed-out'> };
}).waitAsync;
const TWO_32 = 2 ** 32;

export class KvmVcpu implements Vcpu {
  state: 'created' | 'running' | 'ended' = 'created';
  private readonly run: DataView;
  private readonly runBytes: Uint8Array;
  private readonly mmioData: Uint8Array[] = [];
  private readonly control = new SharedArrayBuffer(CONTROL.BYTES);
  private readonly ctl = new Int32Array(this.control, 0, CONTROL.INT32_SLOTS);
  private readonly counters = new Float64Array(this.control, CONTROL.STATS_BYTE_OFFSET, CONTROL.STATS_SLOTS);
  private thread: VcpuThread | null = null;
  private exited: Promise<void> = Promise.resolve();
  private closed = false;
  /** Inside interceptExit: the thread waits, registers are accessible. */
  private intercepting = false;
  private readonly pollMax: number;
  private pollSkip = 0;
  private pollFailures = 0;
  private pollBackoff = POLL_BACKOFF_MIN;
  private readonly burstMs: number;
  private readonly regsBuf = new Uint8Array(koffi.sizeof(kvm.kvm_regs));
  private readonly sregsBuf = new Uint8Array(koffi.sizeof(kvm.kvm_sregs));

  private constructor(
    readonly id: number,
    readonly fd: number,
    private readonly runAddress: bigint,
    private readonly runSize: number,
    private readonly host: KvmVcpuHost,
  ) {
    this.pollMax = (host.exitPolling.mainMicros ?? DEFAULT_POLL_MICROS) / 1000;
    this.burstMs = (host.exitPolling.burstMicros ?? DEFAULT_BURST_MICROS) / 1000;
    this.run = new DataView(libc.view(runAddress, runSize));
    this.runBytes = new Uint8Array(this.run.buffer);
    for (const len of [1, 2, 4, 8]) this.mmioData[len] = this.runBytes.subarray(RUN_L.mmioData, RUN_L.mmioData + len);
  }

  /** KVM_CREATE_VCPU, the run page mapping and the CPUID table. */
  static create(vmFd: number, id: number, runSize: number, cpuid: readonly kvm.KvmCpuidEntry2[], host: KvmVcpuHost): KvmVcpu {
    const fd = libc.ioctl(vmFd, kvm.KVM_CREATE_VCPU, id, `KVM_CREATE_VCPU ${id}`);
    let runAddress: bigint;
    try {
      runAddress = libc.mmap(runSize, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd, 0, `mmap kvm_run of vCPU ${id}`);
    } catch (e) {
      libc.close(fd);
      throw e;
    }
    const vcpu = new KvmVcpu(id, fd, runAddress, runSize, host);
    try {
      libc.ioctlPtr(fd, kvm.KVM_SET_CPUID2, kvm.encodeKvmCpuid2(cpuid), `KVM_SET_CPUID2 vCPU ${id}`);
    } catch (e) {
      vcpu.close();
      throw e;
    }
    return vcpu;
  }

  // ---- registers (only while the vCPU thread is not running) ----------------------------------

  getRegs(): kvm.KvmRegs {
    this.checkIdle('KVM_GET_REGS');
    libc.ioctlPtr(this.fd, kvm.KVM_GET_REGS, this.regsBuf, `KVM_GET_REGS vCPU ${this.id}`);
    return kvm.decodeKvmRegs(this.regsBuf);
  }

  setRegs(regs: kvm.KvmRegs): void {
    this.checkIdle('KVM_SET_REGS');
    libc.ioctlPtr(this.fd, kvm.KVM_SET_REGS, kvm.encodeKvmRegs(regs), `KVM_SET_REGS vCPU ${this.id}`);
  }

  getSregs(): kvm.KvmSregs {
    this.checkIdle('KVM_GET_SREGS');
    libc.ioctlPtr(this.fd, kvm.KVM_GET_SREGS, this.sregsBuf, `KVM_GET_SREGS vCPU ${this.id}`);
    return kvm.decodeKvmSregs(this.sregsBuf);
  }

  setSregs(sregs: kvm.KvmSregs): void {
    this.checkIdle('KVM_SET_SREGS');
    libc.ioctlPtr(this.fd, kvm.KVM_SET_SREGS, kvm.encodeKvmSregs(sregs), `KVM_SET_SREGS vCPU ${this.id}`);
  }

  setMsrs(entries: readonly kvm.KvmMsrEntry[]): void {
    this.checkIdle('KVM_SET_MSRS');
    const done = libc.ioctlPtr(this.fd, kvm.KVM_SET_MSRS, kvm.encodeKvmMsrs(entries), `KVM_SET_MSRS vCPU ${this.id}`);
    if (done !== entries.length) {
      throw new VmError('EINVAL', `KVM_SET_MSRS vCPU ${this.id}: MSR 0x${entries[done]!.index.toString(16)} refused`);
    }
  }

  /** Guest-physical address for a linear address in the vCPU's current mode, or null if unmapped. */
  translate(linear: bigint): number | null {
    this.checkIdle('KVM_TRANSLATE');
    const buf = kvm.encodeKvmTranslation(linear & 0xffff_ffff_ffff_ffffn);
    libc.ioctlPtr(this.fd, kvm.KVM_TRANSLATE, buf, `KVM_TRANSLATE vCPU ${this.id}`);
    const t = kvm.decodeKvmTranslation(buf);
    return t.valid && t.physicalAddress < BigInt(Number.MAX_SAFE_INTEGER) ? Number(t.physicalAddress) : null;
  }

  stats(): VcpuStats {
    const c = this.counters;
    return {
      runs: c[CONTROL.RUNS]!,
      mmio: c[CONTROL.MMIO]!,
      io: c[CONTROL.IO]!,
      ioIgnored: c[CONTROL.IO_IGNORED]!,
      interrupted: c[CONTROL.INTERRUPTED]!,
      firstEntryAt: c[CONTROL.FIRST_ENTRY_AT]!,
    };
  }

  // ---- the thread ------------------------------------------------------------------------------

  /** Starts the vCPU on a thread; resolves when it is about to enter the guest for the first time. */
  start(): Promise<void> {
    if (this.state !== 'created' || this.closed) throw new VmError('EBUSY', `vCPU ${this.id}: already started`);
    installKickHandler();
    this.state = 'running';
    const data: VcpuThreadData = {
      vcpuId: this.id,
      vcpuFd: this.fd,
      runAddress: this.runAddress,
      runSize: this.runSize,
      control: this.control,
      portMap: this.host.ports.claimed.buffer as SharedArrayBuffer,
      kvmRun: kvm.KVM_RUN,
      offsets: {
        exitReason: RUN_L.exitReason, ioDirection: RUN_L.ioDirection, ioSize: RUN_L.ioSize,
        ioPort: RUN_L.ioPort, ioCount: RUN_L.ioCount, ioDataOffset: RUN_L.ioDataOffset,
      },
      exits: { io: kvm.KVM_EXIT_IO, mmio: kvm.KVM_EXIT_MMIO, intr: kvm.KVM_EXIT_INTR, irqWindowOpen: kvm.KVM_EXIT_IRQ_WINDOW_OPEN },
      ioIn: kvm.KVM_EXIT_IO_IN,
      errno: { EINTR: koffi.os.errno.EINTR, EAGAIN: koffi.os.errno.EAGAIN },
      pollMs: (this.host.exitPolling.vcpuMicros ?? DEFAULT_POLL_MICROS) / 1000,
      handOverEnds: this.host.interceptExit !== undefined,
      state: VCPU_STATE,
      layout: CONTROL,
    };
    const thread = acquireVcpuThread();
    this.thread = thread;
    let started!: () => void;
    let failed!: (e: Error) => void;
    const ready = new Promise<void>((resolve, reject) => { started = resolve; failed = reject; });
    this.exited = new Promise<void>((resolve) => {
      const end = (outcome: VmOutcome | null) => {
        this.thread = null;
        // Whatever ended the run, our waiter must see DONE so it stops re-arming.
        Atomics.store(this.ctl, CONTROL.STATE, VCPU_STATE.DONE);
        Atomics.notify(this.ctl, CONTROL.STATE);
        this.state = 'ended';
        failed(new VmError('ECHILD', `vCPU ${this.id}: run ended before it started`));
        this.host.vcpuEnded(this, outcome);
        resolve();
      };
      thread.run(data, (m) => {
        if (m.type === 'started') {
          this.pump();
          started();
          return;
        }
        releaseVcpuThread(thread);
        this.thread = null; // registers are readable again: the fault report needs them
        end(this.endOfRun(m));
      }, (error) => {
        failed(error);
        end({ kind: 'error', error });
      });
    });
    return ready;
  }

  /** Asks the thread to leave KVM_RUN and end (safe in any state, any number of times). */
  kick(): void {
    if (this.closed || this.state !== 'running') return;
    // Order: immediate_exit before STOP before reading TID; see vcpu-thread.ts.
    this.run.setUint8(RUN_L.immediateExit, 1);
    Atomics.store(this.ctl, CONTROL.STOP, 1);
    const tid = Atomics.load(this.ctl, CONTROL.TID);
    if (tid !== 0) {
      try {
        kickThread(tid, `kick vCPU ${this.id}`);
      } catch (e) {
        if (!(e instanceof NativeError && e.code === 'ESRCH')) throw e; // ESRCH: it just ended
      }
    }
    // A thread waiting for us to serve an exit: release it unserved, it will see STOP.
    if (Atomics.compareExchange(this.ctl, CONTROL.STATE, VCPU_STATE.EXIT, VCPU_STATE.RUNNING) === VCPU_STATE.EXIT) {
      Atomics.notify(this.ctl, CONTROL.STATE);
    }
  }

  /** Resolves when the thread has exited (at once if it never ran). */
  join(): Promise<void> {
    return this.exited;
  }

  /** Unmaps the run page and closes the fd. The thread must have ended. Idempotent. */
  close(): void {
    if (this.closed) return;
    if (this.thread) throw new VmError('EBUSY', `vCPU ${this.id}: close while its thread runs`);
    this.closed = true;
    libc.munmap(this.runAddress, this.runSize, `munmap kvm_run of vCPU ${this.id}`);
    libc.close(this.fd, `close vCPU ${this.id}`);
  }

  private checkIdle(what: string): void {
    if (this.closed) throw new VmError('EBADF', `${what} vCPU ${this.id}: closed`);
    if (this.thread && !this.intercepting) throw new VmError('EBUSY', `${what} vCPU ${this.id}: its thread is running`);
  }

  /** The outcome of a run from its last word: null when it stopped because we asked. */
  private endOfRun(m: VcpuThreadMessage): VmOutcome | null {
    switch (m.type) {
      case 'stopped': return null;
      case 'error': return { kind: 'error', error: new NativeError(m.errno, 'ioctl', `KVM_RUN vCPU ${this.id}`) };
      case 'exit': return kvmExitOutcome(kvm.readKvmExit(this.run), this, this.host.memory);
      default: return { kind: 'error', error: new VmError('EPROTO', `vCPU ${this.id}: unexpected message ${m.type}`) };
    }
  }

  // ---- serving exits on the main thread -------------------------------------------------------

  /**
   * Serves every exit the thread hands over until it is done: after serving one it polls for
   * the next (see ExitPolling) within a burst budget, else sleeps in Atomics.waitAsync; a burst
   * that outlasts its budget yields to the event loop first.
   */
  private readonly pump = (): void => {
    const ctl = this.ctl;
    const burstEnd = performance.now() + this.burstMs;
    for (;;) {
      const state = Atomics.load(ctl, CONTROL.STATE);
      if (state === VCPU_STATE.DONE) return;
      if (state === VCPU_STATE.EXIT) {
        if (performance.now() > burstEnd) {
          setImmediate(this.pump);
          return;
        }
        if (Atomics.load(ctl, CONTROL.STOP) === 0) this.serve();
        Atomics.store(ctl, CONTROL.STATE, VCPU_STATE.RUNNING);
        Atomics.notify(ctl, CONTROL.STATE);
        this.pollForNextExit(burstEnd);
        continue;
      }
      const wait = waitAsync(ctl, CONTROL.STATE, VCPU_STATE.RUNNING);
      if (wait.async) {
        void wait.value.then(this.pump);
        return;
      }
    }
  };

  /** Polls for the thread's next exit (see ExitPolling), backing off while polls fail. */
  private pollForNextExit(burstEnd: number): void {
    if (this.pollSkip > 0) {
      this.pollSkip--;
      return;
    }
    if (this.pollMax === 0) return;
    const ctl = this.ctl;
    const until = Math.min(performance.now() + this.pollMax, burstEnd);
    while (Atomics.load(ctl, CONTROL.STATE) === VCPU_STATE.RUNNING && performance.now() < until);
    if (Atomics.load(ctl, CONTROL.STATE) !== VCPU_STATE.RUNNING) {
      this.pollFailures = 0;
      this.pollBackoff = POLL_BACKOFF_MIN;
    } else if (++this.pollFailures === 2) {
      this.pollFailures = 0;
      this.pollSkip = this.pollBackoff;
      this.pollBackoff = Math.min(this.pollBackoff * 2, POLL_BACKOFF_MAX);
    }
  }

  private serve(): void {
    try {
      const run = this.run;
      const reason = run.getUint32(RUN_L.exitReason, true);
      if (reason === kvm.KVM_EXIT_MMIO) {
        const addr = run.getUint32(RUN_L.mmioPhysAddr + 4, true) * TWO_32 + run.getUint32(RUN_L.mmioPhysAddr, true);
        const len = run.getUint32(RUN_L.mmioLen, true);
        const data = this.mmioData[len] ?? this.runBytes.subarray(RUN_L.mmioData, RUN_L.mmioData + Math.min(len, RUN_L.mmioDataSize));
        this.host.mmio.dispatch(addr, run.getUint8(RUN_L.mmioIsWrite) !== 0, data);
      } else if (reason === kvm.KVM_EXIT_IO) {
        const port = run.getUint16(RUN_L.ioPort, true);
        const size = run.getUint8(RUN_L.ioSize);
        const count = run.getUint32(RUN_L.ioCount, true);
        const offset = run.getUint32(RUN_L.ioDataOffset + 4, true) * TWO_32 + run.getUint32(RUN_L.ioDataOffset, true);
        if (offset + size * count > this.runSize) {
          throw new VmError('EFAULT', `vCPU ${this.id}: port I/O data at ${offset}+${size * count} outside the run mapping`);
        }
        const isWrite = run.getUint8(RUN_L.ioDirection) === kvm.KVM_EXIT_IO_OUT;
        for (let i = 0; i < count; i++) {
          const at = offset + i * size;
          this.host.ports.dispatch(port, isWrite, this.runBytes.subarray(at, at + size));
        }
      } else {
        this.intercept();
      }
    } catch (e) {
      // A device that throws is a host bug: end the VM rather than resume a guest in an unknown state.
      this.host.vcpuEnded(this, { kind: 'error', error: e instanceof Error ? e : new Error(String(e)) });
    }
  }

  /** An exit that would end the run, handed over because the host intercepts them. */
  private intercept(): void {
    let handled = false;
    this.intercepting = true;
    try {
      handled = this.host.interceptExit?.(kvm.readKvmExit(this.run), this, this.host.memory) ?? false;
    } finally {
      this.intercepting = false;
      if (!handled) Atomics.store(this.ctl, CONTROL.END, 1);
    }
  }
}
