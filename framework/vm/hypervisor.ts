// The hypervisor-neutral VM runtime: what devices, transports and the CLI may rely on, whatever
// runs the guest (KVM on x86_64 today, Gunyah on arm64 next). A Hypervisor opens the host's
// device node and creates Vms; a Vm owns guest RAM, its vCPUs, the ioeventfds and irqfds that
// connect device queues and interrupts to the guest, and ends with exactly one VmOutcome.
// Backends add their architecture's extras (port I/O, registers) on their own classes.

import type { Observable } from 'rxjs';
import type { TriggerMode } from '../doorbell.ts';
import type { EventFd } from '../eventfd.ts';
import type { GuestMemory } from '../guest-memory.ts';
import type { MmioBus } from '../mmio-bus.ts';

/** What the host's hypervisor can do, probed once when it is opened. */
export interface HypervisorCapabilities {
  /** Highest vCPU count a VM may have. */
  readonly maxVcpus: number;
  /** Memory slots available per VM. */
  readonly memorySlots: number;
  /** ioeventfds (queue notifications that never leave the kernel). */
  readonly ioeventfd: boolean;
  /** ioeventfds of length 0 (any access width), without datamatch. */
  readonly ioeventfdAnyLength: boolean;
  readonly irqfd: boolean;
  /** Level-triggered irqfds (KVM: resample eventfd; Gunyah: level doorbells). */
  readonly irqfdLevel: boolean;
  /** Guest memory regions the guest cannot write. */
  readonly readonlyMemory: boolean;
}

export interface Hypervisor {
  /** 'kvm', 'gunyah'. */
  readonly kind: string;
  readonly capabilities: HypervisorCapabilities;
  createVm(config: VmConfig): Vm;
  /** Closes the device node; VMs already created stay usable until closed. */
  close(): void;
}

/** One range of guest RAM: guest-physical base and size, both multiples of 4096. */
export interface MemoryRegionConfig {
  readonly base: number;
  readonly size: number;
}

export interface VmConfig {
  readonly memory: readonly MemoryRegionConfig[];
  /** vCPUs created with the VM (more with createVcpu before start). Default 1. */
  readonly vcpus?: number;
}

/** The guest access an ioeventfd matches. */
export interface IoEventMatch {
  /** Guest-physical MMIO address (or port number with space 'pio'). */
  readonly address: number;
  /** Access width in bytes; 0 = any width (no datamatch then). */
  readonly length: 0 | 1 | 2 | 4 | 8;
  /** Only writes of exactly this value signal the eventfd; others exit as usual. */
  readonly datamatch?: number | bigint;
  /** Default 'mmio'. Port I/O exists on x86 only. */
  readonly space?: 'mmio' | 'pio';
}

/** A registration that can be undone. */
export interface Registration {
  remove(): void;
}

export interface IrqFdOptions {
  /** Level-triggered: the line stays asserted until the guest acknowledges it. */
  readonly level: boolean;
  /**
   * KVM only: the eventfd KVM signals when the guest EOIs a level line. Left out, the backend
   * makes one (owned by the binding) when the hypervisor needs it.
   */
  readonly resample?: EventFd;
}

/** An irqfd as a Doorbell needs it: `new EventFdDoorbell(b.irqfd, b.mode, b.resample)`. */
export interface IrqFdBinding extends Registration {
  readonly irq: number;
  readonly irqfd: EventFd;
  readonly mode: TriggerMode;
  /** Where level re-assertion requests arrive (KVM), or null (edge, or level kept by the hypervisor). */
  readonly resample: EventFd | null;
}

/** A vCPU's state and the exits it took; the run loop itself belongs to the backend. */
export interface Vcpu {
  readonly id: number;
  readonly state: 'created' | 'running' | 'ended';
  /** Exit counters since creation (read from the vCPU thread without stopping it). */
  stats(): VcpuStats;
}

export interface VcpuStats {
  /** Returns from the run ioctl, whatever the reason. */
  readonly runs: number;
  /** MMIO exits served by the MmioBus. */
  readonly mmio: number;
  /** Port-I/O exits served by a port handler (x86). */
  readonly io: number;
  /** Port-I/O exits nobody claimed, answered inside the vCPU thread (x86). */
  readonly ioIgnored: number;
  /** Returns because the vCPU was kicked or a signal arrived. */
  readonly interrupted: number;
  /** Wall-clock time (ms since the epoch, fractional) of the first entry into the guest, or 0. */
  readonly firstEntryAt: number;
}

/** The vCPU state at a fatal exit, for the report. Register names are the architecture's. */
export interface VcpuFault {
  readonly vcpu: number;
  /** The backend's exit name, e.g. 'KVM_EXIT_SHUTDOWN'. */
  readonly exit: string;
  readonly registers: Readonly<Record<string, bigint>>;
  /** Guest-physical address of the instruction pointer, when it could be translated. */
  readonly instructionAddress: number | null;
  /** Up to 16 bytes at the instruction pointer, or null when they could not be read. */
  readonly instruction: Uint8Array | null;
  /** Exit-specific words (internal-error data, system-event data, entry failure reason). */
  readonly data: readonly bigint[];
}

/** How a VM ended. Exactly one per VM; `Vm.outcome` resolves with it. */
export type VmOutcome =
  /** The guest powered itself off. */
  | { readonly kind: 'poweroff'; readonly reason: string; readonly fault?: VcpuFault }
  /** The guest asked for a reset (i8042 0xfe, PSCI reset, triple fault). The VM does not reboot. */
  | { readonly kind: 'reset'; readonly reason: string; readonly fault?: VcpuFault }
  /** The guest died: unhandled emulation failure, failed entry, crash report. */
  | { readonly kind: 'crash'; readonly reason: string; readonly fault?: VcpuFault }
  /** The host stopped it (Vm.stop). */
  | { readonly kind: 'stopped' }
  /** The host failed: an ioctl error, a vCPU thread that died, a device that threw. */
  | { readonly kind: 'error'; readonly error: Error };

export type VmState = 'created' | 'running' | 'ending' | 'ended' | 'closed';

/** Lifecycle events, for logs and supervisors (not a per-exit stream: exits go to the buses). */
export type VmEvent =
  | { readonly type: 'vcpu-started'; readonly vcpu: number; readonly at: number }
  | { readonly type: 'vcpu-ended'; readonly vcpu: number }
  | { readonly type: 'outcome'; readonly outcome: VmOutcome };

export interface Vm {
  /** Guest RAM, zero-copy. Every region becomes inaccessible when the VM is closed. */
  readonly memory: GuestMemory;
  /** Where MMIO exits are served, on the main thread. */
  readonly mmio: MmioBus;
  readonly vcpus: readonly Vcpu[];
  readonly state: VmState;
  readonly events$: Observable<VmEvent>;
  /** Settles once, with how the VM ended; never rejects. */
  readonly outcome: Promise<VmOutcome>;

  /** Guest writes matching `match` signal `fd` inside the hypervisor, without a vCPU exit. */
  addIoEventFd(match: IoEventMatch, fd: EventFd): Registration;
  /** Signalling `fd` raises interrupt `irq` (x86 GSI, arm64 SPI) in the guest. */
  addIrqFd(irq: number, fd: EventFd, options: IrqFdOptions): IrqFdBinding;
  /** Adds a vCPU (before start). */
  createVcpu(): Vcpu;
  /** Starts every vCPU; resolves once each is about to enter the guest. */
  start(): Promise<void>;
  /** Ends the VM with `outcome` unless it already ended; resolves with the outcome that won. */
  finish(outcome: VmOutcome): Promise<VmOutcome>;
  /** `finish({ kind: 'stopped' })`. */
  stop(): Promise<VmOutcome>;
  /** Stops if needed, then releases every fd, mapping and thread. Idempotent. */
  close(): Promise<void>;
}
