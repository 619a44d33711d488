// An in-memory BlockFile for fuzzing virtio-blk: deterministic and fast. Operations do not
// complete on their own: they wait in `pending` until the fuzz case releases them, in an
// order of its choosing (out-of-order completion, reproducibly), and any of them can be
// made to fail as a disk would (EIO, ENOSPC). Data moves when an operation is released,
// like a real disk moving bytes only when the I/O happens.

import type { BlockFile } from '../../framework/io/raw-file.ts';
import type { Prng } from './prng.ts';

type Op = { kind: 'read' | 'write' | 'sync' | 'discard' | 'zeroes'; position: number; length: number; run: () => void };

interface Pending {
  op: Op;
  resolve: () => void;
  reject: (err: Error) => void;
}

export class MemoryBlockFile implements BlockFile {
  readonly path = 'memory.img';
  readonly ioSize = 4096;
  readonly data: Uint8Array;
  readonly pending: Pending[] = [];
  /** Probability that a released operation fails instead. */
  failureRate = 0;
  /** Operations failed so far, by kind. */
  failures = 0;
  closed = false;
  /** Ranges [position, end) touched by failed writes / zeroes: their contents are unknown. */
  readonly failedRanges: [number, number][] = [];

  /** `autoComplete`: operations complete by themselves on the next turn of the event loop, in order. */
  constructor(readonly size: number, readonly readOnly = false, private readonly autoComplete = false) {
    this.data = new Uint8Array(size);
  }

  read(views: readonly Uint8Array[], position: number): Promise<void> {
    const length = views.reduce((s, v) => s + v.length, 0);
    return this.queue({
      kind: 'read', position, length,
      run: () => {
        let p = position;
        for (const v of views) { v.set(this.data.subarray(p, p + v.length)); p += v.length; }
      },
    });
  }

  write(views: readonly Uint8Array[], position: number): Promise<void> {
    const length = views.reduce((s, v) => s + v.length, 0);
    return this.queue({
      kind: 'write', position, length,
      run: () => {
        let p = position;
        for (const v of views) { this.data.set(v, p); p += v.length; }
      },
    });
  }

  sync(): Promise<void> {
    return this.queue({ kind: 'sync', position: 0, length: 0, run: () => {} });
  }

  discard(position: number, length: number): Promise<void> {
    return this.queue({ kind: 'discard', position, length, run: () => this.data.fill(0, position, position + length) });
  }

  writeZeroes(position: number, length: number, _mayUnmap: boolean): Promise<void> {
    return this.queue({ kind: 'zeroes', position, length, run: () => this.data.fill(0, position, position + length) });
  }

  close(): void {
    this.closed = true;
  }

  /** Complete every pending operation (and any they start), in an order `rng` picks. */
  async releaseAll(rng: Prng): Promise<void> {
    for (let rounds = 0; rounds < 10_000; rounds++) {
      if (this.pending.length === 0) {
        // Let the device react (status bytes, the next segment of a deallocation) before deciding it is idle.
        await new Promise((r) => setImmediate(r));
        if (this.pending.length === 0) return;
      }
      const [p] = this.pending.splice(rng.int(this.pending.length), 1);
      this.complete(p!, rng);
      await Promise.resolve();
    }
    throw new Error('MemoryBlockFile: the device kept issuing I/O (10000 operations)');
  }

  /** Complete one pending operation chosen by `rng`; false when none is pending. */
  releaseOne(rng: Prng): boolean {
    if (this.pending.length === 0) return false;
    const [p] = this.pending.splice(rng.int(this.pending.length), 1);
    this.complete(p!, rng);
    return true;
  }

  /** Operations the device issued outside the image (an invariant violation the case reports). */
  readonly outOfRange: string[] = [];

  private completeNow(p: Pending): void {
    if (this.checkRange(p)) {
      p.op.run();
      p.resolve();
    }
  }

  private checkRange(p: Pending): boolean {
    const { op } = p;
    if (op.position >= 0 && Number.isSafeInteger(op.position + op.length) && op.position + op.length <= this.size) return true;
    this.outOfRange.push(`${op.kind} at ${op.position}+${op.length} outside the ${this.size}-byte image`);
    p.reject(Object.assign(new Error(`${op.kind} ${op.position}+${op.length} outside a ${this.size}-byte file`), { code: 'EINVAL' }));
    return false;
  }

  private complete(p: Pending, rng: Prng): void {
    const { op } = p;
    if (!this.checkRange(p)) throw new Error(`device issued ${this.outOfRange.at(-1)}`);
    if (this.failureRate > 0 && rng.chance(this.failureRate)) {
      this.failures++;
      if (op.kind === 'write' || op.kind === 'zeroes' || op.kind === 'discard') this.failedRanges.push([op.position, op.position + op.length]);
      p.reject(Object.assign(new Error(`injected EIO on ${op.kind}`), { code: rng.chance(0.8) ? 'EIO' : 'ENOSPC' }));
      return;
    }
    op.run();
    p.resolve();
  }

  private queue(op: Op): Promise<void> {
    if (this.closed) return Promise.reject(Object.assign(new Error('closed'), { code: 'EBADF' }));
    if (op.length === 0 && op.kind !== 'sync') return Promise.resolve(); // no I/O, nothing to fail (as a real file)
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ op, resolve, reject });
      if (this.autoComplete) {
        setImmediate(() => {
          const i = this.pending.findIndex((p) => p.op === op);
          if (i < 0) return;
          const [p] = this.pending.splice(i, 1);
          this.completeNow(p!);
        });
      }
    });
  }
}
