// One vring as a vhost-user connection sees it: what SET_VRING_NUM / ADDR / BASE /
// ENABLE configured, and the three eventfds the front-end handed over (kick =
// its ioeventfd, call = its irqfd, err = where a broken ring is reported).
// Every fd is checked to be an eventfd before it is adopted (a regular file or a
// socket would make the poll loop spin or block) and is closed when replaced or
// when the ring is dropped.

import { readlinkSync } from 'node:fs';
import type { Subscription } from 'rxjs';
import { EventFd } from '../../framework/eventfd.ts';
import * as libc from '../../native/libc.ts';
import { protocolError } from './protocol.ts';

/** Ring addresses in the front-end's virtual address space. */
export interface VringUserAddresses {
  desc: bigint;
  avail: bigint;
  used: bigint;
}

export class Vring {
  size: number;
  addresses: VringUserAddresses | null = null;
  /** Next available index to consume when the ring (re)starts: SET_VRING_BASE / GET_VRING_BASE. */
  base = 0;
  enabled = false;
  /** Running in the device kit. */
  started = false;
  kick: EventFd | null = null;
  kickSubscription: Subscription | null = null;
  call: EventFd | null = null;
  err: EventFd | null = null;

  constructor(readonly index: number, readonly maxSize: number) {
    this.size = maxSize;
  }

  /** Forget SET_VRING_NUM/ADDR/BASE/ENABLE (RESET_DEVICE); the fds stay. */
  resetSettings(): void {
    this.size = this.maxSize;
    this.addresses = null;
    this.base = 0;
    this.enabled = false;
  }

  setKick(fd: EventFd | null, subscribe: (kick: EventFd) => Subscription): void {
    this.dropKick();
    this.kick = fd;
    if (fd) this.kickSubscription = subscribe(fd);
  }

  dropKick(): void {
    this.kickSubscription?.unsubscribe();
    this.kickSubscription = null;
    this.kick?.close();
    this.kick = null;
  }

  setCall(fd: EventFd | null): void {
    this.call?.close();
    this.call = fd;
  }

  setErr(fd: EventFd | null): void {
    this.err?.close();
    this.err = fd;
  }

  /** Close every fd this ring holds. */
  closeFds(): void {
    this.dropKick();
    this.setCall(null);
    this.setErr(null);
  }
}

/**
 * Take ownership of a received fd that must be an eventfd; non-blocking from now on (the
 * front-end shares the file description and may read it concurrently). Throws
 * VhostUserProtocolError otherwise; the caller still owns (and closes) the fd then.
 */
export function adoptEventFd(fd: number, what: string): EventFd {
  let target: string;
  try {
    target = readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    protocolError('EBADF', `${what}: fd ${fd} cannot be inspected`);
  }
  if (target !== 'anon_inode:[eventfd]') protocolError('EBADF', `${what}: not an eventfd (${target})`);
  libc.setNonBlocking(fd, true, what);
  return EventFd.adopt(fd);
}
