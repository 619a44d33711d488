// Typed errors for failed native calls: NativeError carries the errno number, its name
// (EINVAL, EBADF...), the libc call and the caller's context. No raw -1 leaves native/.
import koffi from 'koffi';

// Linux has aliases sharing a number; name each number the way the kernel sources do.
const PREFERRED = ['EAGAIN', 'EDEADLK', 'EOPNOTSUPP'];

const byNumber = new Map<number, string>();
const byName = new Map<string, number>();
for (const [name, errno] of Object.entries(koffi.os.errno)) {
  byName.set(name, errno);
  if (!byNumber.has(errno)) byNumber.set(errno, name);
}
for (const name of PREFERRED) {
  const errno = byName.get(name);
  if (errno !== undefined) byNumber.set(errno, name);
}

/** 'EINVAL' for 22; 'E<num>' for a number this platform has no name for. */
export function errnoName(errno: number): string {
  return byNumber.get(errno) ?? `E${errno}`;
}

/** 22 for 'EINVAL' (aliases such as 'EWOULDBLOCK' work too); throws RangeError on an unknown name. */
export function errnoNumber(name: string): number {
  const errno = byName.get(name);
  if (errno === undefined) throw new RangeError(`unknown errno name ${name}`);
  return errno;
}

export class NativeError extends Error {
  readonly errno: number;
  readonly code: string;
  readonly call: string;
  readonly context: string;

  constructor(errno: number, call: string, context = '') {
    const code = errnoName(errno);
    super(`${context || call}: ${code}`);
    this.name = 'NativeError';
    this.errno = errno;
    this.code = code;
    this.call = call;
    this.context = context;
  }
}

/** True when `e` is a NativeError, and (if given) carries errno name `code`. */
export function isNativeError(e: unknown, code?: string): e is NativeError {
  return e instanceof NativeError && (code === undefined || e.code === code);
}

/** Throws NativeError for the errno left by the call that just failed. Call it before anything else native. */
export function throwErrno(call: string, context?: string): never {
  throw new NativeError(koffi.errno(), call, context);
}
