// LZMA2 (the only compression filter of .xz): chunks of LZMA data or stored bytes, decoded in
// one pass into one growing output buffer that is also the dictionary. Every distance, length
// and chunk size is checked against what has been decoded since the last dictionary reset and
// against the chunk's declared sizes, so corrupt input ends in an XzError, never in a read
// outside the output or an endless loop. Follows the LZMA reference decoder (LzmaSpec).

import { XzError } from './xz-error.ts';

const NUM_STATES = 12;
const POS_BITS_MAX = 4;
const LEN_TO_POS_STATES = 4;
const END_POS_MODEL_INDEX = 14;
const NUM_FULL_DISTANCES = 128;
const ALIGN_BITS = 4;
const MATCH_MIN_LEN = 2;
const PROB_INIT = 1024;
const TOP = 1 << 24;

/** Output that grows as chunks declare their sizes, up to a limit. */
export class OutputBuffer {
  bytes: Uint8Array;
  length = 0;

  constructor(initial: number, readonly limit: number) {
    this.bytes = new Uint8Array(Math.max(4096, Math.min(initial, limit)));
  }

  /** Room for `n` more bytes. */
  reserve(n: number): void {
    const need = this.length + n;
    if (need > this.limit) throw new XzError('EFBIG', `decompressed data exceeds ${this.limit} bytes`);
    if (need <= this.bytes.length) return;
    const grown = new Uint8Array(Math.min(this.limit, Math.max(need, this.bytes.length * 2)));
    grown.set(this.bytes.subarray(0, this.length));
    this.bytes = grown;
  }
}

/** Dictionary size from the LZMA2 filter property byte (.xz format §5.3.1). */
export function lzma2DictionarySize(props: number): number {
  if (props > 40) throw new XzError('EINVAL', `LZMA2 dictionary size byte ${props} is over 40`);
  if (props === 40) return 0xffffffff;
  return (2 | (props & 1)) * 2 ** ((props >> 1) + 11);
}

/** Decodes one LZMA2 stream starting at input[offset]; returns the offset just past its end marker. */
export function decodeLzma2(input: Uint8Array, offset: number, end: number, dictSize: number, out: OutputBuffer): number {
  return new Lzma2Decoder(input, offset, end, dictSize, out).run();
}

class Lzma2Decoder {
  private pos: number;
  private dictStart = 0;
  private needDictReset = true;
  private needProps = true;
  // LZMA properties.
  private lc = 0;
  private lp = 0;
  private pb = 0;
  // Range decoder.
  private range = 0;
  private code = 0;
  private rcPos = 0;
  private rcEnd = 0;
  // LZMA state.
  private state = 0;
  private rep0 = 0;
  private rep1 = 0;
  private rep2 = 0;
  private rep3 = 0;
  private literal = new Uint16Array(0x300);
  private readonly isMatch = new Uint16Array(NUM_STATES << POS_BITS_MAX);
  private readonly isRep = new Uint16Array(NUM_STATES);
  private readonly isRepG0 = new Uint16Array(NUM_STATES);
  private readonly isRepG1 = new Uint16Array(NUM_STATES);
  private readonly isRepG2 = new Uint16Array(NUM_STATES);
  private readonly isRep0Long = new Uint16Array(NUM_STATES << POS_BITS_MAX);
  private readonly posSlot = new Uint16Array(LEN_TO_POS_STATES << 6);
  private readonly posSpecial = new Uint16Array(1 + NUM_FULL_DISTANCES - END_POS_MODEL_INDEX);
  private readonly align = new Uint16Array(1 << ALIGN_BITS);
  private readonly matchLen = new LengthProbs();
  private readonly repLen = new LengthProbs();

  constructor(private readonly input: Uint8Array, offset: number, private readonly end: number,
    private readonly dictSize: number, private readonly out: OutputBuffer) {
    this.pos = offset;
  }

  run(): number {
    for (;;) {
      if (this.pos >= this.end) throw new XzError('EINVAL', 'LZMA2 data ends without its end marker');
      const control = this.input[this.pos++]!;
      if (control === 0x00) return this.pos;
      if (control === 0x01 || control === 0x02) {
        // As liblzma: a dictionary reset also demands new properties from the next LZMA chunk.
        if (control === 0x01) {
          this.resetDictionary();
          this.needProps = true;
        } else if (this.needDictReset) throw new XzError('EINVAL', 'LZMA2 stored chunk before the first dictionary reset');
        const size = this.u16be() + 1;
        this.copyStored(size);
        continue;
      }
      if (control < 0x80) throw new XzError('EINVAL', `LZMA2 control byte 0x${control.toString(16)} is invalid`);
      const unpacked = ((control & 0x1f) << 16) + this.u16be() + 1;
      const packed = this.u16be() + 1;
      const reset = (control >> 5) & 3;
      if (reset === 3) this.resetDictionary();
      else if (this.needDictReset) throw new XzError('EINVAL', 'LZMA2 chunk before the first dictionary reset');
      if (reset >= 2) {
        if (this.pos >= this.end) throw new XzError('EINVAL', 'LZMA2 data truncated in a chunk header');
        this.setProperties(this.input[this.pos++]!);
      } else if (this.needProps) {
        throw new XzError('EINVAL', 'LZMA2 chunk without the properties it needs');
      }
      if (reset >= 1) this.resetState();
      this.decodeChunk(unpacked, packed);
    }
  }

  private u16be(): number {
    if (this.pos + 2 > this.end) throw new XzError('EINVAL', 'LZMA2 data truncated in a chunk header');
    const v = (this.input[this.pos]! << 8) | this.input[this.pos + 1]!;
    this.pos += 2;
    return v;
  }

  private resetDictionary(): void {
    this.dictStart = this.out.length;
    this.needDictReset = false;
  }

  private copyStored(size: number): void {
    if (this.pos + size > this.end) throw new XzError('EINVAL', 'LZMA2 stored chunk runs past the end of the data');
    this.out.reserve(size);
    this.out.bytes.set(this.input.subarray(this.pos, this.pos + size), this.out.length);
    this.out.length += size;
    this.pos += size;
  }

  private setProperties(props: number): void {
    if (props >= 9 * 5 * 5) throw new XzError('EINVAL', `LZMA properties byte 0x${props.toString(16)} is invalid`);
    const lc = props % 9;
    const rest = Math.floor(props / 9);
    const lp = rest % 5;
    const pb = Math.floor(rest / 5);
    if (lc + lp > 4) throw new XzError('EINVAL', `LZMA2 properties lc=${lc} lp=${lp}: lc + lp exceeds 4`);
    this.lc = lc;
    this.lp = lp;
    this.pb = pb;
    this.needProps = false;
    this.literal = new Uint16Array(0x300 << (lc + lp));
  }

  private resetState(): void {
    this.state = 0;
    this.rep0 = this.rep1 = this.rep2 = this.rep3 = 0;
    for (const probs of [this.literal, this.isMatch, this.isRep, this.isRepG0, this.isRepG1, this.isRepG2,
      this.isRep0Long, this.posSlot, this.posSpecial, this.align]) probs.fill(PROB_INIT);
    this.matchLen.reset();
    this.repLen.reset();
  }

  // ---- range decoder ------------------------------------------------------------------------

  private initRangeDecoder(packed: number): void {
    if (this.pos + packed > this.end) throw new XzError('EINVAL', 'LZMA2 chunk runs past the end of the data');
    if (packed < 5 || this.input[this.pos] !== 0) throw new XzError('EINVAL', 'LZMA2 chunk has a corrupt range coder header');
    this.rcEnd = this.pos + packed;
    this.range = 0xffffffff;
    this.code = ((this.input[this.pos + 1]! << 24) | (this.input[this.pos + 2]! << 16) | (this.input[this.pos + 3]! << 8) | this.input[this.pos + 4]!) >>> 0;
    this.rcPos = this.pos + 5;
  }

  private nextByte(): number {
    if (this.rcPos >= this.rcEnd) throw new XzError('EINVAL', 'LZMA2 chunk needs more compressed bytes than it declares');
    return this.input[this.rcPos++]!;
  }

  private bit(probs: Uint16Array, i: number): number {
    const prob = probs[i]!;
    const bound = (this.range >>> 11) * prob;
    let bit: number;
    if (this.code < bound) {
      this.range = bound;
      probs[i] = prob + ((2048 - prob) >>> 5);
      bit = 0;
    } else {
      this.range -= bound;
      this.code -= bound;
      probs[i] = prob - (prob >>> 5);
      bit = 1;
    }
    if (this.range < TOP) {
      this.range = (this.range * 256) >>> 0;
      this.code = ((this.code * 256) + this.nextByte()) >>> 0;
    }
    return bit;
  }

  private tree(probs: Uint16Array, base: number, bits: number): number {
    let m = 1;
    for (let i = 0; i < bits; i++) m = (m << 1) | this.bit(probs, base + m);
    return m - (1 << bits);
  }

  private reverseTree(probs: Uint16Array, base: number, bits: number): number {
    let m = 1;
    let symbol = 0;
    for (let i = 0; i < bits; i++) {
      const b = this.bit(probs, base + m);
      m = (m << 1) | b;
      symbol |= b << i;
    }
    return symbol;
  }

  private directBits(count: number): number {
    let result = 0;
    for (let i = 0; i < count; i++) {
      this.range >>>= 1;
      let b = 0;
      if (this.code >= this.range) {
        this.code -= this.range;
        b = 1;
      }
      result = result * 2 + b;
      if (this.range < TOP) {
        this.range = (this.range * 256) >>> 0;
        this.code = ((this.code * 256) + this.nextByte()) >>> 0;
      }
    }
    return result;
  }

  private length(probs: LengthProbs, posState: number): number {
    if (this.bit(probs.choice, 0) === 0) return this.tree(probs.low, posState << 3, 3);
    if (this.bit(probs.choice, 1) === 0) return 8 + this.tree(probs.mid, posState << 3, 3);
    return 16 + this.tree(probs.high, 0, 8);
  }

  private distance(len: number): number {
    const lenState = Math.min(len, LEN_TO_POS_STATES - 1);
    const slot = this.tree(this.posSlot, lenState << 6, 6);
    if (slot < 4) return slot;
    const directCount = (slot >>> 1) - 1;
    let dist = (2 | (slot & 1)) * 2 ** directCount;
    if (slot < END_POS_MODEL_INDEX) {
      dist += this.reverseTree(this.posSpecial, dist - slot, directCount);
    } else {
      dist += this.directBits(directCount - ALIGN_BITS) * (1 << ALIGN_BITS);
      dist += this.reverseTree(this.align, 0, ALIGN_BITS);
    }
    return dist;
  }

  // ---- one LZMA chunk -------------------------------------------------------------------------

  private decodeChunk(unpacked: number, packed: number): void {
    this.initRangeDecoder(packed);
    const out = this.out;
    out.reserve(unpacked);
    const bytes = out.bytes;
    let at = out.length;
    const stop = at + unpacked;
    const dictStart = this.dictStart;
    const pbMask = (1 << this.pb) - 1;
    const lpMask = (1 << this.lp) - 1;
    const lc = this.lc;
    while (at < stop) {
      const rel = at - dictStart;
      const posState = rel & pbMask;
      let state = this.state;
      if (this.bit(this.isMatch, (state << POS_BITS_MAX) + posState) === 0) {
        const prev = rel > 0 ? bytes[at - 1]! : 0;
        const base = 0x300 * (((rel & lpMask) << lc) + (prev >>> (8 - lc)));
        let symbol = 1;
        if (state >= 7) {
          let matchByte = bytes[at - this.rep0 - 1]!;
          do {
            const matchBit = (matchByte >>> 7) & 1;
            matchByte <<= 1;
            const b = this.bit(this.literal, base + ((1 + matchBit) << 8) + symbol);
            symbol = (symbol << 1) | b;
            if (matchBit !== b) break;
          } while (symbol < 0x100);
        }
        while (symbol < 0x100) symbol = (symbol << 1) | this.bit(this.literal, base + symbol);
        bytes[at++] = symbol - 0x100;
        this.state = state < 4 ? 0 : state < 10 ? state - 3 : state - 6;
        continue;
      }
      let len: number;
      if (this.bit(this.isRep, state) !== 0) {
        if (rel === 0) throw new XzError('EINVAL', 'LZMA2 data repeats a match before any byte was decoded');
        if (this.bit(this.isRepG0, state) === 0) {
          if (this.bit(this.isRep0Long, (state << POS_BITS_MAX) + posState) === 0) {
            this.state = state < 7 ? 9 : 11;
            bytes[at] = bytes[at - this.rep0 - 1]!;
            at++;
            continue;
          }
        } else {
          let dist: number;
          if (this.bit(this.isRepG1, state) === 0) {
            dist = this.rep1;
          } else {
            if (this.bit(this.isRepG2, state) === 0) {
              dist = this.rep2;
            } else {
              dist = this.rep3;
              this.rep3 = this.rep2;
            }
            this.rep2 = this.rep1;
          }
          this.rep1 = this.rep0;
          this.rep0 = dist;
        }
        len = this.length(this.repLen, posState);
        state = state < 7 ? 8 : 11;
      } else {
        this.rep3 = this.rep2;
        this.rep2 = this.rep1;
        this.rep1 = this.rep0;
        len = this.length(this.matchLen, posState);
        state = state < 7 ? 7 : 10;
        this.rep0 = this.distance(len);
        if (this.rep0 === 0xffffffff) throw new XzError('EINVAL', 'LZMA2 data contains an LZMA end marker');
      }
      this.state = state;
      const rep0 = this.rep0;
      if (rep0 >= rel || rep0 >= this.dictSize) {
        throw new XzError('EINVAL', `LZMA2 match distance ${rep0 + 1} reaches before the dictionary (${rel} bytes)`);
      }
      len += MATCH_MIN_LEN;
      if (at + len > stop) throw new XzError('EINVAL', 'LZMA2 match runs past the end of its chunk');
      let from = at - rep0 - 1;
      for (const until = at + len; at < until;) bytes[at++] = bytes[from++]!;
    }
    out.length = at;
    if (this.rcPos !== this.rcEnd || this.code !== 0) {
      throw new XzError('EINVAL', 'LZMA2 chunk does not end where its compressed size says');
    }
    this.pos = this.rcEnd;
  }
}

class LengthProbs {
  /** choice, choice2 */
  readonly choice = new Uint16Array(2);
  readonly low = new Uint16Array(16 << 3);
  readonly mid = new Uint16Array(16 << 3);
  readonly high = new Uint16Array(256);

  reset(): void {
    this.choice.fill(PROB_INIT);
    this.low.fill(PROB_INIT);
    this.mid.fill(PROB_INIT);
    this.high.fill(PROB_INIT);
  }
}
