// virtio-console (virtio 1.2 §5.3): one port, receiveq (host -> guest) and transmitq
// (guest -> host), the terminal size in config (VIRTIO_CONSOLE_F_SIZE) and the
// emergency-write register (VIRTIO_CONSOLE_F_EMERG_WRITE). Multiport is not offered.
// Flow control both ways: host bytes wait, in order, for guest receive buffers (the
// host is paused past a high-water mark), and guest output stops being consumed while
// the host side is saturated. Emergency writes arriving then are dropped, as a serial
// line drops what nobody reads: they cannot be refused, and queueing them is unbounded.

import type { Subscription } from 'rxjs';
import type { ByteStream } from '../framework/io/byte-stream.ts';
import { ConfigSpace } from '../framework/virtio/config-space.ts';
import { VIRTIO_ID_CONSOLE, featureBits } from '../framework/virtio/constants.ts';
import type { ChainReader, DescriptorChain } from '../framework/virtio/descriptor-chain.ts';
import type { DeviceQueue } from '../framework/virtio/device-queue.ts';
import { VirtioDevice, queue } from '../framework/virtio/device.ts';

export const VIRTIO_CONSOLE_F_SIZE = 0;
export const VIRTIO_CONSOLE_F_MULTIPORT = 1;
export const VIRTIO_CONSOLE_F_EMERG_WRITE = 2;

/** struct virtio_console_config (§5.3.4). */
const CONSOLE_CONFIG = {
  cols: ['u16', 0],
  rows: ['u16', 2],
  max_nr_ports: ['u32', 4],
  emerg_wr: ['u32', 8],
} as const;

const QUEUE_SIZE = 128;
/** Host bytes buffered before the host side is paused, and the level at which it resumes. */
const INPUT_HIGH_WATER = 64 * 1024;
const INPUT_LOW_WATER = 16 * 1024;
/** Guest output is copied to the host in pieces of at most this size (bounds host memory per chain). */
const OUTPUT_CHUNK = 64 * 1024;

export interface ConsoleOptions {
  /** Initial terminal size (default 80x25; replaced by the host's size$ if it has one). */
  cols?: number;
  rows?: number;
}

export class ConsoleDevice extends VirtioDevice {
  readonly type = VIRTIO_ID_CONSOLE;
  override readonly features = featureBits(VIRTIO_CONSOLE_F_SIZE, VIRTIO_CONSOLE_F_EMERG_WRITE);
  override readonly config = new ConfigSpace(CONSOLE_CONFIG, {
    writable: ['emerg_wr'],
    onDriverWrite: (_field, value) => this.emergencyWrite(Number(value & 0xffn)),
  });
  readonly queues = [
    queue('receiveq', QUEUE_SIZE, (q) => this.attachReceive(q)),
    queue('transmitq', QUEUE_SIZE, (q) => this.attachTransmit(q)),
  ];

  // receiveq: host bytes not yet delivered, oldest first; `inputOffset` bytes of the first are gone.
  private rx: DeviceQueue | null = null;
  private readonly input: Uint8Array[] = [];
  private inputOffset = 0;
  private inputBytes = 0;
  private inputPaused = false;

  // transmitq: the chain being copied out.
  private tx: DeviceQueue | null = null;
  private txChain: DescriptorChain | null = null;
  private txReader: ChainReader | null = null;

  /** Set while the host is saturated (its output() returned a promise): nothing is sent until it settles. */
  private hostWait: Promise<void> | null = null;
  private droppedBytes = 0;

  private readonly hostSubscriptions: Subscription[] = [];

  constructor(private readonly host: ByteStream, options: ConsoleOptions = {}) {
    super();
    this.config.set('cols', options.cols ?? 80);
    this.config.set('rows', options.rows ?? 25);
    this.config.set('max_nr_ports', 1);
    this.hostSubscriptions.push(host.input$.subscribe((bytes) => this.receiveFromHost(bytes)));
    if (host.size$) this.hostSubscriptions.push(host.size$.subscribe(({ cols, rows }) => this.resize(cols, rows)));
  }

  /** New terminal size: updates config, which bumps the generation and raises a config interrupt. */
  resize(cols: number, rows: number): void {
    if (Number(this.config.get('cols')) === cols && Number(this.config.get('rows')) === rows) return;
    this.config.update({ cols, rows });
  }

  /** Host bytes still waiting for guest receive buffers. */
  get pendingInput(): number {
    return this.inputBytes;
  }

  /** Emergency-write bytes dropped because the host was saturated. */
  get droppedEmergencyBytes(): number {
    return this.droppedBytes;
  }

  /** Stop listening to the host and release it. */
  close(): void {
    for (const s of this.hostSubscriptions) s.unsubscribe();
    this.hostSubscriptions.length = 0;
    this.host.close();
  }

  // ---- receiveq: host -> guest ----

  private attachReceive(q: DeviceQueue): () => void {
    this.rx = q;
    const kicks = q.kicks$.subscribe(() => this.deliver());
    this.deliver();
    return () => {
      kicks.unsubscribe();
      if (this.rx === q) this.rx = null;
    };
  }

  private receiveFromHost(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    this.input.push(bytes);
    this.inputBytes += bytes.length;
    this.deliver();
    if (!this.inputPaused && this.inputBytes > INPUT_HIGH_WATER && this.host.pauseInput) {
      this.inputPaused = true;
      this.host.pauseInput(true);
    }
  }

  /** Move waiting host bytes into guest receive buffers, splitting them across as many as it takes. */
  private deliver(): void {
    const q = this.rx;
    if (q === null) return;
    while (this.inputBytes > 0) {
      const chain = q.pop();
      if (chain === null) break;
      const writer = chain.writer();
      while (writer.remaining > 0 && this.inputBytes > 0) {
        const chunk = this.input[0]!;
        const n = Math.min(writer.remaining, chunk.length - this.inputOffset);
        writer.write(chunk.subarray(this.inputOffset, this.inputOffset + n));
        this.inputBytes -= n;
        this.inputOffset += n;
        if (this.inputOffset === chunk.length) {
          this.input.shift();
          this.inputOffset = 0;
        }
      }
      q.complete(chain, writer.written);
    }
    if (this.inputPaused && this.inputBytes <= INPUT_LOW_WATER) {
      this.inputPaused = false;
      this.host.pauseInput?.(false);
    }
  }

  // ---- transmitq: guest -> host ----

  private attachTransmit(q: DeviceQueue): () => void {
    this.tx = q;
    const kicks = q.kicks$.subscribe(() => this.transmit());
    this.transmit();
    return () => {
      kicks.unsubscribe();
      if (this.tx === q) {
        this.tx = null;
        // Return the chain being sent: a draining stop publishes it (the guest's hvc would
        // otherwise wait for it forever); after a reset it is discarded.
        if (this.txChain !== null) q.complete(this.txChain, 0);
        this.txChain = null;
        this.txReader = null;
      }
    };
  }

  /** Copy every readable byte of each chain to the host, in order; pause while the host is saturated. */
  private transmit(): void {
    const q = this.tx;
    while (q !== null && this.hostWait === null) {
      if (this.txChain === null) {
        this.txChain = q.pop();
        if (this.txChain === null) return;
        this.txReader = this.txChain.reader();
      }
      const reader = this.txReader!;
      if (reader.remaining === 0) {
        q.complete(this.txChain, 0);
        this.txChain = this.txReader = null;
        continue;
      }
      const wait = this.sendToHost(reader.bytes(Math.min(reader.remaining, OUTPUT_CHUNK)));
      if (wait) q.track(wait); // a draining stop (vhost-user) waits for the host to take the chain
    }
  }

  // ---- emergency write ----

  /** One byte written to emerg_wr: sent at once, or dropped while the host is saturated. */
  private emergencyWrite(byte: number): void {
    if (this.hostWait !== null) {
      this.droppedBytes++;
      return;
    }
    this.sendToHost(Uint8Array.of(byte));
  }

  /** Hand bytes to the host; a saturated host returns the wait, which settles once output has resumed. */
  private sendToHost(bytes: Uint8Array): Promise<void> | null {
    const wait = this.host.output(bytes);
    if (!wait) return null;
    const resumed = wait.then(this.hostDrained, this.hostDrained);
    this.hostWait = resumed;
    return resumed;
  }

  private readonly hostDrained = (): void => {
    this.hostWait = null;
    this.transmit();
  };
}
