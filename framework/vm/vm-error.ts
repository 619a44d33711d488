// Errors the VM runtime raises for misuse (wrong state, bad configuration), carrying an errno
// name like the native layer's NativeError: EBUSY (already started), EINVAL (bad layout),
// ENODEV (no hypervisor), EBADF (VM closed). Native call failures stay NativeError.

export class VmError extends Error {
  override readonly name = 'VmError';
  constructor(readonly code: string, message: string) {
    super(`${message}: ${code}`);
  }
}
