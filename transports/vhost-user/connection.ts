// One front-end connection: reads messages in order from the main event loop,
// applies each to the device state (features, memory table, vrings, config),
// answers GET_* requests and REPLY_ACK, and maps kick fds to queue notifications
// and used-buffer interrupts to call fds. Any protocol fault ends the connection
// with one reason; teardown stops the rings (waiting for in-flight I/O), resets
// the device, unmaps guest memory and closes every fd it received.

import type { Subscription } from 'rxjs';
import { fromEventFd, type EventFd } from '../../framework/eventfd.ts';
import type { GuestMemory } from '../../framework/guest-memory.ts';
import { warn } from '../../framework/log.ts';
import { watchFd, type FdWatch } from '../../native/fd-watch.ts';
import * as libc from '../../native/libc.ts';
import { sendWithFds } from '../../native/unix-socket.ts';
import type { VirtioDeviceState } from '../../framework/virtio/device-state.ts';
import { VIRTIO_F_EVENT_IDX, hasFeature } from '../../framework/virtio/constants.ts';
import { availRingBytes, descTableBytes, isValidQueueSize, usedRingBytes } from '../../framework/virtio/ring-layout.ts';
import { MemoryTable } from './memory-table.ts';
import { MessageReader, type Message } from './message-reader.ts';
import {
  FLAG_NEED_REPLY, FLAG_REPLY, FLAG_VERSION, PROTOCOL_F_CONFIG, PROTOCOL_F_MQ, PROTOCOL_F_REPLY_ACK,
  PROTOCOL_F_RESET_DEVICE, Request, U64_SIZE, VHOST_USER_F_PROTOCOL_FEATURES, VRING_ADDR_SIZE, VRING_INDEX_MASK,
  VRING_NOFD, VRING_STATE_SIZE, VhostUserProtocolError, bit, decodeConfig, decodeMemoryTable, decodeU64,
  decodeVringAddress, decodeVringState, encodeConfig, encodeMessage, encodeU64, encodeVringState, protocolError,
  requestName,
} from './protocol.ts';
import { Vring, adoptEventFd } from './vring.ts';

/** Protocol features this back-end implements; CONFIG only for devices that have a config space. */
export function offeredProtocolFeatures(configSize: number): bigint {
  const always = bit(PROTOCOL_F_MQ) | bit(PROTOCOL_F_REPLY_ACK) | bit(PROTOCOL_F_RESET_DEVICE);
  return configSize > 0 ? always | bit(PROTOCOL_F_CONFIG) : always;
}

const PROTOCOL_FEATURES_BIT = bit(VHOST_USER_F_PROTOCOL_FEATURES);

/** Exact payload sizes of fixed-size requests; variable ones are checked by their handler. */
const PAYLOAD_SIZE: ReadonlyMap<number, number> = new Map([
  [Request.GET_FEATURES, 0],
  [Request.SET_FEATURES, U64_SIZE],
  [Request.SET_OWNER, 0],
  [Request.RESET_OWNER, 0],
  [Request.SET_VRING_NUM, VRING_STATE_SIZE],
  [Request.SET_VRING_ADDR, VRING_ADDR_SIZE],
  [Request.SET_VRING_BASE, VRING_STATE_SIZE],
  [Request.GET_VRING_BASE, VRING_STATE_SIZE],
  [Request.SET_VRING_KICK, U64_SIZE],
  [Request.SET_VRING_CALL, U64_SIZE],
  [Request.SET_VRING_ERR, U64_SIZE],
  [Request.GET_PROTOCOL_FEATURES, 0],
  [Request.SET_PROTOCOL_FEATURES, U64_SIZE],
  [Request.GET_QUEUE_NUM, 0],
  [Request.SET_VRING_ENABLE, VRING_STATE_SIZE],
  [Request.RESET_DEVICE, 0],
]);

/** Every request this back-end serves. */
const KNOWN = new Set<number>([...PAYLOAD_SIZE.keys(), Request.SET_MEM_TABLE, Request.GET_CONFIG, Request.SET_CONFIG]);

/** Requests whose reply is their answer (REPLY_ACK adds nothing to them). */
const ANSWERED = new Set<number>([
  Request.GET_FEATURES, Request.GET_PROTOCOL_FEATURES, Request.GET_QUEUE_NUM, Request.GET_VRING_BASE, Request.GET_CONFIG,
]);

export interface ConnectionClose {
  reason: string;
  /** false for an orderly end (the front-end hung up between messages, or the back-end shut down). */
  error: boolean;
}

export interface ConnectionOptions {
  /** Log scope. */
  name: string;
  /** Called once teardown has finished (rings stopped, device reset, memory unmapped, fds closed). */
  onClosed: (close: ConnectionClose) => void;
  /** Called with the reason as soon as the connection starts closing (before teardown); for logging. */
  onClosing: (close: ConnectionClose, alreadyLogged: boolean) => void;
}

export class VhostUserConnection {
  private readonly reader: MessageReader;
  private readonly vrings: Vring[];
  private watch: FdWatch | null = null;
  private memoryTable: MemoryTable | null = null;
  private protocolFeatures = 0n;
  private readonly offeredProtocol: bigint;
  private featuresNegotiated = false;
  private pending: Promise<void> | null = null;
  private closing: Promise<void> | null = null;
  private socketOpen = true;

  constructor(
    private readonly socket: number,
    private readonly state: VirtioDeviceState,
    private readonly options: ConnectionOptions,
  ) {
    this.reader = new MessageReader(socket);
    this.vrings = state.queues.map((q, i) => new Vring(i, q.maxSize));
    this.offeredProtocol = offeredProtocolFeatures(state.device.config.size);
  }

  /** Guest memory as the front-end described it (null before SET_MEM_TABLE). */
  get memory(): GuestMemory | null {
    return this.memoryTable?.guest ?? null;
  }

  get isClosing(): boolean {
    return this.closing !== null;
  }

  start(): void {
    this.resume();
  }

  /** Interrupt for queue `index` (the device kit's InterruptSink.usedBuffer). */
  signalUsed(index: number): void {
    const call = this.vrings[index]?.call;
    if (!call) return; // the front-end polls (or has not set a call fd yet)
    try {
      call.signal();
    } catch (err) {
      this.fail(`ring ${index} call fd: ${describe(err)}`);
    }
  }

  /** The device hit DEVICE_NEEDS_RESET (already logged by the device state): tell the front-end and hang up. */
  deviceFailed(reason: string): void {
    for (const ring of this.vrings) {
      try {
        ring.err?.signal();
      } catch {
        // the connection is going away anyway
      }
    }
    this.beginClose({ reason: `device needs reset: ${reason}`, error: true }, true);
  }

  /** Orderly close from the back-end side; resolves when teardown is complete. */
  close(reason = 'back-end shutting down'): Promise<void> {
    return this.beginClose({ reason, error: false }, false);
  }

  // ---- reading ------------------------------------------------------------------------------

  private resume(): void {
    if (this.closing || this.watch) return;
    try {
      this.watch = watchFd(this.socket, { readable: true }, (ev) => {
        if (ev.error && !ev.readable) {
          this.fail('socket error');
          return;
        }
        this.pump();
      });
    } catch (err) {
      this.fail(`cannot watch the socket: ${describe(err)}`);
      return;
    }
    this.pump(); // bytes may already be waiting (messages that arrived while a request was pending)
  }

  private pause(): void {
    this.watch?.stop();
    this.watch = null;
  }

  /** Handle every complete message; pause while an asynchronous request is in progress. */
  private pump(): void {
    while (!this.closing && !this.pending) {
      let message: ReturnType<MessageReader['next']>;
      try {
        message = this.reader.next();
      } catch (err) {
        this.fail(describe(err));
        return;
      }
      if (message === 'again') return;
      if (message === 'eof') {
        this.beginClose({ reason: 'front-end disconnected', error: false }, false);
        return;
      }
      this.dispatch(message);
    }
  }

  private dispatch(message: Message): void {
    const claimed = new Set<number>();
    const finish = (err?: unknown) => {
      for (const fd of message.fds) if (!claimed.has(fd)) closeQuietly(fd);
      if (err !== undefined) {
        this.fail(describe(err));
        return;
      }
      if (!this.closing && message.flags & FLAG_NEED_REPLY && this.has(PROTOCOL_F_REPLY_ACK) && !ANSWERED.has(message.request)) {
        this.reply(message.request, encodeU64(0n));
      }
    };
    let result: void | Promise<void>;
    try {
      result = this.handle(message, claimed);
    } catch (err) {
      finish(err);
      return;
    }
    if (!(result instanceof Promise)) {
      finish();
      return;
    }
    this.pause();
    this.pending = result.then(
      () => finish(),
      (err: unknown) => finish(err),
    ).finally(() => {
      this.pending = null;
      if (!this.closing) this.resume();
    });
  }

  // ---- requests -----------------------------------------------------------------------------

  private handle(message: Message, claimed: Set<number>): void | Promise<void> {
    const { request, payload, fds } = message;
    const name = requestName(request);
    if (!KNOWN.has(request)) protocolError('ENOSYS', `unknown or unsupported request ${request} (${name})`);
    const expected = PAYLOAD_SIZE.get(request);
    if (expected !== undefined && payload.length !== expected) {
      protocolError('EPROTO', `${name} with ${payload.length} payload bytes (expected ${expected})`);
    }
    const fdsAllowed = request === Request.SET_MEM_TABLE || request === Request.SET_VRING_KICK ||
      request === Request.SET_VRING_CALL || request === Request.SET_VRING_ERR;
    if (!fdsAllowed && fds.length > 0) protocolError('EBADF', `${name} carries ${fds.length} unexpected fds`);

    switch (request) {
      case Request.GET_FEATURES:
        return this.reply(request, encodeU64(this.state.offeredFeatures | PROTOCOL_FEATURES_BIT));
      case Request.SET_FEATURES:
        return this.setFeatures(decodeU64(payload));
      case Request.GET_PROTOCOL_FEATURES:
        return this.reply(request, encodeU64(this.offeredProtocol));
      case Request.SET_PROTOCOL_FEATURES: {
        const wanted = decodeU64(payload);
        if (wanted & ~this.offeredProtocol) {
          protocolError('EINVAL', `SET_PROTOCOL_FEATURES 0x${wanted.toString(16)} names features not offered`);
        }
        this.protocolFeatures = wanted;
        return;
      }
      case Request.SET_OWNER:
        return;
      case Request.RESET_OWNER:
        // Deprecated; the spec recommends treating it as "disable all rings" and nothing more.
        return this.stopAllRings();
      case Request.RESET_DEVICE:
        if (!this.has(PROTOCOL_F_RESET_DEVICE)) protocolError('EPROTO', 'RESET_DEVICE without VHOST_USER_PROTOCOL_F_RESET_DEVICE');
        return this.resetDevice();
      case Request.GET_QUEUE_NUM:
        return this.reply(request, encodeU64(BigInt(this.vrings.length)));
      case Request.SET_MEM_TABLE:
        return this.setMemTable(payload, fds);
      case Request.SET_VRING_NUM:
        return this.setVringNum(decodeVringState(payload));
      case Request.SET_VRING_ADDR:
        return this.setVringAddr(payload);
      case Request.SET_VRING_BASE:
        return this.setVringBase(decodeVringState(payload));
      case Request.GET_VRING_BASE:
        return this.getVringBase(decodeVringState(payload).index);
      case Request.SET_VRING_KICK:
      case Request.SET_VRING_CALL:
      case Request.SET_VRING_ERR:
        return this.setVringFd(request, decodeU64(payload), fds, claimed);
      case Request.SET_VRING_ENABLE:
        return this.setVringEnable(decodeVringState(payload));
      case Request.GET_CONFIG:
        return this.getConfig(payload);
      case Request.SET_CONFIG:
        return this.setConfig(payload);
      default:
        protocolError('ENOSYS', `${name} has no handler`); // unreachable: KNOWN lists the cases above
    }
  }

  private setFeatures(features: bigint): void {
    const offered = this.state.offeredFeatures | PROTOCOL_FEATURES_BIT;
    if (features & ~offered) {
      protocolError('EINVAL', `SET_FEATURES 0x${features.toString(16)} names features not offered (0x${(features & ~offered).toString(16)})`);
    }
    const deviceFeatures = features & ~PROTOCOL_FEATURES_BIT;
    if (this.vrings.some((r) => r.started) && deviceFeatures !== this.state.driverFeatures) {
      protocolError('EBUSY', 'SET_FEATURES changes virtio features while rings are running');
    }
    this.state.setFeatures(deviceFeatures);
    this.featuresNegotiated = (features & PROTOCOL_FEATURES_BIT) !== 0n;
    // Without VHOST_USER_F_PROTOCOL_FEATURES there is no SET_VRING_ENABLE: rings are enabled from the start.
    if (!this.featuresNegotiated) {
      for (const ring of this.vrings) {
        ring.enabled = true;
        this.startRing(ring);
      }
    }
  }

  private async setMemTable(payload: Uint8Array, fds: readonly number[]): Promise<void> {
    const regions = decodeMemoryTable(payload);
    const table = MemoryTable.map(regions, fds); // validates; the dispatcher closes the fds afterwards
    const restart = this.vrings.filter((r) => r.started);
    try {
      for (const ring of restart) await this.stopRing(ring); // rings hold views into the old mappings
    } catch (err) {
      table.unmap();
      throw err;
    }
    const old = this.memoryTable;
    this.memoryTable = table;
    old?.unmap();
    if (this.closing) return;
    for (const ring of this.vrings) this.checkRingAddresses(ring);
    for (const ring of this.vrings) this.startRing(ring);
  }

  private setVringNum({ index, num }: { index: number; num: number }): void {
    const ring = this.ring(index, 'SET_VRING_NUM');
    this.notRunning(ring, 'SET_VRING_NUM');
    if (!isValidQueueSize(num) || num > ring.maxSize) {
      protocolError('EINVAL', `SET_VRING_NUM ring ${index}: size ${num} is not a power of two in 1..${ring.maxSize}`);
    }
    ring.size = num;
    this.checkRingAddresses(ring);
  }

  private setVringAddr(payload: Uint8Array): void {
    const addr = decodeVringAddress(payload);
    const ring = this.ring(addr.index, 'SET_VRING_ADDR');
    if (addr.flags !== 0) {
      protocolError('EINVAL', `SET_VRING_ADDR ring ${addr.index}: flags 0x${addr.flags.toString(16)} (dirty logging is not offered)`);
    }
    const next = { desc: addr.desc, avail: addr.avail, used: addr.used };
    const same = ring.addresses !== null && ring.addresses.desc === next.desc && ring.addresses.avail === next.avail &&
      ring.addresses.used === next.used;
    if (!same) this.notRunning(ring, 'SET_VRING_ADDR');
    ring.addresses = next;
    this.checkRingAddresses(ring);
    this.startRing(ring);
  }

  private setVringBase({ index, num }: { index: number; num: number }): void {
    const ring = this.ring(index, 'SET_VRING_BASE');
    this.notRunning(ring, 'SET_VRING_BASE');
    if (num > 0xffff) protocolError('EINVAL', `SET_VRING_BASE ring ${index}: ${num} is not a split-ring index (0..65535)`);
    ring.base = num;
  }

  private async getVringBase(index: number): Promise<void> {
    const ring = this.ring(index, 'GET_VRING_BASE');
    await this.stopRing(ring);
    // The ring is stopped until the front-end sets it up again; its notifiers go with it.
    ring.dropKick();
    ring.setCall(null);
    if (!this.closing) this.reply(Request.GET_VRING_BASE, encodeVringState({ index, num: ring.base }));
  }

  private setVringFd(request: number, value: bigint, fds: readonly number[], claimed: Set<number>): void {
    const name = requestName(request);
    if (value & ~BigInt(VRING_INDEX_MASK | VRING_NOFD)) {
      protocolError('EINVAL', `${name}: reserved bits set in 0x${value.toString(16)}`);
    }
    const index = Number(value & BigInt(VRING_INDEX_MASK));
    const noFd = (value & BigInt(VRING_NOFD)) !== 0n;
    const ring = this.ring(index, name);
    const wanted = noFd ? 0 : 1;
    if (fds.length !== wanted) protocolError('EBADF', `${name} ring ${index}: ${fds.length} fds (expected ${wanted})`);
    const fd = noFd ? null : adoptEventFd(fds[0]!, `${name} ring ${index}`);
    if (fd) claimed.add(fd.fd);
    switch (request) {
      case Request.SET_VRING_KICK:
        // No kick fd means "poll", which this back-end does not do: the ring waits for a real kick fd.
        ring.setKick(fd, (kick) => this.subscribeKick(ring, kick));
        if (ring.started) this.state.notify(index); // a kick may have raced the swap
        this.startRing(ring);
        return;
      case Request.SET_VRING_CALL:
        ring.setCall(fd);
        // Completions published while there was no call fd (or the old one) must not be lost:
        // one spurious interrupt is harmless, a missing one hangs the driver.
        if (ring.started) this.signalUsed(index);
        return;
      default:
        ring.setErr(fd);
    }
  }

  private setVringEnable({ index, num }: { index: number; num: number }): void | Promise<void> {
    const ring = this.ring(index, 'SET_VRING_ENABLE');
    if (!this.featuresNegotiated) protocolError('EPROTO', 'SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES negotiated');
    if (num > 1) protocolError('EINVAL', `SET_VRING_ENABLE ring ${index}: ${num} is neither 0 nor 1`);
    ring.enabled = num === 1;
    if (ring.enabled) {
      this.startRing(ring);
      return;
    }
    return this.stopRing(ring);
  }

  private getConfig(payload: Uint8Array): void {
    if (!this.has(PROTOCOL_F_CONFIG)) protocolError('EPROTO', 'GET_CONFIG without VHOST_USER_PROTOCOL_F_CONFIG');
    const access = decodeConfig(payload, 'GET_CONFIG');
    const data = new Uint8Array(access.size);
    this.state.device.config.read(access.offset, data);
    this.reply(Request.GET_CONFIG, encodeConfig({ ...access, data }));
  }

  private setConfig(payload: Uint8Array): void {
    if (!this.has(PROTOCOL_F_CONFIG)) protocolError('EPROTO', 'SET_CONFIG without VHOST_USER_PROTOCOL_F_CONFIG');
    const access = decodeConfig(payload, 'SET_CONFIG');
    if (access.flags > 1) protocolError('EINVAL', `SET_CONFIG flags 0x${access.flags.toString(16)}`);
    // Only fields the device declares writable change; read-only bytes are ignored as on virtio-mmio.
    this.state.device.config.write(access.offset, access.data);
  }

  private async resetDevice(): Promise<void> {
    await this.stopAllRings();
    await this.state.reset();
    for (const ring of this.vrings) ring.resetSettings();
    this.featuresNegotiated = false;
  }

  // ---- rings --------------------------------------------------------------------------------

  private ring(index: number, request: string): Vring {
    const ring = this.vrings[index];
    if (!ring) protocolError('EINVAL', `${request}: ring ${index} does not exist (device has ${this.vrings.length})`);
    return ring;
  }

  private notRunning(ring: Vring, request: string): void {
    if (ring.started) protocolError('EBUSY', `${request}: ring ${ring.index} is running`);
  }

  private subscribeKick(ring: Vring, kick: EventFd): Subscription {
    const index = ring.index;
    return fromEventFd(kick).subscribe({
      next: () => this.state.notify(index),
      error: (err: unknown) => this.fail(`ring ${index} kick fd: ${describe(err)}`),
    });
  }

  /** Guest-physical ring areas, or a protocol error naming the area outside the memory table. */
  private ringAreas(ring: Vring): { desc: number; avail: number; used: number } | null {
    const table = this.memoryTable;
    const addresses = ring.addresses;
    if (!table || !addresses) return null;
    const eventIdx = hasFeature(this.state.driverFeatures, VIRTIO_F_EVENT_IDX);
    const translate = (what: string, user: bigint, length: number): number => {
      const gpa = table.translate(user, length);
      if (gpa === null) {
        protocolError('EFAULT', `ring ${ring.index} ${what} 0x${user.toString(16)}+${length} is outside the memory table`);
      }
      return gpa;
    };
    return {
      desc: translate('descriptor table', addresses.desc, descTableBytes(ring.size)),
      avail: translate('available ring', addresses.avail, availRingBytes(ring.size, eventIdx)),
      used: translate('used ring', addresses.used, usedRingBytes(ring.size, eventIdx)),
    };
  }

  private checkRingAddresses(ring: Vring): void {
    this.ringAreas(ring);
  }

  /** Start serving `ring` once it has memory, addresses, a kick fd and is enabled. */
  private startRing(ring: Vring): void {
    if (ring.started || this.closing || !ring.kick || !ring.enabled) return;
    const areas = this.ringAreas(ring);
    if (!areas) return;
    const settings = this.state.queues[ring.index]!;
    settings.size = ring.size;
    settings.descTable = areas.desc;
    settings.availRing = areas.avail;
    settings.usedRing = areas.used;
    settings.ready = true;
    // Resume where the driver last saw the device: used.idx as published in guest memory.
    const nextUsed = this.memoryTable!.guest.readU16(areas.used + 2);
    ring.started = true;
    if (!this.state.startQueue(ring.index, { nextAvail: ring.base, nextUsed })) {
      ring.started = false;
      settings.ready = false;
      if (!this.closing) this.fail(`ring ${ring.index} could not start`);
    }
  }

  /** Stop `ring` (in-flight I/O settles first) and remember where it stopped. */
  private async stopRing(ring: Vring): Promise<void> {
    if (!ring.started) return;
    ring.started = false;
    this.state.queues[ring.index]!.ready = false;
    const stopped = await this.state.stopQueue(ring.index, { drain: true });
    if (stopped) ring.base = stopped.nextAvail;
  }

  private async stopAllRings(): Promise<void> {
    await Promise.all(this.vrings.map((r) => this.stopRing(r)));
  }

  // ---- replies and teardown -----------------------------------------------------------------

  private has(protocolFeature: number): boolean {
    return (this.protocolFeatures & bit(protocolFeature)) !== 0n;
  }

  private reply(request: number, payload: Uint8Array): void {
    if (this.closing) return;
    const message = encodeMessage(request, FLAG_VERSION | FLAG_REPLY, payload);
    let sent: number;
    try {
      sent = sendWithFds(this.socket, message);
    } catch (err) {
      this.fail(`reply to ${requestName(request)}: ${describe(err)}`);
      return;
    }
    if (sent !== message.length) this.fail(`reply to ${requestName(request)}: front-end is not reading (socket full)`);
  }

  private fail(reason: string): void {
    void this.beginClose({ reason, error: true }, false);
  }

  private beginClose(close: ConnectionClose, alreadyLogged: boolean): Promise<void> {
    if (this.closing) return this.closing;
    this.options.onClosing(close, alreadyLogged);
    this.pause();
    for (const ring of this.vrings) {
      ring.kickSubscription?.unsubscribe();
      ring.kickSubscription = null;
    }
    this.closing = this.teardown(close);
    return this.closing;
  }

  private async teardown(close: ConnectionClose): Promise<void> {
    this.closeSocket();
    for (const fd of this.reader.discard()) closeQuietly(fd);
    try {
      if (this.pending) await this.pending;
      for (const ring of this.vrings) {
        ring.started = false;
        ring.resetSettings();
      }
      await this.state.reset(); // stops the queues and waits for their in-flight I/O
    } catch (err) {
      warn(this.options.name, `device reset after disconnect failed: ${describe(err)}`);
    } finally {
      this.memoryTable?.unmap();
      this.memoryTable = null;
      for (const ring of this.vrings) ring.closeFds();
      this.options.onClosed(close);
    }
  }

  private closeSocket(): void {
    if (!this.socketOpen) return;
    this.socketOpen = false;
    closeQuietly(this.socket);
  }
}

function closeQuietly(fd: number): void {
  try {
    libc.close(fd, 'vhost-user fd');
  } catch {
    // already closed: nothing left to release
  }
}

function describe(err: unknown): string {
  if (err instanceof VhostUserProtocolError) return err.message;
  return err instanceof Error ? err.message : String(err);
}
