// A running virtqueue as its device handler sees it: driver kicks and available
// descriptor chains as observables, `complete()` to hand a chain back. The queue
// batches used-ring publication (one used.idx store and at most one interrupt
// per drain or per microtask of async completions), honours notification
// suppression, bounds what a guest can make it do (at most queue-size chains in
// flight, at most queue-size chains per event-loop turn), and turns a malformed
// ring into DEVICE_NEEDS_RESET instead of an exception in the event loop.

import { Observable, Subject, Subscription, type Subscriber } from 'rxjs';
import { DescriptorChain, VirtqueueError } from './descriptor-chain.ts';
import type { SplitQueue } from './split-queue.ts';
import { GuestMemoryError } from '../guest-memory.ts';

export interface DeviceQueueHost {
  /** Used buffers were published and the driver wants an interrupt. */
  signalUsed(queueIndex: number): void;
  /** The guest broke the rules (bad chain, bad address): DEVICE_NEEDS_RESET. */
  needsReset(reason: string): void;
}

export type ChainHandler = (chain: DescriptorChain) => number | Promise<number>;

export class DeviceQueue {
  /** Notifications from the driver (ioeventfd kick, QueueNotify, vhost-user kick). */
  readonly kicks$: Observable<void>;
  /** Every available chain, drained on each kick (and once when the queue starts). */
  readonly chains$: Observable<DescriptorChain>;

  private readonly kickSubject = new Subject<void>();
  /** Completions are published to the ring. */
  private active = true;
  /** Chains are taken from the ring. False once stopping; in-flight ones may still complete (drain). */
  private accepting = true;
  private draining = false;
  private flushScheduled = false;
  private unpublished = 0;
  /** Chains taken from the ring and not yet completed: never more than the queue size. */
  private taken = 0;
  /** Async work that may still touch guest memory (serve handlers, track()). */
  private pendingIo = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(
    readonly index: number,
    readonly name: string,
    /** Features the driver accepted. */
    readonly features: bigint,
    private readonly ring: SplitQueue,
    private readonly host: DeviceQueueHost,
  ) {
    this.kicks$ = this.kickSubject.asObservable();
    this.chains$ = new Observable<DescriptorChain>((subscriber) => {
      const sub = this.kickSubject.subscribe(() => this.drain(subscriber));
      this.drain(subscriber);
      return sub;
    });
  }

  get isActive(): boolean {
    return this.active;
  }

  /** Driver notification. */
  kick(): void {
    if (this.accepting) this.kickSubject.next();
  }

  /** Pull one available chain (for devices that wait for host data, e.g. console receive). */
  pop(): DescriptorChain | null {
    if (!this.accepting) return null;
    try {
      return this.take();
    } catch (err) {
      this.guestFault(err);
      return null;
    }
  }

  /** Return `chain` to the driver with `len` bytes written into its writable buffers. */
  complete(chain: DescriptorChain, len: number): void {
    if (this.taken > 0) this.taken--;
    if (!this.active) return; // reset happened meanwhile: the ring belongs to the next driver
    try {
      this.ring.pushUsed(chain.head, len, false);
    } catch (err) {
      this.guestFault(err); // ring memory lent away or gone
      return;
    }
    this.unpublished++;
    if (!this.draining && !this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(this.flushTask);
    }
  }

  /**
   * Serve every chain with `handler`, which returns the number of bytes it wrote (or a promise of it).
   * Async handlers run concurrently and may complete out of order.
   */
  serve(handler: ChainHandler): Subscription {
    return this.chains$.subscribe((chain) => {
      let result: number | Promise<number>;
      try {
        result = handler(chain);
      } catch (err) {
        this.guestFault(err);
        return;
      }
      if (typeof result === 'number') {
        this.complete(chain, result);
        return;
      }
      this.pendingIo++;
      result.then(
        (len) => {
          this.complete(chain, len);
          this.ioSettled();
        },
        (err) => {
          this.guestFault(err);
          this.ioSettled();
        },
      );
    });
  }

  /** Keep the queue's stop (and the device's reset) waiting until `work` settles. */
  track<T>(work: Promise<T>): Promise<T> {
    this.pendingIo++;
    work.then(this.ioSettledTask, this.ioSettledTask);
    return work;
  }

  /**
   * Stop serving. No chain is taken after this. With `drain`, requests already taken complete into the
   * ring first (vhost-user GET_VRING_BASE: the frontend resumes exactly where we stopped); without it
   * (device reset) their completions are discarded. Resolves once no I/O targets guest memory.
   */
  async stop(options: { drain?: boolean } = {}): Promise<void> {
    this.accepting = false;
    this.kickSubject.complete();
    if (!options.drain) {
      this.flush();
      this.active = false;
    }
    if (this.pendingIo > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    this.flush();
    this.active = false;
  }

  /** Requests whose I/O still targets guest memory. */
  get inFlightCount(): number {
    return this.pendingIo;
  }

  /** Ring state for vhost-user GET_VRING_BASE. */
  get nextAvail(): number {
    return this.ring.nextAvail;
  }

  private take(): DescriptorChain | null {
    if (this.taken >= this.ring.size && this.ring.availableCount() > 0) {
      // Only possible if the driver re-offered heads it has not got back: QEMU calls this "Virtqueue size exceeded".
      throw new VirtqueueError('more chains in flight than the queue size', `${this.taken} taken, size ${this.ring.size}`);
    }
    const chain = this.ring.pop();
    if (chain !== null) this.taken++;
    return chain;
  }

  /** Take available chains: at most one queue's worth per event-loop turn, so one guest cannot starve the loop. */
  private drain(subscriber: Subscriber<DescriptorChain>): void {
    if (!this.accepting || this.draining || subscriber.closed) return;
    this.draining = true;
    let budget = this.ring.size;
    let more = false;
    try {
      for (;;) {
        this.ring.disableNotifications();
        let chain: DescriptorChain | null;
        while (this.accepting && budget > 0 && (chain = this.take()) !== null) {
          budget--;
          subscriber.next(chain);
        }
        if (!this.accepting) break;
        if (budget === 0) {
          more = true; // notifications stay disabled: we come back on our own
          break;
        }
        if (!this.ring.enableNotifications()) break;
      }
    } catch (err) {
      this.guestFault(err);
    } finally {
      this.draining = false;
    }
    this.flush();
    if (more) setImmediate(() => this.drain(subscriber));
  }

  private readonly flushTask = () => {
    this.flushScheduled = false;
    this.flush();
  };

  private readonly ioSettledTask = () => this.ioSettled();

  private ioSettled(): void {
    if (--this.pendingIo > 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const resolve of waiters) resolve();
  }

  private flush(): void {
    if (this.unpublished === 0 || !this.active) return;
    this.unpublished = 0;
    try {
      this.ring.publishUsed();
      if (!this.ring.needsNotification()) return;
    } catch (err) {
      this.guestFault(err);
      return;
    }
    this.host.signalUsed(this.index);
  }

  private guestFault(err: unknown): void {
    if (!this.active) return;
    const reason = err instanceof VirtqueueError || err instanceof GuestMemoryError
      ? `${this.name}: ${err.message}`
      : `${this.name}: device handler failed: ${err instanceof Error ? err.message : String(err)}`;
    this.active = false;
    this.accepting = false;
    this.host.needsReset(reason);
  }
}
