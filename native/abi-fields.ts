// Checked little-endian field access for kernel UAPI structs held in a DataView, shared by the
// hypervisor ABI modules (gunyah.ts, kvm.ts). Writers reject values that do not fit the C field
// (a silently truncated fd, label or address is a bug that only shows up as a wrong guest).
// Offsets come from the koffi struct definitions through memberOffset(), never typed in by hand.
// Both ABIs are little-endian only (x86_64, arm64 Android), so every access is explicitly LE.
import koffi, { type TypeObject } from 'koffi';

/** A 64-bit unsigned C field as given by callers: a safe integer number or a bigint. */
export type U64 = number | bigint;

const TWO_32 = 2 ** 32;
const U64_LIMIT = 1n << 64n;

function checkUint(field: string, value: number, max: number): void {
  if (!Number.isInteger(value) || value < 0 || value > max) {
    throw new RangeError(`${field}: ${value} is not an integer in 0..${max}`);
  }
}

export function putU8(view: DataView, offset: number, value: number, field: string): void {
  checkUint(field, value, 0xff);
  view.setUint8(offset, value);
}

export function putU16(view: DataView, offset: number, value: number, field: string): void {
  checkUint(field, value, 0xffff);
  view.setUint16(offset, value, true);
}

export function putU32(view: DataView, offset: number, value: number, field: string): void {
  checkUint(field, value, 0xffff_ffff);
  view.setUint32(offset, value, true);
}

export function putS32(view: DataView, offset: number, value: number, field: string): void {
  if (!Number.isInteger(value) || value < -0x8000_0000 || value > 0x7fff_ffff) {
    throw new RangeError(`${field}: ${value} is not a 32-bit signed integer`);
  }
  view.setInt32(offset, value, true);
}

export function putU64(view: DataView, offset: number, value: U64, field: string): void {
  if (typeof value === 'bigint') {
    if (value < 0n || value >= U64_LIMIT) throw new RangeError(`${field}: ${value} does not fit in 64 bits`);
    view.setBigUint64(offset, value, true);
    return;
  }
  checkUint(field, value, Number.MAX_SAFE_INTEGER);
  view.setUint32(offset, value % TWO_32, true);
  view.setUint32(offset + 4, Math.floor(value / TWO_32), true);
}

/**
 * A u64 field as a JS number, without BigInt (hot paths: guest addresses). Values of 2^53 and
 * above come back rounded but still >= 2^53, i.e. outside any guest memory or device window.
 */
export function getU64(view: DataView, offset: number): number {
  return view.getUint32(offset + 4, true) * TWO_32 + view.getUint32(offset, true);
}

/** Zero-copy bytes of the view (the run page stays the backing store). */
export function bytesAt(view: DataView, offset: number, length: number): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset + offset, length);
}

/** A zero-filled buffer of exactly one C struct, plus a DataView over it. */
export function structBuffer(size: number): { bytes: Uint8Array; view: DataView } {
  const bytes = new Uint8Array(size);
  return { bytes, view: new DataView(bytes.buffer) };
}

export function viewOf(bytes: Uint8Array, minSize: number, what: string): DataView {
  if (bytes.byteLength < minSize) {
    throw new RangeError(`${what}: buffer of ${bytes.byteLength} bytes is shorter than the ${minSize}-byte struct`);
  }
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * Byte offset and size of a (nested) member, e.g. memberLayout(gh_vcpu_run, 'u', 'mmio', 'data').
 * Walks the koffi type tree, so layout constants follow the struct definitions exactly.
 */
export function memberLayout(type: TypeObject, ...path: string[]): { offset: number; size: number } {
  let current = type;
  let offset = 0;
  for (const name of path) {
    const member = koffi.type(current).members?.[name];
    if (!member) throw new Error(`memberLayout: no member '${name}' in path ${path.join('.')}`);
    offset += member.offset;
    current = member.type;
  }
  return { offset, size: koffi.sizeof(current) };
}

export function memberOffset(type: TypeObject, ...path: string[]): number {
  return memberLayout(type, ...path).offset;
}

/**
 * The ioeventfd rules Gunyah and KVM share: width 0/1/2/4/8, no datamatch on width 0, and a
 * datamatch that fits the width (a wider one could never match: a silent lost notification).
 */
export function checkIoeventfdShape(what: string, len: number, fd: number, datamatch: U64 | undefined): void {
  if (len !== 0 && len !== 1 && len !== 2 && len !== 4 && len !== 8) {
    throw new RangeError(`${what}.len: ${len} is not 0, 1, 2, 4 or 8`);
  }
  if (!Number.isInteger(fd) || fd < 0) throw new RangeError(`${what}.fd: ${fd} is not a file descriptor`);
  if (datamatch === undefined) return;
  if (len === 0) throw new RangeError(`${what}: datamatch needs a length (len 0 with datamatch is EINVAL)`);
  const value = BigInt(datamatch);
  if (value < 0n || value >= 1n << BigInt(len * 8)) {
    throw new RangeError(`${what}.datamatch: ${datamatch} does not fit in ${len} byte(s)`);
  }
}
