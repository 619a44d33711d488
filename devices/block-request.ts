// The virtio-blk wire format (virtio 1.2 §5.2): feature bits, request types, status
// codes, and one request as the device reads it from a descriptor chain:
//   struct virtio_blk_req { le32 type; le32 reserved; le64 sector; u8 data[]; u8 status; }
// with the header in the device-readable part and the status in the LAST device-writable
// byte; plus the segment list of discard and write-zeroes requests.

import type { ChainReader, DescriptorChain } from '../framework/virtio/descriptor-chain.ts';

// Feature bits (§5.2.3).
export const VIRTIO_BLK_F_SIZE_MAX = 1;
export const VIRTIO_BLK_F_SEG_MAX = 2;
export const VIRTIO_BLK_F_GEOMETRY = 4;
export const VIRTIO_BLK_F_RO = 5;
export const VIRTIO_BLK_F_BLK_SIZE = 6;
export const VIRTIO_BLK_F_FLUSH = 9;
export const VIRTIO_BLK_F_TOPOLOGY = 10;
export const VIRTIO_BLK_F_CONFIG_WCE = 11;
export const VIRTIO_BLK_F_MQ = 12;
export const VIRTIO_BLK_F_DISCARD = 13;
export const VIRTIO_BLK_F_WRITE_ZEROES = 14;

// Request types (§5.2.6).
export const VIRTIO_BLK_T_IN = 0;
export const VIRTIO_BLK_T_OUT = 1;
export const VIRTIO_BLK_T_FLUSH = 4;
export const VIRTIO_BLK_T_GET_ID = 8;
export const VIRTIO_BLK_T_GET_LIFETIME = 10;
export const VIRTIO_BLK_T_DISCARD = 11;
export const VIRTIO_BLK_T_WRITE_ZEROES = 13;
export const VIRTIO_BLK_T_SECURE_ERASE = 14;

// Status values.
export const VIRTIO_BLK_S_OK = 0;
export const VIRTIO_BLK_S_IOERR = 1;
export const VIRTIO_BLK_S_UNSUPP = 2;

/** Protocol unit of `sector`, whatever blk_size says. */
export const SECTOR_SIZE = 512;
export const REQUEST_HEADER_SIZE = 16;
/** struct virtio_blk_discard_write_zeroes { le64 sector; le32 num_sectors; le32 flags; } */
export const SEGMENT_SIZE = 16;
export const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1;
/** GET_ID answers with a NUL-padded ASCII string of this many bytes. */
export const VIRTIO_BLK_ID_BYTES = 20;

/** `type` of a request whose chain is too short to hold the header. */
export const MISSING_HEADER = -1;

export class BlockRequest {
  private constructor(
    readonly chain: DescriptorChain,
    /** Request type, or MISSING_HEADER. */
    readonly type: number,
    /** First sector; exact below 2^53, and any larger value is past every disk anyway. */
    readonly sector: number,
    /** Cursor over the device-readable bytes after the header (data-out or segments). */
    readonly payload: ChainReader | null,
    /** The last device-writable buffer: its last byte carries the status. */
    private readonly statusBuffer: Uint8Array,
  ) {}

  /** The request in `chain`, or null when no device-writable byte exists to carry a status. */
  static parse(chain: DescriptorChain): BlockRequest | null {
    const writable = chain.writable;
    if (writable.length === 0) return null;
    const statusBuffer = writable[writable.length - 1]!;
    if (chain.readableBytes < REQUEST_HEADER_SIZE) return new BlockRequest(chain, MISSING_HEADER, 0, null, statusBuffer);
    const reader = chain.reader();
    const type = reader.u32();
    reader.skip(4); // reserved (legacy ioprio)
    const sectorLow = reader.u32();
    const sector = sectorLow + reader.u32() * 2 ** 32;
    return new BlockRequest(chain, type, sector, reader, statusBuffer);
  }

  /** Device-writable bytes before the status byte (the data of IN and GET_ID). */
  get dataInLength(): number {
    return this.chain.writableBytes - 1;
  }

  /** Device-readable bytes after the header (the data of OUT, the segments of DISCARD / WRITE_ZEROES). */
  get dataOutLength(): number {
    return this.payload?.remaining ?? 0;
  }

  /**
   * Zero-copy views of all data-in bytes: the chain's writable views, the last one short of
   * the status byte (dropped when the status has a descriptor of its own, as Linux builds it).
   */
  dataIn(): Uint8Array[] {
    const writable = this.chain.writable;
    const last = writable.length - 1;
    const status = this.statusBuffer;
    if (status.length === 1) return writable.slice(0, last);
    const views = writable.slice();
    views[last] = status.subarray(0, status.length - 1);
    return views;
  }

  /** Zero-copy views of all data-out bytes. */
  dataOut(): Uint8Array[] {
    const payload = this.payload;
    return payload === null ? [] : payload.views(payload.remaining);
  }

  /** Store the status byte; returns the used length: `dataBytes` written before it, plus the status. */
  finish(status: number, dataBytes = 0): number {
    this.statusBuffer[this.statusBuffer.length - 1] = status;
    return dataBytes + 1;
  }
}

export interface Segment {
  sector: number;
  sectors: number;
  flags: number;
}

/** Copy `count` segments out of guest memory (the guest cannot change them while they execute). */
export function readSegments(payload: ChainReader, count: number): Segment[] {
  const segments: Segment[] = [];
  for (let i = 0; i < count; i++) {
    const sectorLow = payload.u32();
    const sector = sectorLow + payload.u32() * 2 ** 32;
    segments.push({ sector, sectors: payload.u32(), flags: payload.u32() });
  }
  return segments;
}
