// The vhost-user back-end: serves one rxvirt device on a unix socket so that a
// front-end (QEMU's vhost-user-blk / -rng / ..., or our test front-end) drives it.
// One front-end at a time, everything on the main event loop: the listening
// socket is watched only while nobody is connected, and a front-end that hangs up
// or misbehaves is torn down (device reset, memory unmapped, fds closed) before
// the next one is accepted. The device object is the same one a VM would use;
// only the transport differs.

import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import { Observable, Subject } from 'rxjs';
import { debug, warn } from '../../framework/log.ts';
import type { VirtioDevice } from '../../framework/virtio/device.ts';
import { VirtioDeviceState } from '../../framework/virtio/device-state.ts';
import { STATUS_DEVICE_NEEDS_RESET } from '../../framework/virtio/constants.ts';
import { watchFd, type FdWatch } from '../../native/fd-watch.ts';
import * as libc from '../../native/libc.ts';
import { unixAccept, unixConnect, unixListen } from '../../native/unix-socket.ts';
import { NativeError } from '../../native/errors.ts';
import { isValidQueueSize } from '../../framework/virtio/ring-layout.ts';
import { VhostUserConnection, type ConnectionClose } from './connection.ts';
import { FrontendSizedDevice } from './frontend-sized-device.ts';

export interface VhostUserBackendOptions {
  /** Where to listen. A stale socket left by a dead process is replaced; a live one is EADDRINUSE. */
  socketPath: string;
  /** Called when a connection has been torn down, with the reason it ended. */
  onConnectionClosed?: (reason: string) => void;
  /**
   * Largest ring a front-end may ask for (power of two, default 1024). The front-end picks
   * ring sizes over vhost-user; a device's own maxSize only raises this bound.
   */
  queueSizeMax?: number;
}

const DEFAULT_QUEUE_SIZE_MAX = 1024;

export type { ConnectionClose as VhostUserConnectionClose } from './connection.ts';

/** VirtioDeviceState that reports DEVICE_NEEDS_RESET to the transport (vhost-user has no status register). */
class VhostUserDeviceState extends VirtioDeviceState {
  onNeedsReset: ((reason: string) => void) | null = null;

  override needsReset(reason: string): void {
    const first = (this.status & STATUS_DEVICE_NEEDS_RESET) === 0;
    super.needsReset(reason);
    if (first) this.onNeedsReset?.(reason);
  }
}

export class VhostUserBackend {
  readonly state: VirtioDeviceState;
  readonly socketPath: string;
  /** Emits when a front-end connects. */
  readonly connected$: Observable<void>;
  /** Emits once per connection, after its teardown finished. */
  readonly disconnected$: Observable<ConnectionClose>;

  private readonly scope: string;
  private readonly connectedSubject = new Subject<void>();
  private readonly disconnectedSubject = new Subject<ConnectionClose>();
  private listenFd = -1;
  private listenWatch: FdWatch | null = null;
  private connection: VhostUserConnection | null = null;
  private closing: Promise<void> | null = null;
  private connectionCount = 0;

  constructor(readonly device: VirtioDevice, private readonly options: VhostUserBackendOptions) {
    this.socketPath = options.socketPath;
    this.scope = `vhost-user ${options.socketPath}`;
    const queueSizeMax = options.queueSizeMax ?? DEFAULT_QUEUE_SIZE_MAX;
    if (!isValidQueueSize(queueSizeMax)) throw new RangeError(`${this.scope}: queueSizeMax ${queueSizeMax} is not a power of two in 1..32768`);
    const state = new VhostUserDeviceState(new FrontendSizedDevice(device, queueSizeMax), {
      memory: () => this.connection?.memory ?? null,
      name: this.scope,
      interrupts: {
        usedBuffer: (index) => this.connection?.signalUsed(index),
        // A config change would need the back-end request channel (PROTOCOL_F_BACKEND_REQ), not offered.
        configChange: () => {},
      },
    });
    state.onNeedsReset = (reason) => this.connection?.deviceFailed(reason);
    this.state = state;
    this.connected$ = this.connectedSubject.asObservable();
    this.disconnected$ = this.disconnectedSubject.asObservable();
  }

  get isConnected(): boolean {
    return this.connection !== null;
  }

  /** Connections accepted so far. */
  get connections(): number {
    return this.connectionCount;
  }

  /** Bind the socket and start accepting. Throws NativeError (EADDRINUSE, EACCES, ...). */
  listen(): void {
    if (this.listenFd >= 0 || this.closing) throw new Error(`${this.scope}: already listening or closed`);
    removeStaleSocket(this.socketPath);
    this.listenFd = unixListen(this.socketPath);
    this.watchListener();
  }

  /** Stop accepting, end the current connection (in-flight requests finish first), remove the socket. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.listenWatch?.stop();
      this.listenWatch = null;
      if (this.listenFd >= 0) {
        libc.close(this.listenFd, 'vhost-user listening socket');
        this.listenFd = -1;
        try {
          unlinkSync(this.socketPath);
        } catch {
          // already gone
        }
      }
      await this.connection?.close();
      this.connectedSubject.complete();
      this.disconnectedSubject.complete();
    })();
    return this.closing;
  }

  private watchListener(): void {
    if (this.listenWatch || this.listenFd < 0 || this.connection || this.closing) return;
    this.listenWatch = watchFd(this.listenFd, { readable: true }, () => this.accept());
    this.accept();
  }

  private accept(): void {
    if (this.connection || this.closing || this.listenFd < 0) return;
    let fd: number | null;
    try {
      fd = unixAccept(this.listenFd);
    } catch (err) {
      warn(this.scope, `accept failed: ${err instanceof Error ? err.message : String(err)}`);
      return;
    }
    if (fd === null) return;
    // One front-end at a time: the next one waits in the backlog until this one is gone.
    this.listenWatch?.stop();
    this.listenWatch = null;
    this.connectionCount++;
    const connection = new VhostUserConnection(fd, this.state, {
      name: this.scope,
      onClosing: (close, alreadyLogged) => {
        if (close.error && !alreadyLogged) warn(this.scope, `connection closed: ${close.reason}`);
        else debug(this.scope, `connection closed: ${close.reason}`);
      },
      onClosed: (close) => {
        if (this.connection === connection) this.connection = null;
        this.options.onConnectionClosed?.(close.reason);
        this.disconnectedSubject.next(close);
        this.watchListener();
      },
    });
    this.connection = connection;
    debug(this.scope, 'front-end connected');
    this.connectedSubject.next();
    connection.start();
  }
}

/** A socket file nobody listens on any more (the previous back-end died) is removed; anything else stays. */
function removeStaleSocket(path: string): void {
  if (!existsSync(path)) return;
  if (!lstatSync(path).isSocket()) return; // unixListen reports EADDRINUSE: never delete a user's file
  try {
    libc.close(unixConnect(path), 'stale socket probe');
  } catch (err) {
    if (err instanceof NativeError && err.code === 'ECONNREFUSED') unlinkSync(path);
  }
}
