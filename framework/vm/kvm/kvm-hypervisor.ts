// /dev/kvm as a Hypervisor: opened once, API version checked, capabilities and the supported
// CPUID table read once; every VM it creates is an x86_64 KvmVm.

import * as libc from '../../../native/libc.ts';
import * as kvm from '../../../native/kvm.ts';
import { isNativeError } from '../../../native/errors.ts';
import type { Hypervisor, HypervisorCapabilities } from '../hypervisor.ts';
import { VmError } from '../vm-error.ts';
import { KvmVm, type KvmVmConfig } from './kvm-vm.ts';

export const KVM_DEVICE = '/dev/kvm';

/** Capabilities the runtime cannot work without. */
const REQUIRED_CAPS: [number, string][] = [
  [kvm.KVM_CAP_USER_MEMORY, 'KVM_CAP_USER_MEMORY'],
  [kvm.KVM_CAP_IRQCHIP, 'KVM_CAP_IRQCHIP'],
  [kvm.KVM_CAP_PIT2, 'KVM_CAP_PIT2'],
  [kvm.KVM_CAP_SET_TSS_ADDR, 'KVM_CAP_SET_TSS_ADDR'],
  [kvm.KVM_CAP_SET_IDENTITY_MAP_ADDR, 'KVM_CAP_SET_IDENTITY_MAP_ADDR'],
  [kvm.KVM_CAP_IMMEDIATE_EXIT, 'KVM_CAP_IMMEDIATE_EXIT'],
  [kvm.KVM_CAP_EXT_CPUID, 'KVM_CAP_EXT_CPUID'],
];

export interface KvmCapabilities extends HypervisorCapabilities {
  readonly irqfdResample: boolean;
  readonly maxVcpuId: number;
}

export class KvmHypervisor implements Hypervisor {
  readonly kind = 'kvm';
  private closed = false;

  private constructor(
    /** The /dev/kvm fd (VM fds stay valid after it is closed). */
    readonly fd: number,
    readonly capabilities: KvmCapabilities,
    /** Size of each vCPU's kvm_run mapping (KVM_GET_VCPU_MMAP_SIZE). */
    readonly vcpuMmapSize: number,
    /** KVM_GET_SUPPORTED_CPUID, as read at open. */
    readonly supportedCpuid: readonly kvm.KvmCpuidEntry2[],
  ) {}

  /** Whether `path` can be opened for reading and writing (tests use it to skip). */
  static available(path = KVM_DEVICE): boolean {
    try {
      libc.close(libc.open(path, libc.O_RDWR | libc.O_CLOEXEC));
      return true;
    } catch {
      return false;
    }
  }

  static open(path = KVM_DEVICE): KvmHypervisor {
    let fd: number;
    try {
      fd = libc.open(path, libc.O_RDWR | libc.O_CLOEXEC, 0, `open ${path}`);
    } catch (e) {
      if (isNativeError(e, 'ENOENT')) throw new VmError('ENODEV', `${path}: no KVM on this host`);
      throw e;
    }
    try {
      const version = libc.ioctl(fd, kvm.KVM_GET_API_VERSION, 0, 'KVM_GET_API_VERSION');
      if (version !== kvm.KVM_API_VERSION) throw new VmError('ENOTSUP', `${path}: KVM API ${version}, expected ${kvm.KVM_API_VERSION}`);
      const cap = (c: number) => libc.ioctl(fd, kvm.KVM_CHECK_EXTENSION, c, `KVM_CHECK_EXTENSION ${c}`);
      for (const [c, name] of REQUIRED_CAPS) if (cap(c) <= 0) throw new VmError('ENOTSUP', `${path}: ${name} missing`);
      const irqfd = cap(kvm.KVM_CAP_IRQFD) > 0;
      const irqfdResample = irqfd && cap(kvm.KVM_CAP_IRQFD_RESAMPLE) > 0;
      const capabilities: KvmCapabilities = {
        maxVcpus: cap(kvm.KVM_CAP_MAX_VCPUS) || cap(kvm.KVM_CAP_NR_VCPUS) || 4,
        maxVcpuId: cap(kvm.KVM_CAP_MAX_VCPU_ID) || cap(kvm.KVM_CAP_MAX_VCPUS) || 4,
        memorySlots: cap(kvm.KVM_CAP_NR_MEMSLOTS) || 32,
        ioeventfd: cap(kvm.KVM_CAP_IOEVENTFD) > 0,
        ioeventfdAnyLength: cap(kvm.KVM_CAP_IOEVENTFD_ANY_LENGTH) > 0,
        irqfd,
        irqfdLevel: irqfdResample,
        irqfdResample,
        readonlyMemory: cap(kvm.KVM_CAP_READONLY_MEM) > 0,
      };
      const mmapSize = libc.ioctl(fd, kvm.KVM_GET_VCPU_MMAP_SIZE, 0, 'KVM_GET_VCPU_MMAP_SIZE');
      return new KvmHypervisor(fd, Object.freeze(capabilities), mmapSize, Object.freeze(readSupportedCpuid(fd)));
    } catch (e) {
      libc.close(fd);
      throw e;
    }
  }

  createVm(config: KvmVmConfig): KvmVm {
    if (this.closed) throw new VmError('EBADF', 'KvmHypervisor: closed');
    return KvmVm.create(this, config);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    libc.close(this.fd, `close ${KVM_DEVICE}`);
  }
}

/** KVM_GET_SUPPORTED_CPUID, growing the table while KVM answers E2BIG. */
function readSupportedCpuid(fd: number): kvm.KvmCpuidEntry2[] {
  for (let capacity = 128; capacity <= 4096; capacity *= 2) {
    const buf = kvm.allocKvmCpuid2(capacity);
    try {
      libc.ioctlPtr(fd, kvm.KVM_GET_SUPPORTED_CPUID, buf, 'KVM_GET_SUPPORTED_CPUID');
      return kvm.decodeKvmCpuid2(buf);
    } catch (e) {
      if (!isNativeError(e, 'E2BIG')) throw e;
    }
  }
  throw new VmError('E2BIG', 'KVM_GET_SUPPORTED_CPUID: more than 4096 entries');
}
