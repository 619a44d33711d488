// The irqfd side of a device: `ring()` raises the guest interrupt. Edge doorbells
// fire once per ring. Level doorbells stay asserted until the guest acknowledges
// (virtio-mmio InterruptACK): on KVM a resample eventfd tells us the guest
// EOIed the line and we re-assert while interrupts are still pending; Gunyah's
// GH_IRQFD_FLAGS_LEVEL keeps the line up in the hypervisor itself.

import type { Subscription } from 'rxjs';
import { EventFd } from './eventfd.ts';

export type TriggerMode = 'edge' | 'level';

export interface Doorbell {
  readonly mode: TriggerMode;
  /** Raise the interrupt. */
  ring(): void;
  /** The transport asks whether the device still has unacknowledged interrupts (for level re-assertion). */
  bindPending(pending: () => boolean): void;
  close(): void;
}

/** A doorbell over an irqfd eventfd; with `resample`, the KVM level-interrupt protocol. */
export class EventFdDoorbell implements Doorbell {
  private pending: () => boolean = () => false;
  private resampleSub: Subscription | null = null;
  /** Times the guest was signalled. */
  rings = 0;

  constructor(readonly irqfd: EventFd, readonly mode: TriggerMode = 'edge', readonly resample: EventFd | null = null) {
    if (resample) {
      this.resampleSub = resample.events().subscribe(() => {
        if (this.pending()) this.ring();
      });
    }
  }

  ring(): void {
    this.rings++;
    this.irqfd.signal();
  }

  bindPending(pending: () => boolean): void {
    this.pending = pending;
  }

  close(): void {
    this.resampleSub?.unsubscribe();
    this.resampleSub = null;
  }
}

/** An in-process doorbell (tests, and VMMs that inject interrupts themselves). */
export class CallbackDoorbell implements Doorbell {
  private pending: () => boolean = () => false;
  rings = 0;

  constructor(readonly mode: TriggerMode = 'edge', private readonly onRing: () => void = () => {}) {}

  ring(): void {
    this.rings++;
    this.onRing();
  }

  /** Level semantics seen from the interrupt controller: is the line asserted right now? */
  get asserted(): boolean {
    return this.mode === 'level' && this.pending();
  }

  /** Simulate the guest's EOI on a level line (KVM resample): re-ring while still pending. */
  endOfInterrupt(): void {
    if (this.mode === 'level' && this.pending()) this.ring();
  }

  bindPending(pending: () => boolean): void {
    this.pending = pending;
  }

  close(): void {}
}
