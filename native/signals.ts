// Kicking a thread out of a blocking syscall (KVM_RUN, GH_VCPU_RUN, poll): tgkill it with a
// signal that has a handler. The handler must exist, or the default action kills the process;
// it must not be SIG_IGN, or the syscall is never interrupted. Node lets only the main thread
// install handlers (process.on), and they are process-wide, so the main thread installs one
// no-op handler for KICK_SIGNAL and any thread may then kick any other.
// The interrupted call fails with EINTR whatever SA_RESTART says for KVM_RUN, poll, epoll_wait
// and nanosleep; plain read/write on eventfds and pipes are restarted instead. A kick can land
// just before the target enters the syscall: KVM callers close that race with
// run->immediate_exit = 1 before kicking.
import { isMainThread } from 'node:worker_threads';
import { NativeError, errnoNumber } from './errors.ts';
import { SIGUSR2, tgkill } from './libc.ts';

/** SIGUSR2: SIGUSR1 belongs to Node's inspector, and Node cannot handle real-time signals. */
export const KICK_SIGNAL = SIGUSR2;

let installed = false;
function ignoreKick(): void {}

/**
 * Installs the no-op KICK_SIGNAL handler (idempotent). Main thread only: call it before any
 * thread is kicked. The handler does not keep the process alive.
 */
export function installKickHandler(): void {
  if (installed) return;
  if (!isMainThread) throw new NativeError(errnoNumber('EPERM'), 'installKickHandler', 'installKickHandler: only the main thread can install signal handlers');
  process.on('SIGUSR2', ignoreKick);
  installed = true;
}

/** Removes the handler again (tests, shutdown). A later kick would then kill the process. */
export function uninstallKickHandler(): void {
  if (!installed) return;
  process.off('SIGUSR2', ignoreKick);
  installed = false;
}

/** Interrupts thread `tid` of this process (from gettid() in that thread) with KICK_SIGNAL. */
export function kickThread(tid: number, context?: string): void {
  tgkill(process.pid, tid, KICK_SIGNAL, context ?? `kick thread ${tid}`);
}
