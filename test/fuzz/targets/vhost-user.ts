// Fuzz target: vhost-user messages against the back-end (rng, and blk over an in-memory
// disk), each case one connection. A case interleaves steps of a valid session (owner,
// features, protocol features, memory table with or without holes, ring setup, I/O,
// GET_VRING_BASE, GET_CONFIG, queue count, RESET_DEVICE) with attacks: unknown requests,
// bad header flags, oversized or wrong-sized payloads, fds on requests that take none, too
// many or too few fds, fds of the wrong kind, malformed memory tables (overlaps, wrap-around,
// past 2^53, past the file, zero size, wrong counts), rings outside the table or straddling
// two regions, invalid ring sizes, indices and flags, hostile descriptors in guest memory,
// raw garbage and hang-ups mid-message.
// Invariants: no exception escapes; while every message so far was valid, each request is
// answered as the protocol says (replies, REPLY_ACK 0, I/O completes with the right
// lengths and statuses); an attack the protocol forbids closes the connection (reported as
// an error) and nothing else does; after every connection the back-end holds no fd and no
// mapping of it and accepts the next front-end; every 250 cases a clean session is served.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { firstValueFrom } from 'rxjs';
import { BlockDevice } from '../../../devices/block.ts';
import { RngDevice } from '../../../devices/rng.ts';
import { EventFd } from '../../../framework/eventfd.ts';
import { VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE } from '../../../framework/virtio/ring-layout.ts';
import * as libc from '../../../native/libc.ts';
import { socketPair } from '../../../native/unix-socket.ts';
import { VhostUserBackend } from '../../../transports/vhost-user/backend.ts';
import {
  FLAG_NEED_REPLY, FLAG_REPLY, FLAG_VERSION, PROTOCOL_F_CONFIG, PROTOCOL_F_REPLY_ACK, PROTOCOL_F_RESET_DEVICE, Request,
  VHOST_USER_F_PROTOCOL_FEATURES, VRING_NOFD, bit, decodeU64, encodeConfig, encodeHeader, encodeMemoryTable, encodeMessage,
  encodeU64, encodeVringAddress, encodeVringState, type MemoryRegionDescription,
} from '../../../transports/vhost-user/protocol.ts';
import { DriverQueue, type BufferSpec } from '../../support/driver-queue.ts';
import { MemoryBlockFile } from '../../support/fuzz-block-file.ts';
import type { FuzzStats, FuzzTarget } from '../../support/fuzz-engine.ts';
import type { Prng } from '../../support/prng.ts';
import { FrontendMemory, VhostUserFrontend, openFdCount, type RingSetup } from '../../support/vhost-user-frontend.ts';

const MEMORY = 0x40000; // two 128 KiB halves; rings and buffers live in the first
const RING_AREA = 0x10000;
const GAP_BASE = 0x10_0000; // where the upper half goes in a memory table with a hole
const TIMEOUT = 2000;

interface Served {
  kind: 'rng' | 'blk';
  backend: VhostUserBackend;
  file: MemoryBlockFile | null;
  queues: number;
  maxSize: number;
}

interface Junk {
  pipe: [number, number];
  sockets: [number, number];
  devNull: number;
  eventFds: EventFd[];
}

interface Context {
  dir: string;
  served: Served[];
  memory: FrontendMemory;
  junk: Junk;
  baselineFds: number;
  baselineMaps: number;
  cases: number;
}

class Violation extends Error {}
function check(cond: boolean, message: string): void {
  if (!cond) throw new Violation(message);
}

function withTimeout<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Violation(`${what}: nothing within ${ms} ms`)), ms);
    work.then((v) => { clearTimeout(timer); resolve(v); }, (e: unknown) => { clearTimeout(timer); reject(e); });
  });
}

function guestMappings(): number {
  return readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('rxvirt-test-guest')).length;
}

/** One connection's script: what was negotiated, and whether everything sent so far was valid. */
class Session {
  /** Every message so far was valid: answers are predictable. */
  certain = true;
  /** The back-end closed the connection (or we can no longer write to it). */
  dead = false;
  /** Message boundaries are where we think (no raw garbage was sent). */
  framing = true;
  /** The memory table has a hole between its two halves. */
  hole = false;
  deviceFeatures = 0n;
  stage = 0;
  protocolOffered = 0n;
  protocol = 0n;
  featuresOffered = 0n;
  protocolNegotiated = false;
  memorySet = false;
  readonly rings = new Map<number, { q: DriverQueue; setup: RingSetup; size: number }>();

  constructor(readonly f: VhostUserFrontend, readonly s: Served, readonly ctx: Context, readonly rng: Prng,
    readonly stats: FuzzStats) {}

  get replyAck(): boolean {
    return (this.protocol & bit(PROTOCOL_F_REPLY_ACK)) !== 0n;
  }

  /** Send raw bytes; a failure to send means the back-end already hung up. */
  sendRaw(bytes: Uint8Array, fds: number[] = []): void {
    if (this.dead) return;
    try {
      this.f.sendRaw(bytes, fds);
    } catch {
      this.dead = true;
      check(!this.certain, 'the back-end hung up on a valid session');
    }
  }

  send(request: number, payload: Uint8Array = new Uint8Array(0), opts: { fds?: number[]; flags?: number } = {}): void {
    this.sendRaw(encodeMessage(request, opts.flags ?? FLAG_VERSION, payload), opts.fds ?? []);
  }

  /** Send a request that has a reply and check it (code and payload size) when the session is certain. */
  async ask(request: number, payload?: Uint8Array, replySize?: number): Promise<Uint8Array | null> {
    this.send(request, payload);
    return this.answer(request, replySize);
  }

  async answer(request: number, replySize?: number): Promise<Uint8Array | null> {
    if (this.dead || !this.certain) return null; // nothing predictable to wait for
    try {
      const reply = await this.f.receive(TIMEOUT);
      if (this.certain) {
        check(reply.request === request, `reply to ${reply.request}, expected ${request}`);
        check(reply.flags === (FLAG_VERSION | FLAG_REPLY), `reply flags 0x${reply.flags.toString(16)}`);
        if (replySize !== undefined) check(reply.payload.length === replySize, `reply of ${reply.payload.length} bytes, expected ${replySize}`);
      }
      return reply.payload;
    } catch (err) {
      if (err instanceof Violation) throw err;
      this.dead = true;
      check(!this.certain, `valid request ${request} got no reply: ${(err as Error).message}`);
      return null;
    }
  }

  /** A valid request that changes state: with REPLY_ACK (sometimes asked for), its ack must be 0. */
  async act(request: number, payload?: Uint8Array, fds?: number[]): Promise<void> {
    const ack = this.replyAck && this.rng.chance(0.5);
    this.send(request, payload, { fds, flags: FLAG_VERSION | (ack ? FLAG_NEED_REPLY : 0) });
    if (!ack) return;
    const reply = await this.answer(request, 8);
    if (reply && this.certain) check(decodeU64(reply) === 0n, `REPLY_ACK ${decodeU64(reply)} for a valid request ${request}`);
  }

  /** Wait until the back-end has handled everything sent so far (a request that is answered in order). */
  async barrier(): Promise<void> {
    await this.ask(Request.GET_QUEUE_NUM, undefined, 8);
  }

  /** The back-end must drop the connection now (when the state made that certain). */
  async expectDropped(what: string, certainOnly = false): Promise<void> {
    this.stats.count(`attack: ${what}`);
    if (!this.certain && (certainOnly || !this.framing)) return; // the outcome depends on what we no longer know
    try {
      await this.f.closed(TIMEOUT);
    } catch {
      throw new Violation(`the back-end did not drop the connection after: ${what}`);
    }
    this.dead = true;
    this.stats.count('connection dropped');
  }

  /** Something the protocol leaves open: from now on answers are not predictable. */
  unsure(what: string): void {
    this.stats.count(`ambiguous: ${what}`);
    this.certain = false;
  }

  // ---- a valid session, one step at a time --------------------------------------------------

  async step(): Promise<void> {
    const rng = this.rng;
    switch (this.stage) {
      case 0:
        this.send(Request.SET_OWNER);
        this.stage++;
        return;
      case 1: {
        const reply = await this.ask(Request.GET_FEATURES, undefined, 8);
        if (reply) this.featuresOffered = decodeU64(reply);
        if (this.certain) check((this.featuresOffered & bit(VHOST_USER_F_PROTOCOL_FEATURES)) !== 0n, 'PROTOCOL_FEATURES not offered');
        this.stage++;
        return;
      }
      case 2: {
        if (rng.chance(0.85)) {
          const reply = await this.ask(Request.GET_PROTOCOL_FEATURES, undefined, 8);
          if (reply) this.protocolOffered = decodeU64(reply);
          this.protocol = this.protocolOffered & (rng.chance(0.8) ? ~0n : BigInt(rng.u32()));
          this.send(Request.SET_PROTOCOL_FEATURES, encodeU64(this.protocol));
          this.protocolNegotiated = true;
        }
        this.stage++;
        return;
      }
      case 3: {
        const device = this.featuresOffered & ~bit(VHOST_USER_F_PROTOCOL_FEATURES) & (rng.chance(0.8) ? ~0n : BigInt(rng.u32()) | (1n << 32n));
        const features = device | (this.protocolNegotiated ? bit(VHOST_USER_F_PROTOCOL_FEATURES) : 0n);
        this.deviceFeatures = device;
        await this.act(Request.SET_FEATURES, encodeU64(features));
        this.stage++;
        return;
      }
      case 4: {
        const m = this.ctx.memory;
        const regions = rng.chance(0.7) ? [m.region()]
          : [m.region(0, MEMORY / 2), { ...m.region(MEMORY / 2, MEMORY / 2), guestAddress: BigInt(GAP_BASE + RING_AREA * rng.int(4)) }];
        this.hole = regions.length === 2;
        if (this.hole) this.stats.count('memory table with a hole');
        await this.act(Request.SET_MEM_TABLE, encodeMemoryTable(regions), regions.map(() => m.fd));
        this.memorySet = true;
        this.stage++;
        return;
      }
      default:
        return this.laterStep();
    }
  }

  private async laterStep(): Promise<void> {
    const rng = this.rng;
    const r = rng.int(100);
    if (r < 35 || this.rings.size === 0) return this.setupRing(rng.int(this.s.queues));
    if (r < 75) return this.io();
    if (r < 82) {
      const reply = await this.ask(Request.GET_QUEUE_NUM, undefined, 8);
      if (reply && this.certain) check(decodeU64(reply) === BigInt(this.s.queues), `GET_QUEUE_NUM ${decodeU64(reply)}`);
      return;
    }
    if (r < 88 && this.protocol & bit(PROTOCOL_F_CONFIG)) {
      const size = rng.int(0, 64);
      const reply = await this.ask(Request.GET_CONFIG, encodeConfig({ offset: rng.int(64), size, flags: 0, data: new Uint8Array(size) }), 12 + size);
      if (reply) this.stats.count('GET_CONFIG answered');
      return;
    }
    if (r < 94) {
      const index = rng.pick([...this.rings.keys()]);
      const ring = this.rings.get(index)!;
      const reply = await this.ask(Request.GET_VRING_BASE, encodeVringState({ index, num: 0 }), 8);
      this.rings.delete(index);
      if (reply && this.certain) {
        // Every chain taken has completed into the ring: the next index is the used index.
        const base = new DataView(reply.buffer, reply.byteOffset).getUint32(4, true);
        check(base === ring.q.usedIdx(), `GET_VRING_BASE ${base} but used.idx ${ring.q.usedIdx()}`);
        this.stats.count('GET_VRING_BASE answered');
      }
      return;
    }
    if (this.protocol & bit(PROTOCOL_F_RESET_DEVICE)) {
      await this.act(Request.RESET_DEVICE);
      // The rings' memory is reused next: wait until the back-end has really let go of it.
      await this.barrier();
      this.rings.clear();
      this.stage = 3; // features and memory must be set again
      this.stats.count('RESET_DEVICE');
    }
  }

  private async setupRing(index: number): Promise<void> {
    const rng = this.rng;
    if (this.rings.has(index)) return;
    const size = Math.min(this.s.maxSize, 1 << rng.int(1, 5));
    const base = index * RING_AREA;
    const q = new DriverQueue(this.ctx.memory.guest, { size, base, dataEnd: base + RING_AREA });
    const m = this.ctx.memory;
    const kick = this.f.eventFd(), call = this.f.eventFd();
    this.send(Request.SET_VRING_NUM, encodeVringState({ index, num: size }));
    this.send(Request.SET_VRING_BASE, encodeVringState({ index, num: 0 }));
    this.send(Request.SET_VRING_ADDR, encodeVringAddress({
      index, flags: 0, desc: m.user(q.descTable), used: m.user(q.usedRing), avail: m.user(q.availRing), log: 0n,
    }));
    this.send(Request.SET_VRING_KICK, encodeU64(BigInt(index)), { fds: [kick.fd] });
    this.send(Request.SET_VRING_CALL, encodeU64(BigInt(index)), { fds: [call.fd] });
    if (rng.chance(0.3)) {
      const err = this.f.eventFd();
      this.send(Request.SET_VRING_ERR, encodeU64(BigInt(index)), { fds: [err.fd] });
    }
    if (this.protocolNegotiated) await this.act(Request.SET_VRING_ENABLE, encodeVringState({ index, num: 1 }));
    this.rings.set(index, { q, setup: { kick, call }, size });
    this.stats.count('ring set up');
  }

  /** Valid requests on a ring; with a certain session they must all complete, correctly. */
  private async io(): Promise<void> {
    const rng = this.rng;
    const index = rng.pick([...this.rings.keys()]);
    const { q, setup } = this.rings.get(index)!;
    q.takeUsed();
    const n = Math.min(q.freeDescriptors >> 2, rng.int(1, 4));
    const expected = new Map<number, number>();
    for (let i = 0; i < n; i++) {
      const { specs, len } = this.request(index);
      try {
        const indirect = (this.deviceFeatures & bit(28)) !== 0n && rng.chance(0.2); // VIRTIO_F_INDIRECT_DESC
        expected.set(q.addChain(specs, { indirect }), len);
      } catch {
        break;
      }
    }
    if (expected.size === 0) return;
    q.setUsedEvent(q.usedIdx());
    setup.kick.signal();
    if (!this.certain) return;
    const deadline = Date.now() + TIMEOUT;
    const done = new Map<number, number>();
    while (done.size < expected.size) {
      for (const u of q.takeUsed()) done.set(u.id, u.len);
      if (done.size >= expected.size) break;
      if (this.f.isClosedByPeer) throw new Violation('the back-end hung up during valid I/O');
      if (Date.now() > deadline) throw new Violation(`${expected.size - done.size} of ${expected.size} valid requests never completed`);
      await new Promise((r) => setImmediate(r));
    }
    for (const [id, len] of expected) check(done.get(id) === len, `request ${id}: used len ${done.get(id)}, expected ${len}`);
    this.stats.count('I/O completed');
  }

  private request(index: number): { specs: BufferSpec[]; len: number } {
    const rng = this.rng;
    if (this.s.kind === 'rng') {
      const len = rng.int(1, 256);
      return { specs: [{ writableLen: len }], len };
    }
    void index;
    const capacity = this.s.file!.size / 512;
    const sectors = rng.int(1, 4);
    const sector = rng.int(capacity - sectors);
    const header = new Uint8Array(16);
    const v = new DataView(header.buffer);
    const read = rng.chance(0.5);
    v.setUint32(0, read ? 0 : 1, true);
    v.setBigUint64(8, BigInt(sector), true);
    return read
      ? { specs: [{ data: header }, { writableLen: 512 * sectors }, { writableLen: 1 }], len: 512 * sectors + 1 }
      : { specs: [{ data: header }, { data: new Uint8Array(512 * sectors).fill(sector & 0xff) }, { writableLen: 1 }], len: 1 };
  }

  // ---- attacks ------------------------------------------------------------------------------

  async attack(): Promise<void> {
    const rng = this.rng;
    const junk = this.ctx.junk;
    const someFds = (n: number) => Array.from({ length: n }, () => rng.pick([
      junk.eventFds[rng.int(junk.eventFds.length)]!.fd, junk.pipe[0], junk.sockets[1], junk.devNull, this.ctx.memory.fd,
    ]));
    const header = (request: number, flags: number, size: number) => {
      const h = new Uint8Array(12);
      encodeHeader(h, { request, flags, size });
      return h;
    };
    const m = this.ctx.memory;
    switch (rng.int(22)) {
      case 0: {
        const request = rng.pick([0, 6, 7, 19, 20, 21, 22, 23, 26, 27, 31, 33, 35, 40, 0xffff_ffff, rng.u32() | 0x100]);
        this.send(request, rng.chance(0.5) ? new Uint8Array(rng.int(0, 64)) : undefined);
        return this.expectDropped('unknown request');
      }
      case 1: {
        const flags = rng.pick([0, 2, 3, FLAG_VERSION | FLAG_REPLY, FLAG_VERSION | 0x10, FLAG_VERSION | 0x8000_0000]);
        this.sendRaw(header(Request.GET_FEATURES, flags, 0));
        return this.expectDropped('bad header flags');
      }
      case 2:
        this.sendRaw(header(Request.SET_MEM_TABLE, FLAG_VERSION, 4097 + rng.int(1 << 20)));
        return this.expectDropped('oversized payload');
      case 3: {
        const [request, size] = rng.pick([[Request.SET_FEATURES, 8], [Request.SET_VRING_NUM, 8], [Request.SET_VRING_ADDR, 40],
          [Request.GET_FEATURES, 0], [Request.SET_VRING_KICK, 8], [Request.RESET_DEVICE, 0]] as const);
        const wrong = rng.pick([0, 1, size - 1, size + 1, size + 8].filter((x) => x !== size && x >= 0));
        this.send(request, new Uint8Array(wrong));
        return this.expectDropped('wrong payload size');
      }
      case 4:
        this.send(rng.pick([Request.SET_FEATURES, Request.SET_VRING_NUM]), new Uint8Array(8), { fds: someFds(rng.int(1, 3)) });
        return this.expectDropped('fds on a request that takes none');
      case 5:
        this.send(Request.SET_VRING_CALL, encodeU64(0n), { fds: someFds(rng.int(9, 12)) });
        return this.expectDropped('more fds than a message may carry');
      case 6: {
        const request = rng.pick([Request.SET_VRING_KICK, Request.SET_VRING_CALL, Request.SET_VRING_ERR]);
        const noFd = rng.chance(0.5);
        this.send(request, encodeU64(noFd ? BigInt(VRING_NOFD) : 0n), { fds: someFds(noFd ? 1 : rng.pick([0, 2])) });
        return this.expectDropped('wrong fd count on a ring notifier');
      }
      case 7:
        this.send(rng.pick([Request.SET_VRING_KICK, Request.SET_VRING_CALL]), encodeU64(0n),
          { fds: [rng.pick([junk.pipe[0], junk.sockets[1], junk.devNull, m.fd])] });
        return this.expectDropped('notifier fd that is not an eventfd');
      case 8:
        this.send(Request.SET_VRING_KICK, encodeU64(BigInt(rng.pick([0x200, 0x1000, 0x8000_0000]))), { fds: [junk.eventFds[0]!.fd] });
        return this.expectDropped('reserved bits in a notifier index');
      case 9:
        this.send(rng.pick([Request.SET_VRING_NUM, Request.SET_VRING_BASE, Request.GET_VRING_BASE]),
          encodeVringState({ index: this.s.queues + rng.int(300), num: 4 }));
        return this.expectDropped('ring index out of range');
      case 10:
        this.send(Request.SET_VRING_NUM, encodeVringState({ index: 0, num: rng.pick([0, 3, 6, this.s.maxSize * 2, 0xffff_ffff]) }));
        return this.expectDropped('invalid ring size');
      case 11:
        this.send(Request.SET_VRING_ADDR, encodeVringAddress({ index: 0, flags: rng.pick([1, 2, 0x8000_0000]), desc: 0n, used: 0n, avail: 0n, log: 0n }));
        return this.expectDropped('ring address flags (dirty log)');
      case 12: {
        const { regions, fds, what } = this.badMemoryTable();
        this.send(Request.SET_MEM_TABLE, regions, { fds });
        return this.expectDropped(`memory table: ${what}`);
      }
      case 13: {
        // Ring areas outside the memory table, or straddling the two halves of a table with a hole.
        const index = rng.int(this.s.queues);
        if (this.rings.has(index)) return;
        const spot = rng.pick([m.userAddress + BigInt(MEMORY), m.userAddress - 4096n, (1n << 64n) - 64n, 0n,
          ...(this.hole ? [m.userAddress + BigInt(MEMORY / 2 - 32)] : [])]); // straddles the two halves
        this.send(Request.SET_VRING_NUM, encodeVringState({ index, num: 4 }));
        this.send(Request.SET_VRING_ADDR, encodeVringAddress({ index, flags: 0, desc: spot, used: m.user(0x8000), avail: m.user(0x9000), log: 0n }));
        // Refused at once when a memory table is known; otherwise when the next table arrives.
        if (this.memorySet) return this.expectDropped('ring outside the memory table', true);
        this.unsure('ring addresses before any memory table');
        return;
      }
      case 14: {
        // A guest that builds a descriptor loop or points outside memory, behind a valid front-end.
        const running = [...this.rings.keys()];
        if (running.length === 0 || !this.certain) return;
        const index = rng.pick(running);
        const { q, setup } = this.rings.get(index)!;
        const buf = q.alloc(64);
        if (rng.chance(0.5)) {
          q.writeDescriptor(0, { addr: buf, len: 16, flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, next: 1 % q.size });
          if (q.size > 1) q.writeDescriptor(1, { addr: buf, len: 16, flags: VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, next: 0 });
        } else {
          // Outside every region; the upper half's guest addresses are a hole when the table has one.
          const outside = [1 << 30, 2 ** 53 - 8, ...(this.hole ? [MEMORY / 2 + 0x100] : [])];
          q.writeDescriptor(0, { addr: rng.pick(outside), len: 64, flags: VIRTQ_DESC_F_WRITE, next: 0 });
        }
        q.offer(0);
        setup.kick.signal();
        return this.expectDropped('hostile descriptors in guest memory', true);
      }
      case 15: {
        const bytes = new Uint8Array(rng.int(1, 40));
        for (let i = 0; i < bytes.length; i++) bytes[i] = rng.int(256);
        this.sendRaw(bytes);
        this.framing = false;
        this.unsure('raw garbage');
        return;
      }
      case 16: {
        // Half a message, then hang up.
        const msg = encodeMessage(Request.SET_FEATURES, FLAG_VERSION, encodeU64(0n));
        this.sendRaw(msg.subarray(0, rng.int(1, msg.length - 1)));
        this.f.close();
        this.dead = true;
        this.stats.count('attack: hang-up mid-message');
        return;
      }
      case 17:
        this.send(Request.SET_FEATURES, encodeU64(~(this.featuresOffered | bit(VHOST_USER_F_PROTOCOL_FEATURES)) & (1n << BigInt(rng.int(64)))));
        this.unsure('SET_FEATURES with a random bit');
        return;
      case 18:
        this.send(Request.SET_VRING_BASE, encodeVringState({ index: rng.int(this.s.queues), num: 0x10000 + rng.int(0xffff) }));
        return this.expectDropped('ring base past 65535', true);
      case 19:
        if (this.protocol & bit(PROTOCOL_F_RESET_DEVICE)) return;
        this.send(Request.RESET_DEVICE);
        return this.expectDropped('RESET_DEVICE not negotiated', true);
      case 20: {
        const size = rng.pick([257, 4000, 0xffff_ffff]);
        const p = new Uint8Array(12 + Math.min(size, 300));
        new DataView(p.buffer).setUint32(4, size, true);
        this.send(rng.pick([Request.GET_CONFIG, Request.SET_CONFIG]), p);
        return this.expectDropped('config access larger than allowed', true);
      }
      default:
        this.send(Request.SET_PROTOCOL_FEATURES, encodeU64(1n << BigInt(rng.int(20, 63))));
        return this.expectDropped('protocol feature not offered');
    }
  }

  private badMemoryTable(): { regions: Uint8Array; fds: number[]; what: string } {
    const rng = this.rng;
    const m = this.ctx.memory;
    const half = MEMORY / 2;
    const a = m.region(0, half), b = m.region(half, half);
    const kinds: [string, MemoryRegionDescription[], number[]][] = [
      ['zero-size region', [{ ...a, size: 0n }], [m.fd]],
      ['overlap in guest space', [a, { ...b, guestAddress: a.guestAddress + 4096n }], [m.fd, m.fd]],
      ['overlap in front-end space', [a, { ...b, userAddress: a.userAddress + 4096n, guestAddress: 1n << 30n }], [m.fd, m.fd]],
      ['guest range past 2^53', [{ ...a, guestAddress: (1n << 53n) - 4096n }], [m.fd]],
      ['user range wraps 2^64', [{ ...a, userAddress: (1n << 64n) - 4096n }], [m.fd]],
      ['region past the end of its file', [{ ...a, size: BigInt(MEMORY) * 4n }], [m.fd]],
      ['mmap offset past the file', [{ ...a, size: 4096n, mmapOffset: 1n << 40n }], [m.fd]],
      ['offset wraps 2^64', [{ ...a, mmapOffset: (1n << 64n) - 4096n }], [m.fd]],
      ['fewer fds than regions', [a, b], [m.fd]],
      ['more fds than regions', [a], [m.fd, m.fd]],
      ['fd that is not memory', [a], [rng.pick([this.ctx.junk.pipe[0], this.ctx.junk.devNull, this.ctx.junk.eventFds[0]!.fd, this.ctx.junk.sockets[1]])]],
      ['guest address and offset misaligned', [{ ...a, guestAddress: 3n }], [m.fd]],
    ];
    const [what, regions, fds] = rng.pick(kinds);
    let payload = encodeMemoryTable(regions);
    if (rng.chance(0.15)) {
      const count = rng.pick([0, 9, 100]);
      new DataView(payload.buffer).setUint32(0, count, true);
      return { regions: payload, fds, what: `${count} regions` };
    }
    if (rng.chance(0.1)) {
      payload = payload.subarray(0, payload.length - rng.int(1, 31));
      return { regions: payload, fds, what: 'payload shorter than its count' };
    }
    return { regions: payload, fds, what };
  }
}

async function cleanSession(ctx: Context, s: Served): Promise<void> {
  const f = VhostUserFrontend.connect(s.backend.socketPath);
  const gone = firstValueFrom(s.backend.disconnected$);
  try {
    await f.negotiate();
    await f.setMemTable([ctx.memory]);
    const q = new DriverQueue(ctx.memory.guest, { size: 8, base: 0, dataEnd: RING_AREA });
    const ring = await f.setupRing(0, q, ctx.memory);
    q.addChain(s.kind === 'rng' ? [{ writableLen: 16 }] : [{ data: new Uint8Array(16) }, { writableLen: 512 }, { writableLen: 1 }]);
    q.setUsedEvent(0);
    ring.kick.signal();
    const deadline = Date.now() + TIMEOUT;
    let used = q.takeUsed();
    while (used.length === 0 && Date.now() < deadline) {
      await new Promise((r) => setImmediate(r));
      used = q.takeUsed();
    }
    check(used.length === 1 && used[0]!.len === (s.kind === 'rng' ? 16 : 513), `a clean session after the attacks was not served (${JSON.stringify(used)})`);
  } finally {
    f.close();
    await withTimeout(gone, TIMEOUT, 'teardown of a clean session');
  }
}

export const vhostUserTarget: FuzzTarget<Context> = {
  name: 'vhost-user',
  summary: 'vhost-user sessions with protocol attacks against rng and blk back-ends (one connection per case)',
  budget: 20000,
  caseTimeoutMs: 5000,
  async open() {
    const dir = mkdtempSync(join(tmpdir(), 'rxvirt-fuzz-vu-'));
    const file = new MemoryBlockFile(64 * 512, false, true);
    // Over vhost-user the front-end picks ring sizes, up to the back-end's queueSizeMax.
    const queueSizeMax = 1024;
    const served: Served[] = [
      { kind: 'rng', backend: new VhostUserBackend(new RngDevice(), { socketPath: join(dir, 'rng.sock'), queueSizeMax }), file: null, queues: 1, maxSize: queueSizeMax },
      { kind: 'blk', backend: new VhostUserBackend(new BlockDevice(file), { socketPath: join(dir, 'blk.sock'), queueSizeMax }), file, queues: 1, maxSize: queueSizeMax },
    ];
    for (const s of served) s.backend.listen();
    const memory = FrontendMemory.create(MEMORY);
    const junk: Junk = {
      pipe: libc.pipe(),
      sockets: socketPair(),
      devNull: libc.open('/dev/null', libc.O_RDWR),
      eventFds: [EventFd.create(), EventFd.create()],
    };
    const ctx: Context = { dir, served, memory, junk, baselineFds: 0, baselineMaps: 0, cases: 0 };
    for (const s of served) await cleanSession(ctx, s); // warm-up: lazily created runtime fds are not leaks
    ctx.baselineFds = openFdCount();
    ctx.baselineMaps = guestMappings();
    return ctx;
  },
  async close(ctx) {
    for (const s of ctx.served) await cleanSession(ctx, s);
    for (const s of ctx.served) await s.backend.close();
    libc.close(ctx.junk.pipe[0]);
    libc.close(ctx.junk.pipe[1]);
    libc.close(ctx.junk.sockets[0]);
    libc.close(ctx.junk.sockets[1]);
    libc.close(ctx.junk.devNull);
    for (const e of ctx.junk.eventFds) e.close();
    ctx.memory.close();
    rmSync(ctx.dir, { recursive: true, force: true });
  },
  async run(rng, ctx, stats) {
    const s = rng.pick(ctx.served);
    ctx.memory.guest.regions[0]!.bytes.fill(0);
    const f = VhostUserFrontend.connect(s.backend.socketPath);
    const gone = firstValueFrom(s.backend.disconnected$);
    const session = new Session(f, s, ctx, rng, stats);
    stats.count(`back-end: ${s.kind}`);
    try {
      const steps = rng.int(1, 16);
      const attackRate = rng.pick([0.05, 0.2, 0.5]);
      for (let i = 0; i < steps && !session.dead; i++) {
        if (rng.chance(attackRate)) await session.attack();
        else await session.step();
      }
      if (!session.dead && session.certain) stats.count('valid session completed');
    } finally {
      f.close();
      const close = await withTimeout(gone, TIMEOUT, 'connection teardown');
      if (session.dead && session.certain) check(close.error, `a dropped connection not reported as an error: ${close.reason}`);
    }
    check(!s.backend.isConnected, 'the back-end still holds the connection');
    check(openFdCount() === ctx.baselineFds, `fds after the connection: ${openFdCount()}, before: ${ctx.baselineFds}`);
    if (++ctx.cases % 16 === 0) check(guestMappings() === ctx.baselineMaps, `guest memory still mapped after teardown (${guestMappings()} mappings)`);
    if (s.file) check(s.file.outOfRange.length === 0, `blk issued I/O outside its image: ${s.file.outOfRange[0]}`);
    if (ctx.cases % 250 === 0) await cleanSession(ctx, s);
  },
  checkCoverage(stats) {
    stats.require('valid session completed', 'connection dropped', 'I/O completed', 'ring set up', 'memory table with a hole',
      'GET_VRING_BASE answered', 'GET_CONFIG answered', 'RESET_DEVICE', 'attack: hostile descriptors in guest memory',
      'attack: ring outside the memory table', 'attack: hang-up mid-message', 'back-end: rng', 'back-end: blk');
  },
};
