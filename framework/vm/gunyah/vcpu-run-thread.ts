// The thread that makes GH_VCPU_RUN calls for one vCPU: a worker_threads worker calling the
// ioctl synchronously, one call per request (never the libuv pool: a vCPU must keep its thread,
// and a blocked pool thread starves fs and dns). It starts from source text as an eval worker
// without a TypeScript loader, so `runThreadMain` must stay self-contained: it may use only its
// two arguments, `workerData` and globals.
//
// Protocol over one SharedArrayBuffer of Int32 slots (RUN_SLOTS):
// - main: CMD = RUN, notify; the thread calls the ioctl, stores RESULT and ERRNO, sets CMD back
//   to IDLE and notifies; main waits for that with Atomics.waitAsync.
// - main: CMD = QUIT ends the thread after any call in flight. TID is the thread's kernel tid
//   (0 before it starts and after it ends), for kicking it with tgkill.

import type koffiModule from 'koffi';
import type * as threadsModule from 'node:worker_threads';
import { vcpuThreadScript } from '../vcpu-thread-source.ts';

export const RUN_SLOTS = Object.freeze({ CMD: 0, RESULT: 1, ERRNO: 2, TID: 3, COUNT: 4 });
export const RUN_CMD = Object.freeze({ IDLE: 0, RUN: 1, QUIT: 2 });

export interface RunThreadData {
  fd: number;
  request: number;
  control: SharedArrayBuffer;
  slots: typeof RUN_SLOTS;
  cmd: typeof RUN_CMD;
}

export function runThreadMain(koffi: typeof koffiModule, threads: typeof threadsModule): void {
  const d = threads.workerData as RunThreadData;
  const S = d.slots;
  const C = d.cmd;
  const libc = koffi.load('libc.so.6');
  const ioctl = libc.func('ioctl', 'int', ['int', 'unsigned long', 'unsigned long']);
  const gettid = libc.func('int gettid(void)');
  const ctl = new Int32Array(d.control);
  Atomics.store(ctl, S.TID, gettid() as number);
  for (;;) {
    let cmd = Atomics.load(ctl, S.CMD);
    while (cmd === C.IDLE) {
      Atomics.wait(ctl, S.CMD, C.IDLE);
      cmd = Atomics.load(ctl, S.CMD);
    }
    if (cmd !== C.RUN) break;
    const r = ioctl(d.fd, d.request, 0) as number;
    Atomics.store(ctl, S.ERRNO, r < 0 ? koffi.errno() : 0);
    Atomics.store(ctl, S.RESULT, r);
    Atomics.compareExchange(ctl, S.CMD, C.RUN, C.IDLE); // QUIT may have arrived meanwhile: keep it
    Atomics.notify(ctl, S.CMD);
  }
  Atomics.store(ctl, S.TID, 0);
}

/** The eval-worker script running `runThreadMain` (see vcpu-thread-source.ts). */
export function runThreadSource(): string {
  return vcpuThreadScript(runThreadMain);
}
