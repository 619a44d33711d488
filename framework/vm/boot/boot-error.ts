// The one error type of the x86 Linux loaders: an errno name (ENOEXEC for a file that is not
// what it claims, ENOTSUP for a format we do not handle, ENOMEM when it does not fit the
// guest, E2BIG for an over-long command line, EINVAL for a corrupt payload) and a one-line
// message naming the input and what is wrong with it.

export class BootError extends Error {
  override readonly name = 'BootError';
  constructor(readonly code: string, message: string) {
    super(message);
  }
}
