// The lifecycle every backend's VM shares: the state machine (created -> running -> ending ->
// ended -> closed), exactly one outcome however many parties end the VM (the first wins: a
// guest exit, a device, the host's stop, a host failure), the lifecycle events, stop and close.
// A backend extends it with its hypervisor's resources: it adds vCPUs with addVcpu, starts them
// in start() (vcpuStarted, failStart), reports their ends through vcpuEnded and frees every fd
// and mapping it made in releaseResources.

import { Subject, type Observable } from 'rxjs';
import type { Vcpu, VmEvent, VmOutcome, VmState } from './hypervisor.ts';
import { VmError } from './vm-error.ts';

/** What ending a VM needs from its vCPUs. */
export interface LifecycleVcpu extends Vcpu {
  /** Asks the run to end (safe in any state, any number of times). */
  kick(): void;
  /** Resolves when the run has ended (at once if it never ran). */
  join(): Promise<void>;
}

export abstract class VmLifecycle<V extends LifecycleVcpu> {
  private readonly allVcpus: V[] = [];
  private readonly events = new Subject<VmEvent>();
  readonly events$: Observable<VmEvent> = this.events.asObservable();
  /** Settles once, with how the VM ended; never rejects. */
  readonly outcome: Promise<VmOutcome>;
  private resolveOutcome!: (outcome: VmOutcome) => void;
  private ending: Promise<VmOutcome> | null = null;
  private closing: Promise<void> | null = null;
  protected currentState: VmState = 'created';

  /** `name` starts every error message, e.g. 'KVM VM'. */
  protected constructor(private readonly name: string) {
    this.outcome = new Promise((resolve) => { this.resolveOutcome = resolve; });
  }

  get vcpus(): readonly V[] {
    return this.allVcpus;
  }

  get state(): VmState {
    return this.currentState;
  }

  /** Ends the VM with `outcome` unless it already ended: kicks and joins running vCPUs first. */
  finish(outcome: VmOutcome): Promise<VmOutcome> {
    if (this.ending) return this.ending;
    if (this.currentState === 'closed') return this.outcome;
    const wasRunning = this.currentState === 'running';
    this.currentState = 'ending';
    this.ending = (async () => {
      if (wasRunning) {
        for (const v of this.allVcpus) v.kick();
        await Promise.all(this.allVcpus.map((v) => v.join()));
      }
      if (this.currentState === 'ending') this.currentState = 'ended';
      this.events.next({ type: 'outcome', outcome });
      this.resolveOutcome(outcome);
      return outcome;
    })();
    return this.ending;
  }

  stop(): Promise<VmOutcome> {
    return this.finish({ kind: 'stopped' });
  }

  /** Stops if needed, then releases every resource (closed even when that throws). Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.finish({ kind: 'stopped' });
      try {
        this.releaseResources();
      } finally {
        this.currentState = 'closed';
        this.events.complete();
      }
    })();
    return this.closing;
  }

  /**
   * The vCPU host's callback: a vCPU's run ended with an outcome, or because it was asked to stop
   * (null). A device failure served on the main thread reports an outcome while the run goes on.
   */
  vcpuEnded(vcpu: V, outcome: VmOutcome | null): void {
    if (vcpu.state === 'ended') this.events.next({ type: 'vcpu-ended', vcpu: vcpu.id });
    if (outcome) void this.finish(outcome);
  }

  /** Every fd, mapping and thread the backend made; called once the vCPUs have ended. */
  protected abstract releaseResources(): void;

  /** Adds the vCPU `make` creates with the next id (before start only). */
  protected addVcpu(make: (id: number) => V): V {
    this.checkState('created', 'createVcpu');
    const vcpu = make(this.allVcpus.length);
    this.allVcpus.push(vcpu);
    return vcpu;
  }

  /** start()'s preconditions: not started yet, and at least one vCPU. */
  protected checkStartable(): void {
    this.checkState('created', 'start');
    if (this.allVcpus.length === 0) throw new VmError('EINVAL', `${this.name}: start without vCPUs`);
  }

  protected vcpuStarted(vcpu: V): void {
    this.events.next({ type: 'vcpu-started', vcpu: vcpu.id, at: vcpu.stats().firstEntryAt });
  }

  /** A start that failed ends the VM with outcome 'error', then rethrows the failure. */
  protected async failStart(e: unknown): Promise<never> {
    const error = e instanceof Error ? e : new Error(String(e));
    await this.finish({ kind: 'error', error });
    throw error;
  }

  protected checkState(expected: VmState, what: string): void {
    if (this.currentState !== expected) throw new VmError('EBUSY', `${this.name}: ${what} while ${this.currentState}`);
  }

  protected checkOpen(what: string): void {
    if (this.currentState === 'closed') throw new VmError('EBADF', `${this.name}: ${what} after close`);
  }
}
