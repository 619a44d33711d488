// The one error type of the guest image builder. Its message is a single line
// meant for a user (what is missing and how to get it), prefixed by an errno
// name so callers can branch on `code` without parsing text.

export type GuestBuildErrno =
  | 'ENOENT' // a package, command or file the build needs is missing
  | 'ENOTSUP' // this host cannot build the guest (not Debian, not x86_64)
  | 'ENOSPC' // not enough free disk space
  | 'EIO' // a build step failed
  | 'EINTR'; // interrupted by a signal; nothing was left behind

export class GuestBuildError extends Error {
  constructor(
    readonly code: GuestBuildErrno,
    message: string,
    /** For EINTR: the signal that interrupted the build. */
    readonly signal?: NodeJS.Signals,
  ) {
    super(message);
    this.name = 'GuestBuildError';
  }
}
