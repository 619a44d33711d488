// Device-specific configuration space: a little-endian struct declared field by
// field, read and written by transports at any offset and width. Bytes outside
// the layout read as zero; writes land only in fields the device marks writable.
// A device-side change bumps the generation counter and raises a config
// interrupt through `onChange` (wired by the device kit).

export type ConfigFieldType = 'u8' | 'u16' | 'u32' | 'u64';
export type ConfigLayout = Record<string, readonly [ConfigFieldType, number]>;

const WIDTH: Record<ConfigFieldType, number> = { u8: 1, u16: 2, u32: 4, u64: 8 };

export interface ConfigSpaceOptions<K extends string> {
  /** Fields the driver may write (e.g. block `writeback`, console `emerg_wr`). */
  writable?: readonly K[];
  /** Called after the driver wrote (part of) a writable field. */
  onDriverWrite?(field: K, value: bigint): void;
}

/** What transports need from a device's configuration space. */
export interface DeviceConfig {
  readonly size: number;
  readonly generation: number;
  onChange: (() => void) | null;
  read(offset: number, dst: Uint8Array): void;
  write(offset: number, src: Uint8Array): void;
}

export class ConfigSpace<L extends ConfigLayout = ConfigLayout> implements DeviceConfig {
  readonly bytes: Uint8Array;
  readonly size: number;
  /** Config generation counter (virtio 1.2 §2.5.1); bumped on every device-side change. */
  generation = 0;
  /** Set by the device kit: raise a configuration change notification. */
  onChange: (() => void) | null = null;
  private readonly view: DataView;
  private readonly writableRanges: { field: keyof L & string; start: number; end: number }[] = [];

  constructor(readonly layout: L, private readonly options: ConfigSpaceOptions<keyof L & string> = {}) {
    let size = 0;
    for (const [type, offset] of Object.values(layout)) size = Math.max(size, offset + WIDTH[type]);
    this.size = size;
    this.bytes = new Uint8Array(size);
    this.view = new DataView(this.bytes.buffer);
    for (const field of options.writable ?? []) {
      const [type, offset] = layout[field]!;
      this.writableRanges.push({ field, start: offset, end: offset + WIDTH[type] });
    }
  }

  static empty(): ConfigSpace<{}> {
    return new ConfigSpace({});
  }

  get(field: keyof L & string): bigint {
    const [type, offset] = this.layout[field]!;
    switch (type) {
      case 'u8': return BigInt(this.view.getUint8(offset));
      case 'u16': return BigInt(this.view.getUint16(offset, true));
      case 'u32': return BigInt(this.view.getUint32(offset, true));
      case 'u64': return this.view.getBigUint64(offset, true);
    }
  }

  /** Sets a field without notifying the driver (initial values). */
  set(field: keyof L & string, value: number | bigint): void {
    const [type, offset] = this.layout[field]!;
    switch (type) {
      case 'u8': this.view.setUint8(offset, Number(value)); break;
      case 'u16': this.view.setUint16(offset, Number(value), true); break;
      case 'u32': this.view.setUint32(offset, Number(value), true); break;
      case 'u64': this.view.setBigUint64(offset, BigInt(value), true); break;
    }
  }

  /** Device-side change visible to a running driver: new generation and a config interrupt. */
  update(values: Partial<Record<keyof L & string, number | bigint>>): void {
    for (const [field, value] of Object.entries(values)) this.set(field, value as number | bigint);
    this.generation = (this.generation + 1) >>> 0;
    this.onChange?.();
  }

  /** Driver read of `dst.length` bytes at `offset`; bytes past the end read as zero. */
  read(offset: number, dst: Uint8Array): void {
    for (let i = 0; i < dst.length; i++) {
      const at = offset + i;
      dst[i] = at >= 0 && at < this.size ? this.bytes[at]! : 0;
    }
  }

  /** Driver write; only bytes inside writable fields change. */
  write(offset: number, src: Uint8Array): void {
    for (const range of this.writableRanges) {
      const start = Math.max(offset, range.start);
      const end = Math.min(offset + src.length, range.end);
      if (start >= end) continue;
      this.bytes.set(src.subarray(start - offset, end - offset), start);
      this.options.onDriverWrite?.(range.field, this.get(range.field));
    }
  }
}
