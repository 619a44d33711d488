// One popped descriptor chain as a device sees it: the head index to return in the
// used ring, the device-readable and device-writable guest buffers as zero-copy views
// (already validated against guest memory), and cursors that read or write across
// buffer boundaries. Also the error every malformed-ring condition raises.

/** What the guest got wrong (each validation rule has its own reason). */
export type VirtqueueFault =
  // SplitQueue construction (the driver configured the rings)
  | 'invalid queue size'
  | 'misaligned ring'
  | 'ring out of memory'
  | 'ring inaccessible'
  // available ring
  | 'avail index jump'
  | 'head out of range'
  | 'more chains in flight than the queue size'
  // descriptor walk
  | 'next out of range'
  | 'chain too long'
  | 'readable after writable'
  | 'buffer out of memory'
  | 'buffer inaccessible'
  | 'buffer read-only'
  | 'chain exceeds 4 GiB'
  // indirect tables
  | 'indirect not negotiated'
  | 'nested indirect'
  | 'indirect with next'
  | 'indirect length invalid'
  | 'indirect table too large'
  | 'indirect table out of memory'
  | 'indirect table inaccessible'
  | 'indirect next out of range'
  | 'indirect chain too long'
  // device reading or writing past the end of the chain's buffers
  | 'short buffer';

/** A malformed ring or chain: the guest's bug, never the host's. */
export class VirtqueueError extends Error {
  override readonly name = 'VirtqueueError';
  readonly code = 'EINVAL';
  constructor(
    readonly reason: VirtqueueFault,
    detail?: string,
    /** Head of the offending chain when it was consumed from the ring (may be returned as used). */
    readonly head?: number,
    options?: { cause?: unknown },
  ) {
    super(detail === undefined ? `virtqueue: ${reason}` : `virtqueue: ${reason} (${detail})`, options);
  }
}

export class DescriptorChain {
  constructor(
    /** Head descriptor index: the id of the used-ring element. */
    readonly head: number,
    /**
     * Device-readable buffers in chain order: one view per descriptor, none for a zero-length
     * one, one per region for a buffer over guest-physically touching regions.
     */
    readonly readable: readonly Uint8Array[],
    /** Device-writable buffers in chain order. */
    readonly writable: readonly Uint8Array[],
    readonly readableBytes: number,
    readonly writableBytes: number,
  ) {}

  /** A fresh cursor over the readable buffers. */
  reader(): ChainReader {
    return new ChainReader(this.readable, this.readableBytes);
  }

  /** A fresh cursor over the writable buffers; `written` is the used length to report. */
  writer(): ChainWriter {
    return new ChainWriter(this.writable, this.writableBytes);
  }
}

/** Position in a list of non-empty segments; shared by reader and writer. */
class Cursor {
  protected seg = 0;
  protected off = 0;
  protected left: number;

  constructor(protected readonly segs: readonly Uint8Array[], protected readonly total: number) {
    this.left = total;
  }

  /** Bytes not yet consumed. */
  get remaining(): number {
    return this.left;
  }

  /** Move `n` bytes forward (n <= left, already checked). */
  protected advance(n: number): void {
    this.left -= n;
    let off = this.off + n;
    while (this.seg < this.segs.length && off >= this.segs[this.seg]!.length) {
      off -= this.segs[this.seg]!.length;
      this.seg++;
    }
    this.off = off;
  }

  protected need(n: number): void {
    if (!(n >= 0 && Number.isInteger(n))) throw new RangeError(`chain cursor: bad length ${n}`);
    if (n > this.left) throw new VirtqueueError('short buffer', `${n} bytes wanted, ${this.left} left`);
  }

  /** Zero-copy views of the next `n` bytes, consumed. */
  views(n: number): Uint8Array[] {
    this.need(n);
    const out: Uint8Array[] = [];
    while (n > 0) {
      const s = this.segs[this.seg]!;
      const take = Math.min(s.length - this.off, n);
      out.push(s.subarray(this.off, this.off + take));
      this.advance(take);
      n -= take;
    }
    return out;
  }

  /** Skip `n` bytes. */
  skip(n: number): void {
    this.need(n);
    this.advance(n);
  }

  /** Copy between the cursor and `buf` (up to buf.length or what is left); returns the count. */
  protected transfer(buf: Uint8Array, toGuest: boolean): number {
    const n = Math.min(buf.length, this.left);
    let done = 0;
    while (done < n) {
      const s = this.segs[this.seg]!;
      const take = Math.min(s.length - this.off, n - done);
      if (toGuest) s.set(buf.subarray(done, done + take), this.off);
      else buf.set(s.subarray(this.off, this.off + take), done);
      this.advance(take);
      done += take;
    }
    return n;
  }
}

/** Reads the device-readable buffers in order; fixed-width reads are little-endian. */
export class ChainReader extends Cursor {
  /** Copy up to dst.length bytes into dst; returns how many (fewer only at the end). */
  readInto(dst: Uint8Array): number {
    return this.transfer(dst, false);
  }

  /** A copy of the next `n` bytes. */
  bytes(n: number): Uint8Array {
    this.need(n);
    const out = new Uint8Array(n);
    this.transfer(out, false);
    return out;
  }

  u8(): number {
    this.need(1);
    const v = this.segs[this.seg]![this.off]!;
    this.advance(1);
    return v;
  }

  u16(): number {
    this.need(2);
    const s = this.segs[this.seg]!, o = this.off;
    if (o + 2 <= s.length) {
      this.advance(2);
      return s[o]! | (s[o + 1]! << 8);
    }
    return this.u8() | (this.u8() << 8);
  }

  u32(): number {
    this.need(4);
    const s = this.segs[this.seg]!, o = this.off;
    if (o + 4 <= s.length) {
      this.advance(4);
      return (s[o]! | (s[o + 1]! << 8) | (s[o + 2]! << 16) | (s[o + 3]! << 24)) >>> 0;
    }
    return (this.u8() | (this.u8() << 8) | (this.u8() << 16) | (this.u8() << 24)) >>> 0;
  }

  u64(): bigint {
    this.need(8);
    const lo = this.u32();
    return (BigInt(this.u32()) << 32n) | BigInt(lo);
  }
}

/** Writes the device-writable buffers in order; fixed-width writes are little-endian and truncate like typed arrays. */
export class ChainWriter extends Cursor {
  /** Bytes written (or skipped) so far: the used length to report. */
  get written(): number {
    return this.total - this.left;
  }

  /** Write up to src.length bytes; returns how many (fewer only at the end). */
  write(src: Uint8Array): number {
    return this.transfer(src, true);
  }

  u8(v: number): void {
    this.need(1);
    this.segs[this.seg]![this.off] = v;
    this.advance(1);
  }

  u16(v: number): void {
    this.need(2);
    const s = this.segs[this.seg]!, o = this.off;
    if (o + 2 <= s.length) {
      s[o] = v;
      s[o + 1] = v >>> 8;
      this.advance(2);
    } else {
      this.u8(v);
      this.u8(v >>> 8);
    }
  }

  u32(v: number): void {
    this.need(4);
    const s = this.segs[this.seg]!, o = this.off;
    if (o + 4 <= s.length) {
      s[o] = v;
      s[o + 1] = v >>> 8;
      s[o + 2] = v >>> 16;
      s[o + 3] = v >>> 24;
      this.advance(4);
    } else {
      for (let i = 0; i < 4; i++) this.u8(v >>> (8 * i));
    }
  }

  u64(v: bigint): void {
    this.need(8);
    const u = BigInt.asUintN(64, v);
    this.u32(Number(u & 0xffffffffn));
    this.u32(Number(u >> 32n));
  }
}
