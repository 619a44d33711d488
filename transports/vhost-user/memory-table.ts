// The front-end's memory table (SET_MEM_TABLE): validates every region a
// front-end describes, maps each region's fd at its mmap offset, and keeps both
// address spaces: guest-physical (descriptor addresses, the GuestMemory the
// device kit reads) and front-end virtual (SET_VRING_ADDR ring addresses).
//
// One mmap per region, but the device kit sees it as GuestRegions of at most 4 GiB, split
// at guest-physical multiples of 4 GiB: a zero-copy view (koffi.view) cannot exceed 2^32
// bytes, and QEMU -m 8G sends a 6 GiB region. Guest buffers across a split are served as
// two views (GuestMemory.slices). A ring area must lie inside one piece, which it does
// for Linux guests: rings are naturally aligned page-allocator blocks.
//
// A hostile front-end controls every number here. Rules: 1..8 regions, no
// zero sizes, no u64 wrap-around in any base + size, guest addresses below 2^53,
// no overlap in either address space (gaps are fine: real guests have holes), and
// each fd a regular file (memfd, tmpfs, hugetlbfs) at least mmap_offset + size
// long, so touching the mapping cannot raise SIGBUS. A front-end that shrinks the
// file afterwards can still crash us; the protocol has no defence (libvhost-user
// and rust-vmm share this).

import { fstatSync, type BigIntStats } from 'node:fs';
import { GuestMemory, type GuestRegion } from '../../framework/guest-memory.ts';
import * as libc from '../../native/libc.ts';
import { type MemoryRegionDescription, protocolError } from './protocol.ts';

/** mmap offsets are aligned down to this (a multiple of every page size: 4K, 16K, 64K). */
const MAP_ALIGN = 0x10000n;
const U64_END = 1n << 64n;
/** Guest addresses are JS numbers: a region must end at or below 2^53 - 1. */
const GUEST_ADDRESS_END = BigInt(Number.MAX_SAFE_INTEGER);
/** Largest zero-copy view, and the guest-physical alignment of the pieces a region is cut into. */
const PIECE = 2 ** 32;

interface Mapping {
  /** Guest-physical base and end (exclusive). */
  guestBase: number;
  guestEnd: number;
  /** Front-end virtual base and end (exclusive). */
  userBase: bigint;
  userEnd: bigint;
  /** What to munmap. */
  hostAddress: bigint;
  hostLength: number;
}

export class MemoryTable {
  /** Guest-physical view for the device kit. */
  readonly guest: GuestMemory;
  private readonly mappings: Mapping[];
  private unmapped = false;

  private constructor(guest: GuestMemory, mappings: Mapping[]) {
    this.guest = guest;
    this.mappings = mappings;
  }

  /**
   * Validate `regions` and map `fds[i]` for region i. Throws VhostUserProtocolError
   * (nothing stays mapped then). The fds stay open: the caller closes them.
   */
  static map(regions: readonly MemoryRegionDescription[], fds: readonly number[]): MemoryTable {
    validateRegions(regions);
    if (fds.length !== regions.length) {
      protocolError('EBADF', `SET_MEM_TABLE with ${regions.length} regions carries ${fds.length} fds`);
    }
    const mappings: Mapping[] = [];
    const guestRegions: GuestRegion[] = [];
    try {
      regions.forEach((r, i) => {
        const mapping = mapRegion(r, fds[i]!, i);
        mappings.push(mapping); // from here on, a throw unmaps it too
        guestRegions.push(...pieces(mapping, i));
      });
      return new MemoryTable(new GuestMemory(guestRegions), mappings);
    } catch (err) {
      for (const m of mappings) libc.munmap(m.hostAddress, m.hostLength, 'vhost-user memory region');
      throw err;
    }
  }

  get regionCount(): number {
    return this.mappings.length;
  }

  /**
   * Guest-physical address of the front-end virtual range [user, user + length), or null
   * unless the whole range lies inside one region.
   */
  translate(user: bigint, length: number): number | null {
    for (const m of this.mappings) {
      if (user >= m.userBase && user + BigInt(length) <= m.userEnd) return m.guestBase + Number(user - m.userBase);
    }
    return null;
  }

  /** Release the mappings. Every view into `guest` is dangling afterwards: stop the rings first. */
  unmap(): void {
    if (this.unmapped) return;
    this.unmapped = true;
    for (const m of this.mappings) libc.munmap(m.hostAddress, m.hostLength, 'vhost-user memory region');
  }
}

function validateRegions(regions: readonly MemoryRegionDescription[]): void {
  regions.forEach((r, i) => {
    const what = `memory region ${i}`;
    if (r.size === 0n) protocolError('EINVAL', `${what} has size 0`);
    if (r.guestAddress + r.size > GUEST_ADDRESS_END) {
      protocolError('EINVAL', `${what} guest range 0x${hex(r.guestAddress)}+0x${hex(r.size)} ends past 2^53`);
    }
    if (r.userAddress + r.size > U64_END) {
      protocolError('EINVAL', `${what} user range 0x${hex(r.userAddress)}+0x${hex(r.size)} wraps around`);
    }
    if (r.mmapOffset + r.size > U64_END) {
      protocolError('EINVAL', `${what} mmap offset 0x${hex(r.mmapOffset)}+0x${hex(r.size)} wraps around`);
    }
    for (let j = 0; j < i; j++) {
      const o = regions[j]!;
      if (overlaps(r.guestAddress, r.size, o.guestAddress, o.size)) {
        protocolError('EINVAL', `memory regions ${j} and ${i} overlap in guest-physical space`);
      }
      if (overlaps(r.userAddress, r.size, o.userAddress, o.size)) {
        protocolError('EINVAL', `memory regions ${j} and ${i} overlap in front-end address space`);
      }
    }
  });
}

/** Check region `i` against its file and map it (the whole region, at its mmap offset). */
function mapRegion(r: MemoryRegionDescription, fd: number, i: number): Mapping {
  const what = `memory region ${i}`;
  let st: BigIntStats;
  try {
    st = fstatSync(fd, { bigint: true });
  } catch (err) {
    protocolError('EBADF', `${what}: fstat failed: ${err instanceof Error ? err.message : String(err)}`);
  }
  if (!st.isFile()) protocolError('EBADF', `${what}: fd is not a regular file (memfd, tmpfs or hugetlbfs)`);
  const fileSize = st.size;
  if (r.mmapOffset + r.size > fileSize) {
    protocolError('EINVAL', `${what} maps 0x${hex(r.mmapOffset)}+0x${hex(r.size)} of a file of 0x${hex(fileSize)} bytes`);
  }
  const mapOffset = r.mmapOffset - (r.mmapOffset % MAP_ALIGN);
  const lead = Number(r.mmapOffset - mapOffset);
  const size = Number(r.size);
  const guestBase = Number(r.guestAddress);
  // GuestMemory needs naturally aligned guest accesses to land on aligned host offsets.
  if ((lead - guestBase) % 8 !== 0) {
    protocolError('EINVAL', `${what}: mmap offset and guest address 0x${hex(r.guestAddress)} differ in alignment`);
  }
  const hostLength = lead + size;
  let hostAddress: bigint;
  try {
    hostAddress = libc.mmap(hostLength, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd, Number(mapOffset),
      `mmap ${what}`);
  } catch (err) {
    protocolError('EINVAL', `${what}: ${err instanceof Error ? err.message : String(err)}`);
  }
  return {
    guestBase, guestEnd: guestBase + size, userBase: r.userAddress, userEnd: r.userAddress + r.size,
    hostAddress, hostLength,
  };
}

/**
 * The guest regions of a mapping: cut at guest-physical multiples of 4 GiB, each a view that
 * starts at the 8-byte-aligned host address at or below its first byte, so a piece's view is
 * at most 4 GiB and host and guest addresses stay congruent mod 8 (checked in mapRegion).
 */
function pieces(m: Mapping, label: number): GuestRegion[] {
  const out: GuestRegion[] = [];
  const lead = m.hostLength - (m.guestEnd - m.guestBase); // mapping bytes before guestBase
  for (let base = m.guestBase; base < m.guestEnd; ) {
    const end = Math.min(m.guestEnd, (Math.floor(base / PIECE) + 1) * PIECE);
    const host = m.hostAddress + BigInt(lead + (base - m.guestBase));
    const skew = Number(host & 7n);
    const bytes = new Uint8Array(libc.view(host - BigInt(skew), skew + (end - base)), skew, end - base);
    out.push({ base, size: end - base, bytes, hostAddress: host, label });
    base = end;
  }
  return out;
}

function overlaps(aBase: bigint, aSize: bigint, bBase: bigint, bSize: bigint): boolean {
  return aBase < bBase + bSize && bBase < aBase + aSize;
}

function hex(n: bigint): string {
  return n.toString(16);
}
