// The x86 port-I/O space (0..0xffff) as the VMM serves it: handlers registered on port ranges,
// and a shared bitmap of claimed ports that vCPU threads read so that accesses nobody claims
// (port 0x80 delays, probes of absent ISA devices) are answered inside the vCPU thread without
// a round trip to the main thread. Unclaimed reads see a floating bus (all ones).

/** A device's ports. Offsets are relative to its first port; `data.length` is the access width. */
export interface PortHandler {
  read(offset: number, data: Uint8Array): void;
  write(offset: number, data: Uint8Array): void;
}

interface Range {
  first: number;
  end: number; // exclusive
  name: string;
  handler: PortHandler;
}

export const PORT_COUNT = 0x10000;

export class PortBus {
  /** One bit per port, set while a handler claims it. Shared with the vCPU threads. */
  readonly claimed = new Uint8Array(new SharedArrayBuffer(PORT_COUNT / 8));
  private ranges: Range[] = [];
  /** Accesses that reached the bus but hit no handler (reads answered with all ones). */
  unclaimed = 0;

  register(first: number, count: number, handler: PortHandler, name = 'device'): void {
    if (!Number.isInteger(first) || !Number.isInteger(count) || first < 0 || count <= 0 || first + count > PORT_COUNT) {
      throw new RangeError(`ports for ${name}: 0x${first.toString(16)}+${count} is not inside 0..0xffff`);
    }
    const end = first + count;
    const clash = this.ranges.find((r) => first < r.end && r.first < end);
    if (clash) throw new RangeError(`ports for ${name} at 0x${first.toString(16)} overlap ${clash.name} at 0x${clash.first.toString(16)}`);
    this.ranges.push({ first, end, name, handler });
    this.ranges.sort((a, b) => a.first - b.first);
    for (let p = first; p < end; p++) Atomics.or(this.claimed, p >> 3, 1 << (p & 7));
  }

  unregister(first: number): void {
    const range = this.ranges.find((r) => r.first === first);
    if (!range) return;
    this.ranges = this.ranges.filter((r) => r !== range);
    for (let p = range.first; p < range.end; p++) Atomics.and(this.claimed, p >> 3, ~(1 << (p & 7)));
  }

  isClaimed(port: number): boolean {
    return (this.claimed[port >> 3]! & (1 << (port & 7))) !== 0;
  }

  /** Dispatch one access of data.length bytes. Returns false when no handler claims its first port. */
  dispatch(port: number, isWrite: boolean, data: Uint8Array): boolean {
    for (const r of this.ranges) {
      if (port < r.first) break;
      if (port < r.end) {
        if (isWrite) r.handler.write(port - r.first, data);
        else r.handler.read(port - r.first, data);
        return true;
      }
    }
    this.unclaimed++;
    if (!isWrite) data.fill(0xff);
    return false;
  }
}
