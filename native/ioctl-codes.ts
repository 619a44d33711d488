// Linux ioctl request numbers: the asm-generic _IOC encoding (x86_64 and arm64 both use it).
//   bits 0..7 nr | 8..15 type | 16..29 size | 30..31 direction (WRITE 1, READ 2)
// Requests are returned as unsigned 32-bit JS numbers: _IOR/_IOWR set bit 31, so the result is
// forced unsigned with `>>> 0` instead of the negative int a plain bitwise OR would give.

export const _IOC_NRBITS = 8;
export const _IOC_TYPEBITS = 8;
export const _IOC_SIZEBITS = 14;
export const _IOC_DIRBITS = 2;

export const _IOC_NRSHIFT = 0;
export const _IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS;
export const _IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS;
export const _IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS;

export const _IOC_NONE = 0;
export const _IOC_WRITE = 1;
export const _IOC_READ = 2;

/** An ioctl "type" (magic): a one-character string such as 'G', or its code 0..255. */
export type IoctlType = string | number;

function field(name: string, value: number, bits: number): number {
  if (!Number.isInteger(value) || value < 0 || value >= 2 ** bits) {
    throw new RangeError(`_IOC: ${name} ${value} does not fit in ${bits} bits`);
  }
  return value;
}

function typeCode(type: IoctlType): number {
  if (typeof type === 'number') return type;
  if (type.length !== 1) throw new RangeError(`_IOC: type must be one character, got '${type}'`);
  return type.charCodeAt(0);
}

export function _IOC(dir: number, type: IoctlType, nr: number, size: number): number {
  return ((field('dir', dir, _IOC_DIRBITS) << _IOC_DIRSHIFT)
    | (field('type', typeCode(type), _IOC_TYPEBITS) << _IOC_TYPESHIFT)
    | (field('nr', nr, _IOC_NRBITS) << _IOC_NRSHIFT)
    | (field('size', size, _IOC_SIZEBITS) << _IOC_SIZESHIFT)) >>> 0;
}

/** No argument data (or an integer argument passed by value). */
export function _IO(type: IoctlType, nr: number): number {
  return _IOC(_IOC_NONE, type, nr, 0);
}

/** The kernel writes `size` bytes to user memory (size is koffi.sizeof of the argument type). */
export function _IOR(type: IoctlType, nr: number, size: number): number {
  return _IOC(_IOC_READ, type, nr, size);
}

/** The kernel reads `size` bytes from user memory. */
export function _IOW(type: IoctlType, nr: number, size: number): number {
  return _IOC(_IOC_WRITE, type, nr, size);
}

/** Both directions. */
export function _IOWR(type: IoctlType, nr: number, size: number): number {
  return _IOC(_IOC_READ | _IOC_WRITE, type, nr, size);
}

export function _IOC_DIR(request: number): number {
  return (request >>> _IOC_DIRSHIFT) & ((1 << _IOC_DIRBITS) - 1);
}

export function _IOC_TYPE(request: number): number {
  return (request >>> _IOC_TYPESHIFT) & ((1 << _IOC_TYPEBITS) - 1);
}

export function _IOC_NR(request: number): number {
  return (request >>> _IOC_NRSHIFT) & ((1 << _IOC_NRBITS) - 1);
}

export function _IOC_SIZE(request: number): number {
  return (request >>> _IOC_SIZESHIFT) & ((1 << _IOC_SIZEBITS) - 1);
}
