// The one seam between the Gunyah backend and the kernel: open /dev/gunyah, ioctl with a
// request number and argument bytes (or an integer), the blocking GH_VCPU_RUN, mmap of guest
// RAM and of the vCPU run page. The backend uses nothing else, so tests swap the real driver
// (native-driver.ts, koffi + one thread per vCPU) for a model of the Android-14 driver.
// Failures are NativeError carrying the errno name and the caller's context.

/** Memory the driver mapped: the bytes, and the host address the kernel knows them by. */
export interface GunyahMapping {
  readonly bytes: Uint8Array;
  readonly address: bigint;
  readonly length: number;
}

export interface GunyahDriver {
  /** open(2) read-write, close-on-exec. ENOENT when the device node is absent. */
  open(path: string, context: string): number;
  close(fd: number, context: string): void;
  /**
   * ioctl(2). A Uint8Array is passed by pointer (the kernel copies from and to it); a number is
   * passed as the integer argument. Returns the ioctl's non-negative result.
   */
  ioctl(fd: number, request: number, arg: Uint8Array | number, context: string): number;
  /**
   * GH_VCPU_RUN on `vcpuFd`, which blocks until the vCPU exits: it runs off the caller's thread
   * and resolves with the ioctl's result (0 = read the run page), or rejects with NativeError
   * (EINTR once immediate_exit is set and the run was kicked).
   */
  run(vcpuFd: number, context: string): Promise<number>;
  /** Interrupts a run() in progress on `vcpuFd` (a no-op when none is). Set immediate_exit first. */
  kick(vcpuFd: number): void;
  /** mmap(2) MAP_SHARED of `fd` at offset 0 (the vCPU run page), or anonymous private memory for fd -1. */
  mmap(fd: number, length: number, context: string): GunyahMapping;
  munmap(mapping: GunyahMapping, context: string): void;
  /** Host address of `bytes`, for pointers inside ioctl arguments (gh_fn_desc.arg). Keep `bytes` alive. */
  addressOf(bytes: Uint8Array): bigint;
}
