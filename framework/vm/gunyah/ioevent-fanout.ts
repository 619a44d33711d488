// Queue notifications with datamatch on the Android-14 Gunyah driver. Its ioeventfd lookup
// (`_gh_vm_io_handler_compare` in vm_mgr.c) compares the datamatch FLAG, a boolean, instead of
// the value: a second datamatch ioeventfd at one address is EEXIST, a write of 0 never matches
// and any non-zero write matches the first one. So the kernel cannot tell virtio-mmio queue 0
// from queue 1 at QueueNotify. rxvirt registers one ioeventfd per address without datamatch and
// fans each signal out to every eventfd registered there: a notification may reach queues that
// were not kicked (harmless, a virtio device re-reads its avail ring), but never exits the vCPU.

import type { Subscription } from 'rxjs';
import { EventFd } from '../../eventfd.ts';

export class IoEventFanout {
  /** The eventfd the kernel signals. */
  readonly source = EventFd.create();
  private readonly targets = new Set<EventFd>();
  private readonly subscription: Subscription;
  /** Signals received from the kernel. */
  signals = 0;

  constructor(readonly address: number) {
    this.subscription = this.source.events().subscribe(() => {
      this.signals++;
      for (const t of this.targets) t.signal();
    });
  }

  add(target: EventFd): void {
    this.targets.add(target);
  }

  /** Returns how many targets remain. */
  delete(target: EventFd): number {
    this.targets.delete(target);
    return this.targets.size;
  }

  close(): void {
    this.subscription.unsubscribe(); // stop watching before the fd goes
    this.source.close();
  }
}
