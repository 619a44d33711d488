// The model's stand-in for the VMM process's address space: every buffer the backend maps or
// passes by pointer gets a (fake) user address, so the model can do what the kernel does with
// pointers: copy_from_user (EFAULT on a bad one) and pin_user_pages (zero-copy, all or nothing).

interface Entry {
  readonly address: bigint;
  readonly bytes: Uint8Array;
  readonly mapped: boolean;
}

const PAGE = 4096n;
/** Where fake addresses start: page aligned, far from zero so a stray small integer is EFAULT. */
const BASE = 0x7f00_0000_0000n;

export class AddressSpace {
  private readonly entries: Entry[] = [];
  private next = BASE;

  /** A new page-aligned mapping (mmap). */
  map(bytes: Uint8Array): bigint {
    return this.add(bytes, true);
  }

  unmap(address: bigint): boolean {
    const i = this.entries.findIndex((e) => e.mapped && e.address === address);
    if (i < 0) return false;
    this.entries.splice(i, 1);
    return true;
  }

  /** The address of `bytes`: inside an existing entry over the same buffer, or a new one. */
  addressOf(bytes: Uint8Array): bigint {
    for (const e of this.entries) {
      if (e.bytes.buffer !== bytes.buffer) continue;
      const offset = bytes.byteOffset - e.bytes.byteOffset;
      if (offset >= 0 && offset + bytes.byteLength <= e.bytes.byteLength) return e.address + BigInt(offset);
    }
    return this.add(bytes, false);
  }

  /** Zero-copy view of [address, address+length) if one entry holds all of it, else null (EFAULT). */
  resolve(address: bigint, length: bigint): Uint8Array | null {
    if (address < 0n || length < 0n) return null;
    for (const e of this.entries) {
      const end = e.address + BigInt(e.bytes.byteLength);
      if (address >= e.address && address + length <= end) {
        const offset = Number(address - e.address);
        return e.bytes.subarray(offset, offset + Number(length));
      }
    }
    return null;
  }

  /** copy_from_user: a copy of the bytes, or null (EFAULT). */
  copyFrom(address: bigint, length: number): Uint8Array | null {
    const view = this.resolve(address, BigInt(length));
    return view === null ? null : view.slice();
  }

  get mappedCount(): number {
    return this.entries.filter((e) => e.mapped).length;
  }

  private add(bytes: Uint8Array, mapped: boolean): bigint {
    const address = this.next;
    const pages = (BigInt(bytes.byteLength) + PAGE - 1n) / PAGE;
    this.next += (pages + 1n) * PAGE; // a guard page between entries: no access spans two
    this.entries.push({ address, bytes, mapped });
    return address;
  }
}
