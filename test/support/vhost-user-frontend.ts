// A vhost-user front-end for tests: the part QEMU plays. It owns memfd-backed
// guest memory (mapped here too, so DriverQueue can lay out rings in it and the
// back-end maps the same pages), speaks the protocol over native/unix-socket with
// fds in SCM_RIGHTS, sets up vrings with real kick/call eventfds, and can send
// any malformed message a hostile front-end would.

import { readdirSync } from 'node:fs';
import { EventFd, fromEventFd } from '../../framework/eventfd.ts';
import { GuestMemory } from '../../framework/guest-memory.ts';
import { watchFd, type FdWatch } from '../../native/fd-watch.ts';
import * as libc from '../../native/libc.ts';
import { recvWithFds, sendWithFds, unixConnect } from '../../native/unix-socket.ts';
import {
  FLAG_NEED_REPLY, FLAG_VERSION, HEADER_SIZE, type MemoryRegionDescription, PROTOCOL_F_CONFIG, PROTOCOL_F_MQ,
  PROTOCOL_F_REPLY_ACK, PROTOCOL_F_RESET_DEVICE, Request, VHOST_USER_F_PROTOCOL_FEATURES, VRING_NOFD, bit,
  decodeConfig, decodeHeader, decodeU64, decodeVringState, encodeConfig, encodeMemoryTable, encodeMessage,
  encodeU64, encodeVringAddress, encodeVringState,
} from '../../transports/vhost-user/protocol.ts';
import type { DriverQueue, UsedElement } from './driver-queue.ts';

export interface Reply {
  request: number;
  flags: number;
  payload: Uint8Array;
}

/** Guest RAM as a front-end holds it: a memfd, mapped in this process at `userAddress`. */
export class FrontendMemory {
  readonly guest: GuestMemory;
  private closed = false;

  private constructor(
    readonly fd: number,
    readonly guestBase: number,
    readonly size: number,
    readonly userAddress: bigint,
  ) {
    this.guest = new GuestMemory([{ base: guestBase, size, bytes: new Uint8Array(libc.view(userAddress, size)) }]);
  }

  /** `size` bytes of zeroed memfd memory at guest-physical `guestBase`. */
  static create(size: number, guestBase = 0): FrontendMemory {
    const fd = libc.memfdCreate('rxvirt-test-guest', libc.MFD_CLOEXEC);
    libc.ftruncate(fd, size);
    const addr = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd, 0);
    return new FrontendMemory(fd, guestBase, size, addr);
  }

  /** The SET_MEM_TABLE description of this memory (optionally only part of it). */
  region(offset = 0, size = this.size - offset): MemoryRegionDescription {
    return {
      guestAddress: BigInt(this.guestBase + offset),
      size: BigInt(size),
      userAddress: this.userAddress + BigInt(offset),
      mmapOffset: BigInt(offset),
    };
  }

  /** Front-end virtual address of guest-physical `gpa`. */
  user(gpa: number): bigint {
    return this.userAddress + BigInt(gpa - this.guestBase);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    libc.munmap(this.userAddress, this.size);
    libc.close(this.fd);
  }
}

export interface RingSetup {
  kick: EventFd;
  call: EventFd;
}

export class VhostUserFrontend {
  private watch: FdWatch | null;
  private buffer = new Uint8Array(0);
  private readonly replies: Reply[] = [];
  private waiters: { resolve: (r: Reply) => void; reject: (e: Error) => void }[] = [];
  private eof = false;
  private open = true;
  private readonly eofWaiters: (() => void)[] = [];
  /** Eventfds created by setupRing, closed by close(). */
  private readonly owned: EventFd[] = [];
  /** Fds that arrived with replies (a well-behaved back-end sends none). */
  readonly receivedFds: number[] = [];

  private constructor(readonly fd: number) {
    this.watch = watchFd(fd, { readable: true }, () => this.onReadable());
  }

  static connect(path: string): VhostUserFrontend {
    return new VhostUserFrontend(unixConnect(path));
  }

  // ---- raw messages -------------------------------------------------------------------------

  /** Send one message (header built here) with optional fds. */
  send(request: number, payload: Uint8Array = new Uint8Array(0), opts: { fds?: number[]; flags?: number } = {}): void {
    this.sendRaw(encodeMessage(request, opts.flags ?? FLAG_VERSION, payload), opts.fds);
  }

  /** Send arbitrary bytes (hostile tests). */
  sendRaw(bytes: Uint8Array, fds: number[] = []): void {
    const sent = sendWithFds(this.fd, bytes, fds);
    if (sent !== bytes.length) throw new Error(`vhost-user frontend: sent ${sent} of ${bytes.length} bytes`);
  }

  /** The next reply from the back-end; rejects when it closes the connection or after `timeoutMs`. */
  receive(timeoutMs = 2000): Promise<Reply> {
    const ready = this.replies.shift();
    if (ready) return Promise.resolve(ready);
    if (this.eof) return Promise.reject(new Error('vhost-user frontend: back-end closed the connection'));
    return new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w.resolve !== done);
        reject(new Error(`vhost-user frontend: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      const done = (r: Reply) => {
        clearTimeout(timer);
        resolve(r);
      };
      this.waiters.push({ resolve: done, reject: (e) => { clearTimeout(timer); reject(e); } });
    });
  }

  /** Send and wait for the reply (GET_* requests, or anything with need_reply). */
  async call(request: number, payload?: Uint8Array, opts: { fds?: number[]; needReply?: boolean } = {}): Promise<Uint8Array> {
    this.send(request, payload, { fds: opts.fds, flags: FLAG_VERSION | (opts.needReply ? FLAG_NEED_REPLY : 0) });
    const reply = await this.receive();
    if (reply.request !== request) throw new Error(`vhost-user frontend: reply to ${reply.request}, expected ${request}`);
    return reply.payload;
  }

  /** Send with need_reply and check the REPLY_ACK status is 0. */
  async acked(request: number, payload?: Uint8Array, fds?: number[]): Promise<void> {
    const status = decodeU64(await this.call(request, payload, { fds, needReply: true }));
    if (status !== 0n) throw new Error(`vhost-user frontend: request ${request} acked with ${status}`);
  }

  /** Resolves when the back-end has closed the connection (EOF), or rejects after `timeoutMs`. */
  closed(timeoutMs = 2000): Promise<void> {
    if (this.eof) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`vhost-user frontend: connection still open after ${timeoutMs} ms`)), timeoutMs);
      this.eofWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  get isClosedByPeer(): boolean {
    return this.eof;
  }

  /** Still open on this side. */
  get isOpen(): boolean {
    return this.open;
  }

  /** An eventfd closed together with this front-end. */
  eventFd(): EventFd {
    const e = EventFd.create();
    this.owned.push(e);
    return e;
  }

  close(): void {
    if (!this.open) return;
    this.open = false;
    this.watch?.stop();
    this.watch = null;
    libc.close(this.fd);
    for (const e of this.owned) e.close();
    for (const fd of this.receivedFds) libc.close(fd);
    this.receivedFds.length = 0;
  }

  // ---- the usual session --------------------------------------------------------------------

  async getFeatures(): Promise<bigint> {
    return decodeU64(await this.call(Request.GET_FEATURES));
  }

  async getProtocolFeatures(): Promise<bigint> {
    return decodeU64(await this.call(Request.GET_PROTOCOL_FEATURES));
  }

  /**
   * SET_OWNER, feature negotiation (all offered device features unless `features` is
   * given, with VHOST_USER_F_PROTOCOL_FEATURES), protocol features (MQ, REPLY_ACK,
   * CONFIG, RESET_DEVICE as offered). Returns the device features acked.
   */
  async negotiate(opts: { features?: bigint; protocolFeatures?: boolean } = {}): Promise<bigint> {
    this.send(Request.SET_OWNER);
    const offered = await this.getFeatures();
    const protocol = opts.protocolFeatures ?? true;
    if (protocol) {
      const offeredProtocol = await this.getProtocolFeatures();
      const wanted = offeredProtocol & (bit(PROTOCOL_F_MQ) | bit(PROTOCOL_F_REPLY_ACK) | bit(PROTOCOL_F_CONFIG) |
        bit(PROTOCOL_F_RESET_DEVICE));
      this.send(Request.SET_PROTOCOL_FEATURES, encodeU64(wanted));
    }
    const device = (opts.features ?? offered) & ~bit(VHOST_USER_F_PROTOCOL_FEATURES);
    this.send(Request.SET_FEATURES, encodeU64(device | (protocol ? bit(VHOST_USER_F_PROTOCOL_FEATURES) : 0n)));
    return device;
  }

  /** SET_MEM_TABLE with the given memories (whole), acknowledged through REPLY_ACK. */
  async setMemTable(memories: FrontendMemory[]): Promise<void> {
    await this.acked(Request.SET_MEM_TABLE, encodeMemoryTable(memories.map((m) => m.region())), memories.map((m) => m.fd));
  }

  /**
   * Configure ring `index` over the rings `queue` laid out in `memory`: NUM, BASE, ADDR,
   * KICK, CALL and (with protocol features) ENABLE. Returns the kick and call eventfds.
   */
  async setupRing(index: number, queue: DriverQueue, memory: FrontendMemory,
    opts: { base?: number; enable?: boolean } = {}): Promise<RingSetup> {
    const kick = this.eventFd();
    const call = this.eventFd();
    this.send(Request.SET_VRING_NUM, encodeVringState({ index, num: queue.size }));
    this.send(Request.SET_VRING_BASE, encodeVringState({ index, num: opts.base ?? 0 }));
    this.send(Request.SET_VRING_ADDR, encodeVringAddress({
      index, flags: 0,
      desc: memory.user(queue.descTable), used: memory.user(queue.usedRing), avail: memory.user(queue.availRing), log: 0n,
    }));
    this.send(Request.SET_VRING_KICK, encodeU64(BigInt(index)), { fds: [kick.fd] });
    this.send(Request.SET_VRING_CALL, encodeU64(BigInt(index)), { fds: [call.fd] });
    if (opts.enable ?? true) await this.acked(Request.SET_VRING_ENABLE, encodeVringState({ index, num: 1 }));
    return { kick, call };
  }

  /** GET_VRING_BASE: stops the ring; resolves with its next available index. */
  async getVringBase(index: number): Promise<number> {
    return decodeVringState(await this.call(Request.GET_VRING_BASE, encodeVringState({ index, num: 0 }))).num;
  }

  async getQueueNum(): Promise<number> {
    return Number(decodeU64(await this.call(Request.GET_QUEUE_NUM)));
  }

  async getConfig(offset: number, size: number): Promise<Uint8Array> {
    const reply = await this.call(Request.GET_CONFIG, encodeConfig({ offset, size, flags: 0, data: new Uint8Array(size) }));
    return decodeConfig(reply, 'GET_CONFIG reply').data.slice();
  }

  /** Mark the vring kick (SET_VRING_KICK with the no-fd flag is not this: that means "poll"). */
  static noFd(index: number): Uint8Array {
    return encodeU64(BigInt(index | VRING_NOFD));
  }

  // ---- reading ------------------------------------------------------------------------------

  private onReadable(): void {
    const chunk = new Uint8Array(4096);
    for (;;) {
      let got: ReturnType<typeof recvWithFds>;
      try {
        got = recvWithFds(this.fd, chunk, 8);
      } catch {
        this.hangUp();
        return;
      }
      if (got === null) break;
      this.receivedFds.push(...got.fds);
      if (got.bytes === 0) {
        this.hangUp();
        return;
      }
      const merged = new Uint8Array(this.buffer.length + got.bytes);
      merged.set(this.buffer);
      merged.set(chunk.subarray(0, got.bytes), this.buffer.length);
      this.buffer = merged;
    }
    while (this.buffer.length >= HEADER_SIZE) {
      const { request, flags, size } = decodeHeader(this.buffer);
      if (this.buffer.length < HEADER_SIZE + size) break;
      const reply = { request, flags, payload: this.buffer.slice(HEADER_SIZE, HEADER_SIZE + size) };
      this.buffer = this.buffer.slice(HEADER_SIZE + size);
      const waiter = this.waiters.shift();
      if (waiter) waiter.resolve(reply);
      else this.replies.push(reply);
    }
  }

  private hangUp(): void {
    this.eof = true;
    this.watch?.stop();
    this.watch = null;
    for (const w of this.waiters.splice(0)) w.reject(new Error('vhost-user frontend: back-end closed the connection'));
    for (const w of this.eofWaiters.splice(0)) w();
  }
}

/** Resolves with the next signal on `call` (an interrupt), or rejects after `timeoutMs`. */
export function nextCall(call: EventFd, timeoutMs = 2000): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      sub.unsubscribe();
      reject(new Error(`no call (interrupt) within ${timeoutMs} ms`));
    }, timeoutMs);
    const sub = fromEventFd(call).subscribe(() => {
      clearTimeout(timer);
      sub.unsubscribe();
      resolve();
    });
  });
}

/**
 * Kick ring and collect `count` completions, re-arming used_event before each wait as a
 * Linux driver does with EVENT_IDX (without it the device is right to stay silent).
 */
export async function kickAndCollect(q: DriverQueue, ring: RingSetup, count: number, timeoutMs = 2000): Promise<UsedElement[]> {
  const out: UsedElement[] = [];
  q.setUsedEvent(q.usedIdx());
  let called = nextCall(ring.call, timeoutMs);
  ring.kick.signal();
  for (;;) {
    await called;
    out.push(...q.takeUsed());
    if (out.length >= count) return out;
    // Single-threaded: nothing can be published between takeUsed and re-arming.
    q.setUsedEvent(q.usedIdx());
    called = nextCall(ring.call, timeoutMs);
  }
}

/** Open fds of this process (for leak checks). */
export function openFdCount(): number {
  return readdirSync('/proc/self/fd').length;
}
