// Errors of the .xz decoder: EINVAL for corrupt or truncated data, ENOTSUP for valid .xz that
// uses something we do not decode (a filter, a check type), EFBIG past the output limit.

export class XzError extends Error {
  override readonly name = 'XzError';
  constructor(readonly code: 'EINVAL' | 'ENOTSUP' | 'EFBIG', message: string) {
    super(`xz: ${message}`);
  }
}
