// The guest-physical MMIO address space as the VMM sees it: device handlers
// registered on address ranges, and vCPU MMIO exits (an observable of typed
// accesses) dispatched to them. Reads are answered by filling `data`; accesses
// nobody claims read as zero and are counted, never thrown.

import type { Observable, Subscription } from 'rxjs';

/** A device's register window. Offsets are relative to its base; `data.length` is the access width. */
export interface MmioHandler {
  read(offset: number, data: Uint8Array): void;
  write(offset: number, data: Uint8Array): void;
}

/** One guest MMIO access (a vCPU exit). For reads, fill `data` (its length is the access width). */
export interface MmioAccess {
  readonly addr: number;
  readonly isWrite: boolean;
  readonly data: Uint8Array;
}

interface Mapping {
  base: number;
  end: number; // exclusive
  name: string;
  handler: MmioHandler;
}

export class MmioBus {
  private mappings: Mapping[] = [];
  private last: Mapping | null = null;
  /** Accesses that hit no device (reads answered with zeros). */
  unclaimed = 0;

  register(base: number, size: number, handler: MmioHandler, name = 'device'): void {
    if (!Number.isSafeInteger(base) || !Number.isSafeInteger(size) || base < 0 || size <= 0) {
      throw new RangeError(`MMIO range for ${name}: base 0x${base.toString(16)} size ${size} is not a valid range`);
    }
    const end = base + size;
    const clash = this.mappings.find((m) => base < m.end && m.base < end);
    if (clash) {
      throw new RangeError(`MMIO range for ${name} at 0x${base.toString(16)} overlaps ${clash.name} at 0x${clash.base.toString(16)}`);
    }
    this.mappings.push({ base, end, name, handler });
    this.mappings.sort((a, b) => a.base - b.base);
  }

  unregister(base: number): void {
    this.mappings = this.mappings.filter((m) => m.base !== base);
    this.last = null;
  }

  /** Dispatch one access. Returns false when no device claims the whole access. */
  dispatch(addr: number, isWrite: boolean, data: Uint8Array): boolean {
    const m = this.find(addr, data.length);
    if (!m) {
      this.unclaimed++;
      if (!isWrite) data.fill(0);
      return false;
    }
    if (isWrite) m.handler.write(addr - m.base, data);
    else m.handler.read(addr - m.base, data);
    return true;
  }

  handle(access: MmioAccess): boolean {
    return this.dispatch(access.addr, access.isWrite, access.data);
  }

  /** Serve a stream of MMIO exits (e.g. a vCPU's). */
  connect(exits: Observable<MmioAccess>): Subscription {
    return exits.subscribe((access) => this.handle(access));
  }

  private find(addr: number, len: number): Mapping | null {
    const last = this.last;
    if (last && addr >= last.base && addr + len <= last.end) return last;
    for (const m of this.mappings) {
      if (addr >= m.base && addr + len <= m.end) return (this.last = m);
      if (m.base > addr) break;
    }
    return null;
  }
}
