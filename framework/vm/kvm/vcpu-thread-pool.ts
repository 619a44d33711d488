// vCPU threads, reused across VMs. koffi 3.3.x maps a call stack and heap for each thread on
// its first native call and never unmaps them (its per-thread instance data is never freed),
// so one fresh worker per vCPU per VM would leak three mappings (~3 MiB of address space) per
// VM. A thread parked after its run is handed the next vCPU instead, which also starts it in
// about a millisecond instead of ~30 ms. Parked threads are unref'd (they never keep the
// process alive); at most MAX_IDLE stay parked, extra ones quit.

import { Worker } from 'node:worker_threads';
import { vcpuThreadSource, type VcpuThreadCommand, type VcpuThreadData, type VcpuThreadMessage } from './vcpu-thread.ts';

const MAX_IDLE = 16;

export class VcpuThread {
  private onMessage: ((m: VcpuThreadMessage) => void) | null = null;
  private onDeath: ((e: Error) => void) | null = null;
  private dead = false;
  private readonly exited: Promise<void>;

  constructor(private readonly worker: Worker) {
    worker.on('message', (m: VcpuThreadMessage) => this.onMessage?.(m));
    worker.on('error', (e) => this.die(e));
    this.exited = new Promise((resolve) => {
      worker.once('exit', (code) => {
        this.die(new Error(`vCPU thread exited with code ${code}`));
        resolve();
      });
    });
  }

  get alive(): boolean {
    return !this.dead;
  }

  /** Starts a run. `onMessage` gets 'started' and then the run's last word; `onDeath` if the thread dies first. */
  run(data: VcpuThreadData, onMessage: (m: VcpuThreadMessage) => void, onDeath: (e: Error) => void): void {
    this.onMessage = onMessage;
    this.onDeath = onDeath;
    this.worker.ref();
    this.post({ type: 'run', data });
  }

  /** Ends the thread (idle threads only). */
  quit(): Promise<void> {
    this.worker.ref(); // keep the process up until it has gone
    this.post({ type: 'quit' });
    return this.exited;
  }

  /** Forget the current run's listeners and park. */
  park(): void {
    this.onMessage = null;
    this.onDeath = null;
    this.worker.unref();
  }

  private post(command: VcpuThreadCommand): void {
    if (!this.dead) this.worker.postMessage(command);
  }

  private die(error: Error): void {
    if (this.dead) return;
    this.dead = true;
    const onDeath = this.onDeath;
    this.park();
    idle.delete(this);
    onDeath?.(error);
  }
}

const idle = new Set<VcpuThread>();

function spawnVcpuThread(): VcpuThread {
  return new VcpuThread(new Worker(vcpuThreadSource(), { eval: true, execArgv: [], name: 'vcpu' }));
}

/** A parked thread, or a new one. */
export function acquireVcpuThread(): VcpuThread {
  for (const thread of idle) {
    idle.delete(thread);
    return thread;
  }
  return spawnVcpuThread();
}

/**
 * Starts threads until `count` are parked, so that a VM being set up (RAM, kernel, registers)
 * does not wait ~30 ms for its vCPU threads to boot when it starts.
 */
export function reserveVcpuThreads(count: number): void {
  while (idle.size < Math.min(count, MAX_IDLE)) {
    const thread = spawnVcpuThread();
    thread.park();
    idle.add(thread);
  }
}

/** Returns a thread whose run has ended (its last message arrived). */
export function releaseVcpuThread(thread: VcpuThread): void {
  thread.park();
  if (!thread.alive) return;
  if (idle.size >= MAX_IDLE) void thread.quit();
  else idle.add(thread);
}

/** Parked threads right now. */
export function idleVcpuThreads(): number {
  return idle.size;
}

/** Ends every parked thread (for a clean shutdown, or a test that counts threads). */
export async function shutdownIdleVcpuThreads(): Promise<void> {
  const threads = [...idle];
  idle.clear();
  await Promise.all(threads.map((t) => t.quit()));
}
