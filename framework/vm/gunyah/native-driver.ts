// The real Gunyah driver behind the GunyahDriver seam: libc calls through koffi, and for each
// vCPU fd a thread of its own making the blocking GH_VCPU_RUN calls (vcpu-run-thread.ts).
// The main thread waits for a call with Atomics.waitAsync and kicks a blocked call with the
// process-wide kick signal (native/signals.ts).

import { Worker } from 'node:worker_threads';
import * as libc from '../../../native/libc.ts';
import { NativeError, errnoNumber } from '../../../native/errors.ts';
import { GH_VCPU_RUN } from '../../../native/gunyah.ts';
import { installKickHandler, kickThread } from '../../../native/signals.ts';
import type { GunyahDriver, GunyahMapping } from './gunyah-driver.ts';
import { RUN_CMD, RUN_SLOTS, runThreadSource, type RunThreadData } from './vcpu-run-thread.ts';

/** Atomics.waitAsync (ES2024, in Node since 16), typed here because the project's lib is ES2022. */
const waitAsync = (Atomics as unknown as {
  waitAsync(array: Int32Array, index: number, value: number): { async: false; value: string } | { async: true; value: Promise<string> };
}).waitAsync;

/** One vCPU's run thread, seen from the main thread. */
class RunThread {
  private readonly ctl = new Int32Array(new SharedArrayBuffer(RUN_SLOTS.COUNT * 4));
  private readonly worker: Worker;
  private busy = false;

  constructor(readonly fd: number) {
    installKickHandler();
    const data: RunThreadData = { fd, request: GH_VCPU_RUN, control: this.ctl.buffer as SharedArrayBuffer, slots: RUN_SLOTS, cmd: RUN_CMD };
    this.worker = new Worker(runThreadSource(), { eval: true, execArgv: [], workerData: data, name: `gh-vcpu-fd${fd}` });
    this.worker.unref();
  }

  async run(context: string): Promise<number> {
    if (this.busy) throw new NativeError(errnoNumber('EBUSY'), 'ioctl', `${context}: a run is already in progress`);
    const ctl = this.ctl;
    this.busy = true;
    this.worker.ref(); // Atomics.waitAsync alone does not keep the event loop alive
    try {
      Atomics.store(ctl, RUN_SLOTS.CMD, RUN_CMD.RUN);
      Atomics.notify(ctl, RUN_SLOTS.CMD);
      for (;;) {
        const wait = waitAsync(ctl, RUN_SLOTS.CMD, RUN_CMD.RUN);
        if (wait.async) await wait.value;
        if (Atomics.load(ctl, RUN_SLOTS.CMD) !== RUN_CMD.RUN) break;
      }
      if (Atomics.load(ctl, RUN_SLOTS.CMD) === RUN_CMD.QUIT && Atomics.load(ctl, RUN_SLOTS.TID) === 0) {
        throw new NativeError(errnoNumber('EBADF'), 'ioctl', `${context}: vCPU fd closed`);
      }
      const r = Atomics.load(ctl, RUN_SLOTS.RESULT);
      if (r < 0) throw new NativeError(Atomics.load(ctl, RUN_SLOTS.ERRNO), 'ioctl', context);
      return r;
    } finally {
      this.busy = false;
      this.worker.unref();
    }
  }

  kick(): void {
    const tid = Atomics.load(this.ctl, RUN_SLOTS.TID);
    if (!this.busy || tid === 0) return;
    try {
      kickThread(tid, `kick GH_VCPU_RUN on fd ${this.fd}`);
    } catch (e) {
      if (!(e instanceof NativeError && e.code === 'ESRCH')) throw e; // it just ended
    }
  }

  /** Ends the thread after any call in flight (the caller has stopped the vCPU). */
  quit(): void {
    Atomics.store(this.ctl, RUN_SLOTS.CMD, RUN_CMD.QUIT);
    Atomics.notify(this.ctl, RUN_SLOTS.CMD);
  }
}

export class NativeGunyahDriver implements GunyahDriver {
  private readonly threads = new Map<number, RunThread>();

  open(path: string, context: string): number {
    return libc.open(path, libc.O_RDWR | libc.O_CLOEXEC, 0, context);
  }

  close(fd: number, context: string): void {
    const thread = this.threads.get(fd);
    if (thread) {
      thread.quit();
      this.threads.delete(fd);
    }
    libc.close(fd, context);
  }

  ioctl(fd: number, request: number, arg: Uint8Array | number, context: string): number {
    return typeof arg === 'number' ? libc.ioctl(fd, request, arg, context) : libc.ioctlPtr(fd, request, arg, context);
  }

  run(vcpuFd: number, context: string): Promise<number> {
    let thread = this.threads.get(vcpuFd);
    if (!thread) {
      thread = new RunThread(vcpuFd);
      this.threads.set(vcpuFd, thread);
    }
    return thread.run(context);
  }

  kick(vcpuFd: number): void {
    this.threads.get(vcpuFd)?.kick();
  }

  mmap(fd: number, length: number, context: string): GunyahMapping {
    const address = fd < 0
      ? libc.mmap(length, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE, -1, 0, context)
      : libc.mmap(length, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd, 0, context);
    return { bytes: new Uint8Array(libc.view(address, length)), address, length };
  }

  munmap(mapping: GunyahMapping, context: string): void {
    libc.munmap(mapping.address, mapping.length, context);
  }

  addressOf(bytes: Uint8Array): bigint {
    return libc.addressOf(bytes);
  }
}
