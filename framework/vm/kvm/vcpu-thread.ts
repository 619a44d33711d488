// The body of a vCPU thread: a worker_threads worker that runs one vCPU at a time, calling
// KVM_RUN synchronously (KVM binds a vCPU to the thread that runs it, so never the libuv pool).
// Between runs it waits for the next `run` command (see vcpu-thread-pool.ts for why threads are
// reused). It starts from source text (`vcpuThreadSource`) as an eval worker without a
// TypeScript loader: ~30 ms instead of ~300 ms. So `vcpuThreadMain` must stay self-contained:
// it may use only its two arguments and globals; every constant arrives in `VcpuThreadData`.
//
// Protocol with the main thread, over one SharedArrayBuffer (the control block, CONTROL):
// - MMIO exits and port I/O on claimed ports: the worker sets STATE = EXIT, polls for up to
//   pollMs (backing off while polls fail), then sleeps in Atomics.wait; the main thread
//   (Atomics.waitAsync, then polling for the next exit itself, see KvmVcpu) serves the exit
//   straight from its own view of the run page and sets STATE = RUNNING. Nothing is copied.
// - Port I/O on unclaimed ports: answered here (reads see all ones), no round trip.
// - KVM_EXIT_INTR / EINTR: resumed unless STOP is set.
// - Anything else: the loop ends and the worker posts { type: 'exit' }; the main thread reads
//   the exit from the run page. STATE = DONE, then that message, end every run. With
//   `handOverEnds` such exits are first handed over like MMIO exits (a VM that intercepts
//   them, see KvmVmConfig.interceptExit): the main thread either resumes the vCPU or sets END,
//   and then the run ends with that exit.
// Stop: the main thread sets STOP and immediate_exit, then tgkill()s TID with a handled signal.

import type koffiModule from 'koffi';
import type * as threadsModule from 'node:worker_threads';
import { vcpuThreadScript } from '../vcpu-thread-source.ts';

/** The control block: Int32 slots (STATE, TID, STOP), then Float64 statistics written by the thread. */
export const CONTROL = Object.freeze({
  STATE: 0,
  TID: 1,
  STOP: 2,
  /** Set by the main thread while serving a handed-over exit: end the run with it. */
  END: 3,
  INT32_SLOTS: 4,
  /** Float64 statistics start here (byte offset). */
  STATS_BYTE_OFFSET: 16,
  FIRST_ENTRY_AT: 0,
  RUNS: 1,
  MMIO: 2,
  IO: 3,
  IO_IGNORED: 4,
  INTERRUPTED: 5,
  STATS_SLOTS: 6,
  BYTES: 16 + 6 * 8,
});

/** Values of CONTROL.STATE. */
export const VCPU_STATE = Object.freeze({ RUNNING: 0, EXIT: 1, DONE: 2 });

/** Everything the thread needs, structured-cloned into the worker. */
export interface VcpuThreadData {
  vcpuId: number;
  vcpuFd: number;
  runAddress: bigint;
  runSize: number;
  control: SharedArrayBuffer;
  /** One bit per claimed port (PortBus.claimed's buffer). */
  portMap: SharedArrayBuffer;
  kvmRun: number;
  offsets: { exitReason: number; ioDirection: number; ioSize: number; ioPort: number; ioCount: number; ioDataOffset: number };
  exits: { io: number; mmio: number; intr: number; irqWindowOpen: number };
  ioIn: number;
  errno: { EINTR: number; EAGAIN: number };
  /** Longest poll (ms) for the main thread's answer before sleeping in Atomics.wait; 0 = never poll. */
  pollMs: number;
  /** Hand exits that would end the run to the main thread first (it may resume the vCPU). */
  handOverEnds: boolean;
  state: typeof VCPU_STATE;
  layout: typeof CONTROL;
}

/** Messages the thread posts: 'started' once per run, then exactly one of the others. */
export type VcpuThreadMessage =
  | { type: 'started'; tid: number; at: number }
  /** KVM_RUN returned an exit the thread does not handle: read it from the run page. */
  | { type: 'exit' }
  | { type: 'stopped' }
  | { type: 'error'; errno: number };

/** What the main thread posts to a vCPU thread. */
export type VcpuThreadCommand = { type: 'run'; data: VcpuThreadData } | { type: 'quit' };

export function vcpuThreadMain(koffi: typeof koffiModule, threads: typeof threadsModule): void {
  const port = threads.parentPort!;
  const libc = koffi.load('libc.so.6');
  const ioctl = libc.func('ioctl', 'int', ['int', 'unsigned long', 'unsigned long']);
  const gettid = libc.func('int gettid(void)');
  const tid = gettid() as number;

  port.on('message', (command: VcpuThreadCommand) => {
    if (command.type === 'quit') port.close();
    else port.postMessage(runVcpu(command.data));
  });

  /** One vCPU's run, from its first KVM_RUN to the exit that ends it; returns the last word. */
  function runVcpu(d: VcpuThreadData): VcpuThreadMessage {
    const C = d.layout;
    const S = d.state;
    const run = new DataView(koffi.view(d.runAddress, d.runSize));
    const runBytes = new Uint8Array(run.buffer);
    const ctl = new Int32Array(d.control, 0, C.INT32_SLOTS);
    const stats = new Float64Array(d.control, C.STATS_BYTE_OFFSET, C.STATS_SLOTS);
    const claimed = new Uint8Array(d.portMap);
    const o = d.offsets;
    const fd = d.vcpuFd;
    const request = d.kvmRun;
    // Polling for the main thread's answer, with back-off (see ExitPolling in kvm-vcpu.ts).
    const pollMax = d.pollMs;
    const POLL_BACKOFF_MIN = 64;
    const POLL_BACKOFF_MAX = 4096;
    let pollSkip = 0;
    let pollFailures = 0;
    let pollBackoff = POLL_BACKOFF_MIN;

    Atomics.store(ctl, C.TID, tid);
    Atomics.store(ctl, C.END, 0);
    const at = performance.timeOrigin + performance.now();
    stats[C.FIRST_ENTRY_AT] = at;
    port.postMessage({ type: 'started', tid, at } satisfies VcpuThreadMessage);

    let end: VcpuThreadMessage = { type: 'stopped' };
    for (;;) {
      if (Atomics.load(ctl, C.STOP) !== 0) break;
      const r = ioctl(fd, request, 0) as number;
      stats[C.RUNS]!++;
      if (r < 0) {
        const errno = koffi.errno();
        if (errno === d.errno.EINTR || errno === d.errno.EAGAIN) {
          stats[C.INTERRUPTED]!++;
          continue;
        }
        end = { type: 'error', errno };
        break;
      }
      const reason = run.getUint32(o.exitReason, true);
      if (reason === d.exits.mmio) {
        stats[C.MMIO]!++;
      } else if (reason === d.exits.io) {
        const p = run.getUint16(o.ioPort, true);
        if ((claimed[p >> 3]! & (1 << (p & 7))) === 0) {
          stats[C.IO_IGNORED]!++;
          if (run.getUint8(o.ioDirection) === d.ioIn) {
            // Floating bus. data_offset lies inside the mapping (KVM puts it on the next page).
            const start = Number(run.getBigUint64(o.ioDataOffset, true));
            const length = run.getUint8(o.ioSize) * run.getUint32(o.ioCount, true);
            if (start + length <= runBytes.length) runBytes.fill(0xff, start, start + length);
          }
          continue;
        }
        stats[C.IO]!++;
      } else if (reason === d.exits.intr || reason === d.exits.irqWindowOpen) {
        stats[C.INTERRUPTED]!++;
        continue;
      } else if (!d.handOverEnds) {
        end = { type: 'exit' };
        break;
      }
      // Hand the exit to the main thread; poll briefly for the answer (a futex sleep and wake
      // cost more than most answers take), then sleep until it is served.
      Atomics.store(ctl, C.STATE, S.EXIT);
      Atomics.notify(ctl, C.STATE);
      if (pollSkip > 0) {
        pollSkip--;
      } else if (pollMax > 0) {
        const until = performance.now() + pollMax;
        while (Atomics.load(ctl, C.STATE) === S.EXIT && performance.now() < until);
        if (Atomics.load(ctl, C.STATE) !== S.EXIT) {
          pollFailures = 0;
          pollBackoff = POLL_BACKOFF_MIN;
        } else if (++pollFailures === 2) {
          pollFailures = 0;
          pollSkip = pollBackoff;
          pollBackoff = Math.min(pollBackoff * 2, POLL_BACKOFF_MAX);
        }
      }
      while (Atomics.load(ctl, C.STATE) === S.EXIT) Atomics.wait(ctl, C.STATE, S.EXIT);
      if (Atomics.load(ctl, C.END) !== 0) {
        end = { type: 'exit' };
        break;
      }
    }
    Atomics.store(ctl, C.TID, 0);
    Atomics.store(ctl, C.STATE, S.DONE);
    Atomics.notify(ctl, C.STATE);
    return end;
  }
}

/** The eval-worker script running `vcpuThreadMain` (see vcpu-thread-source.ts). */
export function vcpuThreadSource(): string {
  return vcpuThreadScript(vcpuThreadMain);
}
