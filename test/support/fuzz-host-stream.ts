// A scripted host side for the virtio console under fuzzing: host bytes are pushed by the
// case, every byte the device hands to the host is recorded in order, and the host can
// report saturation (a pending promise) that the case settles when it likes. It also
// records pause/resume requests, so flow control can be checked.

import { Subject } from 'rxjs';
import type { ByteStream, TerminalSize } from '../../framework/io/byte-stream.ts';

export class ScriptedHostStream implements ByteStream {
  readonly input = new Subject<Uint8Array>();
  readonly input$ = this.input.asObservable();
  readonly size = new Subject<TerminalSize>();
  readonly size$ = this.size.asObservable();
  /** Every byte the device wrote to the host, in order. */
  private out = new Uint8Array(1024);
  outLength = 0;
  /** End offset of each output() call's bytes in `written`. */
  readonly chunkEnds: number[] = [];
  /** When true, the next output() call returns a promise that stays pending until `drain()`. */
  saturate = false;
  /** Pending saturation promises: how to settle each, and the bytes whose send returned it. */
  private waiting: { resolve: () => void; cause: Uint8Array }[] = [];
  paused = false;
  pauseCalls = 0;
  closed = false;
  /** Sends made while saturation promises were pending (first 16 bytes), with the sends that returned those promises. */
  readonly sentWhileSaturated: { bytes: Uint8Array; blockedBy: Uint8Array[] }[] = [];

  output(bytes: Uint8Array): void | Promise<void> {
    if (this.waiting.length > 0) this.sentWhileSaturated.push({ bytes: bytes.slice(0, 16), blockedBy: this.waiting.map((w) => w.cause) });
    if (this.outLength + bytes.length > this.out.length) {
      const grown = new Uint8Array(Math.max(this.out.length * 2, this.outLength + bytes.length));
      grown.set(this.out.subarray(0, this.outLength));
      this.out = grown;
    }
    this.out.set(bytes, this.outLength);
    this.outLength += bytes.length;
    this.chunkEnds.push(this.outLength);
    if (!this.saturate) return;
    const cause = bytes.slice(0, 16);
    return new Promise<void>((resolve) => this.waiting.push({ resolve, cause }));
  }

  get written(): Uint8Array {
    return this.out.subarray(0, this.outLength);
  }

  /** Settle every saturation promise. */
  drain(): void {
    for (const w of this.waiting.splice(0)) w.resolve();
  }

  get saturated(): boolean {
    return this.waiting.length > 0;
  }

  pauseInput(paused: boolean): void {
    this.paused = paused;
    this.pauseCalls++;
  }

  close(): void {
    this.closed = true;
    this.drain();
  }
}
