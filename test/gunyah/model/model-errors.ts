// Errors the model raises exactly as the native layer would: NativeError with the errno name,
// the libc call and the caller's context ("GH_VM_START: EINVAL").
import { NativeError, errnoNumber } from '../../../native/errors.ts';

export function modelError(code: string, context: string, call = 'ioctl'): NativeError {
  return new NativeError(errnoNumber(code), call, context);
}
