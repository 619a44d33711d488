// Linux eventfds as the event core uses them: the ioeventfd side (a queue
// notification becomes an Observable emission on the main loop, no thread per
// fd) and the irqfd side (a write signals the guest's interrupt).

import { Observable, share } from 'rxjs';
import * as libc from '../native/libc.ts';
import { watchFd, type FdWatch } from '../native/fd-watch.ts';

export class EventFd {
  private closed = false;
  private readonly watches = new Set<FdWatch>();
  private shared: Observable<bigint> | null = null;

  private constructor(readonly fd: number) {}

  /** A non-blocking, close-on-exec eventfd. */
  static create(options: { initial?: number; semaphore?: boolean } = {}): EventFd {
    let flags = libc.EFD_NONBLOCK | libc.EFD_CLOEXEC;
    if (options.semaphore) flags |= libc.EFD_SEMAPHORE;
    return new EventFd(libc.eventfd(options.initial ?? 0, flags, 'eventfd'));
  }

  /** Adopt an eventfd received from elsewhere (vhost-user kick/call fds). Takes ownership. */
  static adopt(fd: number): EventFd {
    return new EventFd(fd);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  signal(value: bigint = 1n): void {
    libc.eventfdWrite(this.fd, value, 'eventfd signal');
  }

  /** Counter value and reset, or null when not signalled. */
  read(): bigint | null {
    return libc.eventfdRead(this.fd, 'eventfd read');
  }

  /** Emits the counter each time the eventfd becomes readable; any number of subscribers share one watch. */
  events(): Observable<bigint> {
    this.shared ??= watchEventFd(this.fd, this.watches).pipe(share());
    return this.shared;
  }

  /** Stops every watch on this fd, then closes it (libuv must forget an fd before it is closed). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const w of this.watches) w.stop();
    this.watches.clear();
    libc.close(this.fd, 'eventfd close');
  }
}

/** Observable of an eventfd's readiness: each emission is the counter read (and reset) at that moment. */
export function fromEventFd(source: EventFd | number): Observable<bigint> {
  return typeof source === 'number' ? watchEventFd(source, null) : source.events();
}

function watchEventFd(fd: number, registry: Set<FdWatch> | null): Observable<bigint> {
  return new Observable<bigint>((subscriber) => {
    const watch = watchFd(fd, { readable: true }, (ev) => {
      if (ev.error) {
        subscriber.error(new Error(`eventfd ${fd}: poll error`));
        return;
      }
      let value: bigint | null;
      try {
        value = libc.eventfdRead(fd, 'eventfd read');
      } catch (err) {
        subscriber.error(err);
        return;
      }
      if (value !== null) subscriber.next(value);
    });
    registry?.add(watch);
    return () => {
      watch.stop();
      registry?.delete(watch);
    };
  });
}
