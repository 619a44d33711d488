// The vhost-user wire format (QEMU docs/interop/vhost-user.rst): request codes,
// header flags, protocol feature bits, payload layouts and their exact sizes,
// and the typed error a malformed message raises. Shared by the backend and the
// test frontend; no I/O here. All fields are native-endian (little-endian on
// every host rxvirt runs on).

/** Front-end requests (the subset of ids this module names; anything else is unknown). */
export const Request = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  RESET_DEVICE: 34,
} as const;
export type RequestCode = (typeof Request)[keyof typeof Request];

const REQUEST_NAMES = new Map<number, string>(Object.entries(Request).map(([name, code]) => [code, name]));

/** "SET_MEM_TABLE", or "request 99" for ids this module does not know. */
export function requestName(code: number): string {
  return REQUEST_NAMES.get(code) ?? `request ${code}`;
}

/** Header: request u32, flags u32, size u32. */
export const HEADER_SIZE = 12;
/** flags bits 0-1: protocol version. */
export const FLAG_VERSION_MASK = 0x3;
export const FLAG_VERSION = 0x1;
/** flags bit 2: this message is a reply (back-end to front-end only). */
export const FLAG_REPLY = 0x4;
/** flags bit 3: the front-end wants a REPLY_ACK answer. */
export const FLAG_NEED_REPLY = 0x8;
/** Every flag bit a request may carry. */
export const FLAG_KNOWN = FLAG_VERSION_MASK | FLAG_REPLY | FLAG_NEED_REPLY;

/** Virtio feature bit 30, reused by vhost-user to announce GET/SET_PROTOCOL_FEATURES. */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;

/** Protocol feature bit numbers (only those rxvirt implements). */
export const PROTOCOL_F_MQ = 0;
export const PROTOCOL_F_REPLY_ACK = 3;
export const PROTOCOL_F_CONFIG = 9;
export const PROTOCOL_F_RESET_DEVICE = 13;

/** SET_VRING_KICK/CALL/ERR u64: bits 0-7 ring index, bit 8 "no fd in the ancillary data". */
export const VRING_INDEX_MASK = 0xff;
export const VRING_NOFD = 0x100;

/** SET_VRING_ADDR flags bit 0: log used-ring writes (migration; rxvirt offers no logging). */
export const VRING_F_LOG = 0x1;

/** SET_MEM_TABLE: at most this many regions (and fds) per message. */
export const MAX_MEMORY_REGIONS = 8;
/** Largest number of fds one message may carry. */
export const MAX_FDS = MAX_MEMORY_REGIONS;
/** GET/SET_CONFIG payload bytes beyond the 12-byte config header. */
export const MAX_CONFIG_SIZE = 256;
/** Nothing valid is bigger than a full memory table or a full config message; refuse early. */
export const MAX_PAYLOAD = 4096;

export const U64_SIZE = 8;
/** vring state: index u32, num u32. */
export const VRING_STATE_SIZE = 8;
/** vring address: index u32, flags u32, desc u64, used u64, avail u64, log u64. */
export const VRING_ADDR_SIZE = 40;
/** memory table: nregions u32, padding u32, then regions. */
export const MEMORY_TABLE_HEADER_SIZE = 8;
/** region: guest address u64, size u64, user address u64, mmap offset u64. */
export const MEMORY_REGION_SIZE = 32;
/** config: offset u32, size u32, flags u32, then `size` bytes. */
export const CONFIG_HEADER_SIZE = 12;

/** A malformed or unacceptable message: the connection is closed with this reason. */
export class VhostUserProtocolError extends Error {
  override readonly name = 'VhostUserProtocolError';
  /** errno name that best describes the fault ('EPROTO', 'EINVAL', 'EFAULT', 'EBADF', 'ENOSYS', ...). */
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.code = code;
  }
}

export function protocolError(code: string, message: string): never {
  throw new VhostUserProtocolError(code, message);
}

export interface MessageHeader {
  request: number;
  flags: number;
  size: number;
}

export function encodeHeader(target: Uint8Array, header: MessageHeader): void {
  const view = new DataView(target.buffer, target.byteOffset, HEADER_SIZE);
  view.setUint32(0, header.request, true);
  view.setUint32(4, header.flags, true);
  view.setUint32(8, header.size, true);
}

export function decodeHeader(source: Uint8Array): MessageHeader {
  const view = new DataView(source.buffer, source.byteOffset, HEADER_SIZE);
  return { request: view.getUint32(0, true), flags: view.getUint32(4, true), size: view.getUint32(8, true) };
}

/** A whole message: header fields, payload bytes, and the fds that came with it. */
export function encodeMessage(request: number, flags: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(HEADER_SIZE + payload.length);
  encodeHeader(out, { request, flags, size: payload.length });
  out.set(payload, HEADER_SIZE);
  return out;
}

export function encodeU64(value: bigint): Uint8Array {
  const out = new Uint8Array(U64_SIZE);
  new DataView(out.buffer).setBigUint64(0, BigInt.asUintN(64, value), true);
  return out;
}

export function decodeU64(payload: Uint8Array): bigint {
  return new DataView(payload.buffer, payload.byteOffset, U64_SIZE).getBigUint64(0, true);
}

export interface VringState {
  index: number;
  num: number;
}

export function encodeVringState(state: VringState): Uint8Array {
  const out = new Uint8Array(VRING_STATE_SIZE);
  const view = new DataView(out.buffer);
  view.setUint32(0, state.index, true);
  view.setUint32(4, state.num, true);
  return out;
}

export function decodeVringState(payload: Uint8Array): VringState {
  const view = new DataView(payload.buffer, payload.byteOffset, VRING_STATE_SIZE);
  return { index: view.getUint32(0, true), num: view.getUint32(4, true) };
}

/** Ring addresses as the front-end sends them: its own (user) virtual addresses. */
export interface VringAddress {
  index: number;
  flags: number;
  desc: bigint;
  used: bigint;
  avail: bigint;
  log: bigint;
}

export function encodeVringAddress(addr: VringAddress): Uint8Array {
  const out = new Uint8Array(VRING_ADDR_SIZE);
  const view = new DataView(out.buffer);
  view.setUint32(0, addr.index, true);
  view.setUint32(4, addr.flags, true);
  view.setBigUint64(8, addr.desc, true);
  view.setBigUint64(16, addr.used, true);
  view.setBigUint64(24, addr.avail, true);
  view.setBigUint64(32, addr.log, true);
  return out;
}

export function decodeVringAddress(payload: Uint8Array): VringAddress {
  const view = new DataView(payload.buffer, payload.byteOffset, VRING_ADDR_SIZE);
  return {
    index: view.getUint32(0, true),
    flags: view.getUint32(4, true),
    desc: view.getBigUint64(8, true),
    used: view.getBigUint64(16, true),
    avail: view.getBigUint64(24, true),
    log: view.getBigUint64(32, true),
  };
}

export interface MemoryRegionDescription {
  guestAddress: bigint;
  size: bigint;
  userAddress: bigint;
  mmapOffset: bigint;
}

export function encodeMemoryTable(regions: readonly MemoryRegionDescription[]): Uint8Array {
  const out = new Uint8Array(MEMORY_TABLE_HEADER_SIZE + MEMORY_REGION_SIZE * regions.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, regions.length, true);
  regions.forEach((r, i) => {
    const at = MEMORY_TABLE_HEADER_SIZE + MEMORY_REGION_SIZE * i;
    view.setBigUint64(at, r.guestAddress, true);
    view.setBigUint64(at + 8, r.size, true);
    view.setBigUint64(at + 16, r.userAddress, true);
    view.setBigUint64(at + 24, r.mmapOffset, true);
  });
  return out;
}

/** Checks the payload size against the region count; values are validated by the memory table. */
export function decodeMemoryTable(payload: Uint8Array): MemoryRegionDescription[] {
  if (payload.length < MEMORY_TABLE_HEADER_SIZE) {
    protocolError('EPROTO', `SET_MEM_TABLE payload of ${payload.length} bytes is shorter than its header`);
  }
  const view = new DataView(payload.buffer, payload.byteOffset, payload.length);
  const count = view.getUint32(0, true);
  if (count === 0 || count > MAX_MEMORY_REGIONS) {
    protocolError('EINVAL', `SET_MEM_TABLE with ${count} regions (expected 1..${MAX_MEMORY_REGIONS})`);
  }
  const expected = MEMORY_TABLE_HEADER_SIZE + MEMORY_REGION_SIZE * count;
  if (payload.length !== expected) {
    protocolError('EPROTO', `SET_MEM_TABLE with ${count} regions has ${payload.length} payload bytes (expected ${expected})`);
  }
  const regions: MemoryRegionDescription[] = [];
  for (let i = 0; i < count; i++) {
    const at = MEMORY_TABLE_HEADER_SIZE + MEMORY_REGION_SIZE * i;
    regions.push({
      guestAddress: view.getBigUint64(at, true),
      size: view.getBigUint64(at + 8, true),
      userAddress: view.getBigUint64(at + 16, true),
      mmapOffset: view.getBigUint64(at + 24, true),
    });
  }
  return regions;
}

export interface ConfigAccess {
  offset: number;
  size: number;
  flags: number;
  data: Uint8Array;
}

export function encodeConfig(access: ConfigAccess): Uint8Array {
  const out = new Uint8Array(CONFIG_HEADER_SIZE + access.data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, access.offset, true);
  view.setUint32(4, access.size, true);
  view.setUint32(8, access.flags, true);
  out.set(access.data, CONFIG_HEADER_SIZE);
  return out;
}

/** Checks the size field against the payload; `data` is a view into the payload. */
export function decodeConfig(payload: Uint8Array, request: string): ConfigAccess {
  if (payload.length < CONFIG_HEADER_SIZE) {
    protocolError('EPROTO', `${request} payload of ${payload.length} bytes is shorter than its header`);
  }
  const view = new DataView(payload.buffer, payload.byteOffset, payload.length);
  const offset = view.getUint32(0, true), size = view.getUint32(4, true), flags = view.getUint32(8, true);
  if (size > MAX_CONFIG_SIZE) protocolError('EINVAL', `${request} of ${size} bytes (at most ${MAX_CONFIG_SIZE})`);
  if (payload.length !== CONFIG_HEADER_SIZE + size) {
    protocolError('EPROTO', `${request} says ${size} bytes but carries ${payload.length - CONFIG_HEADER_SIZE}`);
  }
  return { offset, size, flags, data: payload.subarray(CONFIG_HEADER_SIZE) };
}

/** bit number -> bigint mask */
export function bit(n: number): bigint {
  return 1n << BigInt(n);
}
