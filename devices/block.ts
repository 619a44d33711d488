// virtio-blk (virtio 1.2 §5.2) over a raw image file: one request queue served with many
// requests in flight (they complete out of order), data moved directly between the file
// and guest memory, FLUSH as fdatasync, DISCARD and WRITE_ZEROES as hole punching,
// GET_ID, and a read-only mode. Guest mistakes end as a status byte, never as an
// exception; host I/O errors end as VIRTIO_BLK_S_IOERR and a counter.

import { warn } from '../framework/log.ts';
import { RawFile, RawFileError, type BlockFile } from '../framework/io/raw-file.ts';
import { ConfigSpace } from '../framework/virtio/config-space.ts';
import { VIRTIO_ID_BLOCK, featureBits } from '../framework/virtio/constants.ts';
import type { DescriptorChain } from '../framework/virtio/descriptor-chain.ts';
import { VirtioDevice, queue } from '../framework/virtio/device.ts';
import { MAX_CHAIN_DESCRIPTORS } from '../framework/virtio/split-queue.ts';
import {
  BlockRequest, MISSING_HEADER, SECTOR_SIZE, SEGMENT_SIZE, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD,
  VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_TOPOLOGY,
  VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
  VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, readSegments,
} from './block-request.ts';

/** struct virtio_blk_config (§5.2.4) up to write_zeroes_may_unmap; geometry, MQ and secure erase are not offered. */
const BLOCK_CONFIG = {
  capacity: ['u64', 0],
  size_max: ['u32', 8],
  seg_max: ['u32', 12],
  blk_size: ['u32', 20],
  physical_block_exp: ['u8', 24],
  alignment_offset: ['u8', 25],
  min_io_size: ['u16', 26],
  opt_io_size: ['u32', 28],
  max_discard_sectors: ['u32', 36],
  max_discard_seg: ['u32', 40],
  discard_sector_alignment: ['u32', 44],
  max_write_zeroes_sectors: ['u32', 48],
  max_write_zeroes_seg: ['u32', 52],
  write_zeroes_may_unmap: ['u8', 56],
} as const;

const QUEUE_SIZE = 256;
/** Data segments per request: a chain's buffers (at most the queue, and the chain cap) minus header and status, as QEMU. */
const SEG_MAX = Math.min(QUEUE_SIZE, MAX_CHAIN_DESCRIPTORS) - 2;
/** Largest single data segment the driver should build. */
const SIZE_MAX = 1 << 20;
/** Sectors per discard / write-zeroes segment: (2^31 - 1) / 512, as QEMU. */
const MAX_DISCARD_SECTORS = 0x3fffff;
const MAX_DISCARD_SEGMENTS = 32;

export interface BlockOptions {
  /** Expose the disk read-only (VIRTIO_BLK_F_RO); a path is then opened 'r'. */
  readOnly?: boolean;
  /** GET_ID answer: ASCII, at most 20 bytes (NUL-padded). Default: empty. */
  serial?: string;
  /** Logical block size advertised in blk_size (power of two, 512..65536); the protocol stays in 512-byte sectors. */
  blockSize?: number;
}

export interface BlockStats {
  /** Requests that failed because the backing file failed (EIO, ENOSPC...). */
  ioErrors: number;
}

export class BlockDevice extends VirtioDevice {
  readonly type = VIRTIO_ID_BLOCK;
  override readonly features: bigint;
  override readonly config = new ConfigSpace(BLOCK_CONFIG);
  readonly queues = [queue('requestq', QUEUE_SIZE, (requests) => requests.serve(this.handle))];
  readonly stats: BlockStats = { ioErrors: 0 };
  /** Disk size in 512-byte sectors. */
  readonly capacity: number;
  readonly readOnly: boolean;
  private readonly serial: Uint8Array;

  /** Open the raw image at `path` ('r+', or 'r' when read-only); `close()` closes it. */
  static open(path: string, options: BlockOptions = {}): BlockDevice {
    const file = RawFile.open(path, { readOnly: options.readOnly ?? false });
    try {
      return new BlockDevice(file, options);
    } catch (err) {
      file.close();
      throw err;
    }
  }

  /** A disk over an already open backing file; the device owns it from now on. */
  constructor(private readonly file: BlockFile, options: BlockOptions = {}) {
    super();
    if (file.size % SECTOR_SIZE !== 0) {
      throw new RawFileError('EINVAL', file.path, `image size ${file.size} is not a multiple of ${SECTOR_SIZE} bytes`);
    }
    const blockSize = options.blockSize ?? SECTOR_SIZE;
    if (!(blockSize >= SECTOR_SIZE && blockSize <= 65536 && (blockSize & (blockSize - 1)) === 0)) {
      throw new RangeError(`block: blockSize ${blockSize} is not a power of two in 512..65536`);
    }
    this.serial = encodeSerial(options.serial ?? '');
    this.readOnly = (options.readOnly ?? false) || file.readOnly;
    this.capacity = file.size / SECTOR_SIZE;

    const common = featureBits(VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH,
      VIRTIO_BLK_F_TOPOLOGY);
    this.features = this.readOnly
      ? common | featureBits(VIRTIO_BLK_F_RO)
      : common | featureBits(VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES);

    const physical = Math.max(blockSize, file.ioSize);
    const c = this.config;
    c.set('capacity', this.capacity);
    c.set('size_max', SIZE_MAX);
    c.set('seg_max', SEG_MAX);
    c.set('blk_size', blockSize);
    c.set('physical_block_exp', Math.log2(physical / blockSize));
    c.set('min_io_size', physical / blockSize);
    c.set('max_discard_sectors', MAX_DISCARD_SECTORS);
    c.set('max_discard_seg', MAX_DISCARD_SEGMENTS);
    c.set('discard_sector_alignment', physical / SECTOR_SIZE);
    c.set('max_write_zeroes_sectors', MAX_DISCARD_SECTORS);
    c.set('max_write_zeroes_seg', MAX_DISCARD_SEGMENTS);
    c.set('write_zeroes_may_unmap', 1);
  }

  /** Close the backing file (after the device was reset or the VM stopped). */
  close(): void {
    this.file.close();
  }

  /** One request; returns the used length (data written into the chain plus the status byte). */
  private readonly handle = (chain: DescriptorChain): number | Promise<number> => {
    const req = BlockRequest.parse(chain);
    if (req === null) {
      warn('virtio-blk', `request ${chain.head} has no status byte: returned unanswered`);
      return 0;
    }
    switch (req.type) {
      case VIRTIO_BLK_T_IN: return this.read(req);
      case VIRTIO_BLK_T_OUT: return this.write(req);
      case VIRTIO_BLK_T_FLUSH: return this.flush(req);
      case VIRTIO_BLK_T_GET_ID: return this.getId(req);
      case VIRTIO_BLK_T_DISCARD: return this.deallocate(req, false);
      case VIRTIO_BLK_T_WRITE_ZEROES: return this.deallocate(req, true);
      case MISSING_HEADER:
        warn('virtio-blk', `request ${chain.head} is shorter than its header`);
        return req.finish(VIRTIO_BLK_S_IOERR);
      default: return req.finish(VIRTIO_BLK_S_UNSUPP);
    }
  };

  private read(req: BlockRequest): number | Promise<number> {
    const bytes = req.dataInLength;
    if (!this.inRange(req.sector, bytes)) return req.finish(VIRTIO_BLK_S_IOERR);
    if (bytes === 0) return req.finish(VIRTIO_BLK_S_OK);
    return this.statusAfter(req, this.file.read(req.dataIn(), req.sector * SECTOR_SIZE), bytes, 'read');
  }

  private write(req: BlockRequest): number | Promise<number> {
    const bytes = req.dataOutLength;
    if (this.readOnly || !this.inRange(req.sector, bytes)) return req.finish(VIRTIO_BLK_S_IOERR);
    if (bytes === 0) return req.finish(VIRTIO_BLK_S_OK);
    return this.statusAfter(req, this.file.write(req.dataOut(), req.sector * SECTOR_SIZE), 0, 'write');
  }

  private flush(req: BlockRequest): number | Promise<number> {
    if (this.readOnly) return req.finish(VIRTIO_BLK_S_OK);
    return this.statusAfter(req, this.file.sync(), 0, 'flush');
  }

  private getId(req: BlockRequest): number {
    const n = Math.min(VIRTIO_BLK_ID_BYTES, req.dataInLength);
    req.chain.writer().write(this.serial.subarray(0, n));
    return req.finish(VIRTIO_BLK_S_OK, n);
  }

  /** DISCARD (advisory deallocation) or WRITE_ZEROES: validate every segment first, then execute them in order. */
  private deallocate(req: BlockRequest, zeroes: boolean): number | Promise<number> {
    if (this.readOnly) return req.finish(VIRTIO_BLK_S_IOERR);
    const bytes = req.dataOutLength;
    const count = bytes / SEGMENT_SIZE;
    if (!Number.isInteger(count) || count === 0 || count > MAX_DISCARD_SEGMENTS) return req.finish(VIRTIO_BLK_S_IOERR);
    const segments = readSegments(req.payload!, count);
    const allowedFlags = zeroes ? VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP : 0;
    // Unknown flags, and unmap on a discard, are UNSUPP (§5.2.6.2) whatever else is wrong.
    if (segments.some((s) => (s.flags & ~allowedFlags) !== 0)) return req.finish(VIRTIO_BLK_S_UNSUPP);
    if (segments.some((s) => s.sectors > MAX_DISCARD_SECTORS || !this.inRange(s.sector, s.sectors * SECTOR_SIZE))) {
      return req.finish(VIRTIO_BLK_S_IOERR);
    }
    const work = (async () => {
      for (const s of segments) {
        const position = s.sector * SECTOR_SIZE, length = s.sectors * SECTOR_SIZE;
        if (zeroes) await this.file.writeZeroes(position, length, (s.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP) !== 0);
        else await this.file.discard(position, length);
      }
    })();
    return this.statusAfter(req, work, 0, zeroes ? 'write-zeroes' : 'discard');
  }

  /** Whole sectors inside the disk: `bytes` a multiple of 512 and [sector, sector + bytes/512) within capacity. */
  private inRange(sector: number, bytes: number): boolean {
    return bytes % SECTOR_SIZE === 0 && sector <= this.capacity && bytes / SECTOR_SIZE <= this.capacity - sector;
  }

  /** Status once `work` settles: OK with `dataBytes` reported, or IOERR (counted) when the host failed. */
  private async statusAfter(req: BlockRequest, work: Promise<void>, dataBytes: number, what: string): Promise<number> {
    try {
      await work;
      return req.finish(VIRTIO_BLK_S_OK, dataBytes);
    } catch (err) {
      this.stats.ioErrors++;
      const code = (err as { code?: unknown }).code ?? (err instanceof Error ? err.message : String(err));
      warn('virtio-blk', `${what} at sector ${req.sector} of ${this.file.path}: ${String(code)}`);
      return req.finish(VIRTIO_BLK_S_IOERR);
    }
  }
}

function encodeSerial(serial: string): Uint8Array {
  if (!/^[\x20-\x7e]*$/.test(serial) || serial.length > VIRTIO_BLK_ID_BYTES) {
    throw new RangeError(`block: serial ${JSON.stringify(serial)} is not printable ASCII of at most ${VIRTIO_BLK_ID_BYTES} bytes`);
  }
  const bytes = new Uint8Array(VIRTIO_BLK_ID_BYTES);
  for (let i = 0; i < serial.length; i++) bytes[i] = serial.charCodeAt(i);
  return bytes;
}
