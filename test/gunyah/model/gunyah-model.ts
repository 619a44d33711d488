// A model of the Android-14 Gunyah driver behind the backend's GunyahDriver seam: /dev/gunyah,
// VM and vCPU fds, the user address space the kernel copies from and pins, and a record of
// every call with its argument bytes. VMs follow vm_mgr.c (model-vm.ts), vCPUs gunyah_vcpu.c
// (model-vcpu.ts), the resource manager reads the DTB (resource-manager.ts). Every failure is
// a NativeError with the errno the driver returns and the caller's context.
//
// Layouts and ioctl numbers come from gcc's record of the header (abi.ts), not from the
// backend's own definitions. Guest side: `guest(vm)` scripts accesses and interrupts.

import type { GunyahDriver, GunyahMapping } from '../../../framework/vm/gunyah/gunyah-driver.ts';
import { IOCTL, PAGE, ioctlName, layout, readStruct } from './abi.ts';
import { AddressSpace } from './address-space.ts';
import { modelError } from './model-errors.ts';
import type { ModelVcpu } from './model-vcpu.ts';
import { ModelVm, procFdKind, type ModelKernel, type ModelOptions } from './model-vm.ts';

export const GUNYAH_PATH = '/dev/gunyah';

export interface GunyahModelOptions extends ModelOptions {
  /** false: there is no /dev/gunyah (open is ENOENT). Default true. */
  readonly present?: boolean;
}

/** One call the backend made, as the driver saw it. */
export interface ModelCall {
  readonly op: 'open' | 'close' | 'ioctl' | 'run' | 'mmap' | 'munmap';
  /** '/dev/gunyah', 'vm0', 'vm0/vcpu1', 'anon' (mmap of fd -1) or '#<fd>' for an fd the model does not know. */
  readonly target: string;
  /** The ioctl's name (GH_VM_START...). */
  readonly request?: string;
  /** The argument as passed: a copy of the struct bytes, or the integer. */
  readonly arg?: Uint8Array | number;
  /** For ADD/REMOVE_FUNCTION: a copy of the struct gh_fn_desc.arg points at. */
  readonly fnArg?: Uint8Array;
  readonly context: string;
  /** The result, or the errno name of the failure. */
  outcome?: number | string;
}

type FdEntry =
  | { kind: 'dev'; label: string }
  | { kind: 'vm'; label: string; vm: ModelVm }
  | { kind: 'vcpu'; label: string; vm: ModelVm; vcpu: ModelVcpu };

export class GunyahModel implements GunyahDriver, ModelKernel {
  readonly space = new AddressSpace();
  readonly calls: ModelCall[] = [];
  readonly vms: ModelVm[] = [];
  lockedPages = 0n;
  private readonly fds = new Map<number, FdEntry>();
  /** Fake fd numbers, far above the real ones this process uses (eventfds are real). */
  private nextFd = 100_000;

  constructor(readonly options: GunyahModelOptions = {}) {}

  // ---- GunyahDriver ----------------------------------------------------------------------------

  open(path: string, context: string): number {
    return this.record({ op: 'open', target: path, context }, () => {
      if (path !== GUNYAH_PATH || this.options.present === false) throw modelError('ENOENT', context, 'open');
      return this.install({ kind: 'dev', label: GUNYAH_PATH });
    });
  }

  close(fd: number, context: string): void {
    this.record({ op: 'close', target: this.label(fd), context }, () => {
      const entry = this.fds.get(fd);
      if (!entry) throw modelError('EBADF', context, 'close');
      this.fds.delete(fd);
      if (entry.kind !== 'dev') entry.vm.release();
      return 0;
    });
  }

  ioctl(fd: number, request: number, arg: Uint8Array | number, context: string): number {
    const call: ModelCall = {
      op: 'ioctl', target: this.label(fd), request: ioctlName(request), context,
      arg: typeof arg === 'number' ? arg : arg.slice(),
      fnArg: request === IOCTL.GH_VM_ADD_FUNCTION || request === IOCTL.GH_VM_REMOVE_FUNCTION ? this.peekFnArg(arg) : undefined,
    };
    return this.record(call, () => {
      const entry = this.fds.get(fd);
      if (!entry) throw modelError('EBADF', context);
      switch (entry.kind) {
        case 'dev': return this.devIoctl(request, arg, context);
        case 'vm': return this.vmIoctl(entry.vm, request, arg, context);
        case 'vcpu': return this.vcpuIoctl(request, context);
      }
    });
  }

  run(vcpuFd: number, context: string): Promise<number> {
    const call: ModelCall = { op: 'run', target: this.label(vcpuFd), request: 'GH_VCPU_RUN', context };
    this.calls.push(call);
    const entry = this.fds.get(vcpuFd);
    let result: Promise<number>;
    if (!entry) result = Promise.reject(modelError('EBADF', context));
    else if (entry.kind !== 'vcpu') result = Promise.reject(modelError('ENOTTY', context)); // the VM and /dev/gunyah ioctls know no GH_VCPU_RUN
    else result = entry.vcpu.run(context);
    return result.then(
      (r) => { call.outcome = r; return r; },
      (e: unknown) => { call.outcome = (e as { code?: string }).code ?? 'error'; throw e; },
    );
  }

  kick(vcpuFd: number): void {
    const entry = this.fds.get(vcpuFd);
    if (entry?.kind === 'vcpu') entry.vcpu.poke();
  }

  mmap(fd: number, length: number, context: string): GunyahMapping {
    return this.record({ op: 'mmap', target: fd < 0 ? 'anon' : this.label(fd), arg: length, context }, () => {
      if (fd < 0) {
        const bytes = new Uint8Array(new SharedArrayBuffer(length));
        return { bytes, address: this.space.map(bytes), length };
      }
      const entry = this.fds.get(fd);
      if (!entry) throw modelError('EBADF', context, 'mmap');
      if (entry.kind !== 'vcpu') throw modelError('ENODEV', context, 'mmap');
      if (length > Number(PAGE)) throw modelError('EINVAL', `${context} (model: only the run page is mappable)`, 'mmap');
      const bytes = entry.vcpu.page.subarray(0, length);
      return { bytes, address: this.space.map(bytes), length };
    });
  }

  munmap(mapping: GunyahMapping, context: string): void {
    this.record({ op: 'munmap', target: 'anon', arg: mapping.length, context }, () => {
      if (!this.space.unmap(mapping.address)) throw modelError('EINVAL', context, 'munmap');
      return 0;
    });
  }

  addressOf(bytes: Uint8Array): bigint {
    return this.space.addressOf(bytes);
  }

  // ---- ModelKernel -------------------------------------------------------------------------------

  fdKind(fd: number): 'none' | 'eventfd' | 'other' {
    return this.fds.has(fd) ? 'other' : procFdKind(fd);
  }

  newVcpuFd(vcpu: ModelVcpu): number {
    vcpu.vm.refs++;
    const vmIndex = this.vms.indexOf(vcpu.vm);
    return this.install({ kind: 'vcpu', label: `vm${vmIndex}/vcpu${vcpu.id}`, vm: vcpu.vm, vcpu });
  }

  // ---- for tests ----------------------------------------------------------------------------------

  /** Open fds the model handed out (0 once everything was closed). */
  get openFds(): number {
    return this.fds.size;
  }

  /** The calls of one kind, e.g. ioctls only. */
  callsOf(op: ModelCall['op']): ModelCall[] {
    return this.calls.filter((c) => c.op === op);
  }

  // ---- internals ----------------------------------------------------------------------------------

  private devIoctl(request: number, arg: Uint8Array | number, context: string): number {
    if (request !== IOCTL.GH_CREATE_VM) throw modelError('ENOTTY', context);
    const value = typeof arg === 'number' ? arg : Number(this.space.addressOf(arg));
    if (value !== 0) throw modelError('EINVAL', context);
    const vm = new ModelVm(this);
    this.vms.push(vm);
    return this.install({ kind: 'vm', label: `vm${this.vms.length - 1}`, vm });
  }

  private vmIoctl(vm: ModelVm, request: number, arg: Uint8Array | number, context: string): number {
    switch (request) {
      case IOCTL.GH_VM_ANDROID_LEND_USER_MEM: return vm.setUserMemRegion(arg, true, context);
      case IOCTL.GH_VM_SET_USER_MEM_REGION: return vm.setUserMemRegion(arg, false, context);
      case IOCTL.GH_VM_SET_DTB_CONFIG: return vm.setDtbConfig(arg, context);
      case IOCTL.GH_VM_ANDROID_SET_FW_CONFIG: return vm.setFwConfig(arg, context);
      case IOCTL.GH_VM_START: return vm.start(context);
      case IOCTL.GH_VM_ADD_FUNCTION: return vm.addFunction(arg, context);
      case IOCTL.GH_VM_REMOVE_FUNCTION: return vm.removeFunction(arg, context);
      default: throw modelError('ENOTTY', context);
    }
  }

  private vcpuIoctl(request: number, context: string): number {
    switch (request) {
      case IOCTL.GH_VCPU_MMAP_SIZE: return Number(PAGE);
      case IOCTL.GH_VCPU_RUN: throw new Error(`model: ${context}: GH_VCPU_RUN blocks, call run() (the GunyahDriver seam) instead of ioctl()`);
      default: throw modelError('EINVAL', context);
    }
  }

  /** The struct a gh_fn_desc points at (for the record), or undefined when the pointer is bad. */
  private peekFnArg(arg: Uint8Array | number): Uint8Array | undefined {
    if (typeof arg === 'number' || arg.length < layout.size('gh_fn_desc')) return undefined;
    const f = readStruct(arg, 'gh_fn_desc', ['arg_size', 'arg']);
    return this.space.copyFrom(f.arg!, Math.min(Number(f.arg_size), 4096)) ?? undefined;
  }

  private install(entry: FdEntry): number {
    const fd = this.nextFd++;
    this.fds.set(fd, entry);
    return fd;
  }

  private label(fd: number): string {
    return this.fds.get(fd)?.label ?? `#${fd}`;
  }

  private record<T>(call: ModelCall, body: () => T): T {
    this.calls.push(call);
    try {
      const r = body();
      call.outcome = typeof r === 'number' ? r : 0;
      return r;
    } catch (e) {
      call.outcome = (e as { code?: string }).code ?? 'error';
      throw e;
    }
  }
}
